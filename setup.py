"""Build seglosses and its one compiled extension, ``seglosses._C``.

The CPU sources are always built. The CUDA sources are added when the installed torch is a CUDA
build and a CUDA toolkit is found, or when ``FORCE_CUDA=1`` (then a missing toolkit is an error;
no GPU is needed). ``FORCE_CUDA=0`` forces a CPU-only build.

Build against the torch that is already installed::

    pip install --no-build-isolation .      # or: python setup.py install

A plain ``pip install .`` builds in an isolated temporary environment that has no torch, and
stops with a message saying so.

Environment:
    CUDA_HOME / CUDA_PATH   the CUDA toolkit (default: the toolkit of the nvcc on PATH,
                            following wrapper scripts, then /usr/local/cuda)
    TORCH_CUDA_ARCH_LIST    GPU architectures (default: tools/seglosses_build.py,
                            DEFAULT_CUDA_ARCHS, as far as the nvcc supports them)
    MAX_JOBS                parallel compile jobs (default: ninja's, the number of cores + 2)
    SEGLOSSES_DEBUG=1       keep debug info (-g); release builds have none
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import seglosses_build as sb  # noqa: E402  (the build decisions, importable without torch)

try:
    import torch
except ModuleNotFoundError as exc:
    if exc.name != "torch":
        raise
    sys.exit(sb.missing_torch_message(sys.executable, sys.path))

DEBUG = os.environ.get("SEGLOSSES_DEBUG") == "1"


def fail(message: str) -> None:
    sys.exit(f"error: {message}")


def configure_cuda() -> bool:
    """Whether to build the CUDA kernels; sets CUDA_HOME and TORCH_CUDA_ARCH_LIST for torch."""
    try:
        force = sb.parse_force_cuda(os.environ.get("FORCE_CUDA"))
    except sb.BuildConfigError as exc:
        fail(str(exc))
    if force is False:
        return False
    if torch.version.cuda is None:
        if force:
            fail(
                f"seglosses: FORCE_CUDA=1 needs a CUDA build of torch; torch {torch.__version__} is "
                "CPU-only. (`make cuda-check` compile-checks the CUDA sources without one.)"
            )
        return False
    try:
        search = sb.find_cuda_toolkit(os.environ, shutil.which)
    except sb.BuildConfigError as exc:
        fail(str(exc))
    if search.home is None:
        if force:
            fail(f"seglosses: FORCE_CUDA=1, but no CUDA toolkit was found; {search.report()}\n"
                 "Set CUDA_HOME to the toolkit's root directory.")
        print(f"seglosses: torch {torch.__version__} is a CUDA build but no CUDA toolkit was found, "
              f"so only the CPU kernels are built (FORCE_CUDA=1 makes this an error); {search.report()}")
        return False
    os.environ["CUDA_HOME"] = search.home  # read by torch.utils.cpp_extension when it is imported
    try:
        supported = sb.nvcc_supported_archs(os.path.join(search.home, sb.CUDA_NVCC))
        arch_list, by_user = sb.cuda_arch_list(os.environ, supported)
    except sb.BuildConfigError as exc:
        fail(str(exc))
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    print(f"seglosses: CUDA toolkit {search.home} ({search.looked[-1][1]}); GPU architectures "
          f"{arch_list} ({'TORCH_CUDA_ARCH_LIST' if by_user else 'default; set TORCH_CUDA_ARCH_LIST to choose'})")
    return True


WITH_CUDA = configure_cuda()

import torch.utils.cpp_extension as cpp_extension  # noqa: E402  (after CUDA_HOME is settled)
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

if WITH_CUDA:
    cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]  # in case torch imported it earlier


def openmp_flags() -> list:
    # ATen's OpenMP parallel_for is inlined into our objects: without -fopenmp it runs serially.
    info = torch.__config__.parallel_info()
    if "backend: OpenMP" in info and "OpenMP not found" not in info:
        return ["-fopenmp"]
    return []


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def extensions():
    csrc = "csrc"
    # csrc/cpu/<op>/ holds the stage files of a large op (MALIS: csrc/cpu/malis/).
    sources = [os.path.join(csrc, "seglosses.cpp")] + sorted(
        glob.glob(os.path.join(csrc, "cpu", "*.cpp")) + glob.glob(os.path.join(csrc, "cpu", "*", "*.cpp"))
    )
    # setuptools rebuilds only when a source or a `depends` file is newer than _C; ninja then
    # recompiles just the translation units that include what changed.
    depends = sorted(glob.glob(os.path.join(csrc, "**", "*.h"), recursive=True))
    omp = openmp_flags()
    # -fno-trapping-math / -fno-math-errno let GCC vectorise the selects and the polynomial exp
    # of the Dice kernels; unlike -ffast-math they do not reorder arithmetic or drop NaN handling.
    cxx = ["-O3", "-fvisibility=hidden", "-fno-trapping-math", "-fno-math-errno"] + omp
    cxx += sb.release_cxx_flags(DEBUG)
    define_macros = []
    if WITH_CUDA:
        sources += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
        depends += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cuh")))
        define_macros.append(("WITH_CUDA", None))
        archs = sb.count_cuda_archs(os.environ["TORCH_CUDA_ARCH_LIST"])
        # -lineinfo: source lines for the profilers (no host debug info, no slower code).
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", f"--threads={min(archs, cores())}"]
        nvcc += ["-g"] if DEBUG else []
        ext = CUDAExtension
        extra = {"cxx": cxx, "nvcc": nvcc}
    else:
        ext = CppExtension
        extra = {"cxx": cxx}
    return [
        ext(
            name="seglosses._C",
            sources=sources,
            depends=depends,
            include_dirs=[os.path.join(ROOT, csrc)],
            define_macros=define_macros,
            extra_compile_args=extra,
            extra_link_args=omp,
        )
    ]


try:
    from setuptools.modified import newer_group
except ImportError:  # setuptools < 69
    from distutils.dep_util import newer_group


class SeglossesBuildExtension(BuildExtension):
    """torch's BuildExtension, without the debug flags of Python's sysconfig, and with one line
    that says how long the compile takes before it starts."""

    def build_extensions(self):
        if not DEBUG:
            for name in ("compiler", "compiler_so", "compiler_cxx", "compiler_so_cxx",
                         "linker_so", "linker_so_cxx", "linker_exe", "linker_exe_cxx"):
                command = getattr(self.compiler, name, None)
                if isinstance(command, list):
                    self.compiler.set_executable(name, sb.without_debug_flags(command))
        if any(self.force or newer_group(e.sources + e.depends, self.get_ext_fullpath(e.name), "newer")
               for e in self.extensions):
            archs = sb.count_cuda_archs(os.environ["TORCH_CUDA_ARCH_LIST"]) if WITH_CUDA else 0
            print(sb.build_time_message(cores(), archs), flush=True)
        super().build_extensions()


setup(
    name="seglosses",
    version="0.1.0",
    description="Memory-efficient, fused segmentation losses for PyTorch: MALIS, one-hot-free Dice, CombinedLoss",
    packages=find_packages(include=["seglosses", "seglosses.*"]),
    python_requires=">=3.9",
    install_requires=["numpy", "pyyaml"],
    ext_modules=extensions(),
    cmdclass={"build_ext": SeglossesBuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
