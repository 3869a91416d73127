"""The two Python checks of tools/gpu_check.sh.

    python tools/gpu_check_probe.py environment   torch, CUDA, GPU, the packages the tests need
    python tools/gpu_check_probe.py kernels       every seglosses op has a CUDA kernel
    python tools/gpu_check_probe.py arch          GPU 0's architecture for TORCH_CUDA_ARCH_LIST ("9.0")

Both print one line per finding and exit 1 when the CUDA check cannot pass.
"""

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLDEST_TORCH = (2, 4)  # torch.library.register_fake, register_autograd and opcheck
TEST_PACKAGES = ("pytest", "numpy", "yaml", "scipy", "monai")


def environment() -> int:
    import torch

    version = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    if torch.cuda.is_available():
        gpu = "%s (sm_%d%d)" % ((torch.cuda.get_device_name(0),) + torch.cuda.get_device_capability(0))
    else:
        gpu = "no GPU visible"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {gpu}, "
          f"Python {sys.version.split()[0]}, {cores} cores")
    missing = [m for m in TEST_PACKAGES if importlib.util.find_spec(m) is None]
    if missing:
        print("missing packages (this check installs nothing): " + ", ".join(missing))
    problems = []
    if version < OLDEST_TORCH:
        problems.append(f"torch {torch.__version__} is older than %d.%d" % OLDEST_TORCH)
    if torch.version.cuda is None:
        problems.append("torch is a CPU-only build")
    elif not torch.cuda.is_available():
        problems.append("torch sees no GPU")
    if "pytest" in missing:
        problems.append("pytest is missing, so the CUDA tests cannot run")
    if problems:
        print("; ".join(problems))
        return 1
    return 0


def kernels() -> int:
    import torch

    sys.path.insert(0, ROOT)  # the in-place build of this checkout
    import seglosses

    ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("seglosses::"))
    dumps = {n: torch._C._dispatch_dump(n) for n in ops}
    # An op with a CPU kernel needs a CUDA one; device-independent ops (no CPU: entry) do not.
    ops = [n for n in ops if "\nCPU:" in dumps[n]]
    without = [n for n in ops if "\nCUDA:" not in dumps[n]]
    print(f"{seglosses._C.__file__}: ops {', '.join(ops)}")
    if not ops or without:
        print("no CUDA kernel for: " + (", ".join(without) or "(no seglosses ops registered)"))
        return 1
    print(f"CUDA kernels for all {len(ops)} ops")
    return 0


def arch() -> int:
    """Prints GPU 0's compute capability as TORCH_CUDA_ARCH_LIST spells it (nothing else on stdout)."""
    import torch

    if not torch.cuda.is_available():
        print("no GPU visible", file=sys.stderr)
        return 1
    print("%d.%d" % torch.cuda.get_device_capability(0))
    return 0


if __name__ == "__main__":
    checks = {"environment": environment, "kernels": kernels, "arch": arch}
    if len(sys.argv) != 2 or sys.argv[1] not in checks:
        sys.exit(__doc__)
    sys.exit(checks[sys.argv[1]]())
