"""The build decisions setup.py makes, as plain functions (no torch import).

setup.py imports this module before it imports torch, so each decision can be unit-tested
(tests/test_build.py) without a GPU, a CUDA toolkit or a compiler:

- ``missing_torch_message``: what to say when setup.py cannot import torch (build isolation);
- ``find_cuda_toolkit``: the CUDA toolkit to build against, checked for the files the build needs;
- ``cuda_arch_list``: the GPU architectures to compile for when ``TORCH_CUDA_ARCH_LIST`` is unset;
- ``without_debug_flags`` / ``release_cxx_flags``: release builds carry no debug info
  (``debug_sections`` checks a built library);
- ``build_time_message``: the line printed before the compile starts.
"""

from __future__ import annotations

import glob
import os
import re
import struct
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Sequence


class BuildConfigError(RuntimeError):
    """A build setting that cannot work; the message says what was found and what to do."""


# ---------------------------------------------------------------------------------------------
# torch missing from the build environment
# ---------------------------------------------------------------------------------------------
def in_pip_build_isolation(sys_path: Sequence[str]) -> bool:
    """Whether this interpreter runs inside pip's temporary build environment."""
    return any("pip-build-env-" in entry for entry in sys_path)


def missing_torch_message(python: str, sys_path: Sequence[str]) -> str:
    """The error setup.py gives when ``import torch`` fails."""
    if in_pip_build_isolation(sys_path):
        return (
            "seglosses compiles against your installed torch: `pip install --no-build-isolation .`\n"
            "(pip is building in an isolated temporary environment, which holds setuptools but not "
            "the torch of your environment, so there is nothing to compile against.)"
        )
    return (
        "seglosses compiles against your installed torch, and this Python cannot import torch:\n"
        f"    {python}\n"
        "Install torch into this environment first (https://pytorch.org/get-started/locally/), then "
        "`pip install --no-build-isolation .`"
    )


# ---------------------------------------------------------------------------------------------
# FORCE_CUDA
# ---------------------------------------------------------------------------------------------
def parse_force_cuda(value: Optional[str]) -> Optional[bool]:
    """``FORCE_CUDA``: "1" -> True (CUDA or an error), "0" -> False (CPU only), unset -> None (auto).

    Raises:
        BuildConfigError: any other value (a typo must not silently build without CUDA).
    """
    if value is None or value.strip() == "":
        return None
    if value.strip() in ("0", "1"):
        return value.strip() == "1"
    raise BuildConfigError(f"seglosses: FORCE_CUDA must be 1 (build the CUDA kernels) or 0 (CPU only), got {value!r}")


# ---------------------------------------------------------------------------------------------
# The CUDA toolkit
# ---------------------------------------------------------------------------------------------
CUDA_HEADER = os.path.join("include", "cuda_runtime.h")
CUDA_LIB_DIRS = ("lib64", "lib")  # torch.utils.cpp_extension links -lcudart from one of these
CUDA_NVCC = os.path.join("bin", "nvcc")


def toolkit_missing(home: str) -> list[str]:
    """The files a CUDA build needs that are missing under ``home`` (empty: a usable toolkit)."""
    missing = []
    if not os.path.isfile(os.path.join(home, CUDA_HEADER)):
        missing.append(CUDA_HEADER)
    if not any(glob.glob(os.path.join(home, d, "libcudart.so*")) for d in CUDA_LIB_DIRS):
        missing.append(" or ".join(os.path.join(d, "libcudart.so") for d in CUDA_LIB_DIRS))
    if not os.access(os.path.join(home, CUDA_NVCC), os.X_OK):
        missing.append(CUDA_NVCC)
    return missing


# A wrapper script names the real compiler by its absolute path, e.g. `exec /usr/local/cuda-13.0/bin/nvcc "$@"`.
_NVCC_IN_SCRIPT = re.compile(r"""(/[^\s"'$`;|&()]*/bin/nvcc)\b""")
_MAX_WRAPPER_BYTES = 64 * 1024


def nvcc_wrapper_target(nvcc: str) -> Optional[str]:
    """The nvcc that a wrapper script at ``nvcc`` runs, or None if it is not such a script."""
    try:
        with open(nvcc, "rb") as f:
            head = f.read(_MAX_WRAPPER_BYTES)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None  # a compiled nvcc, not a script
    for match in _NVCC_IN_SCRIPT.finditer(head.decode("utf-8", "replace")):
        target = match.group(1)
        if os.path.realpath(target) != os.path.realpath(nvcc):
            return target
    return None


def _version_key(path: str) -> tuple:
    return tuple(int(n) for n in re.findall(r"\d+", os.path.basename(path)))


@dataclass
class ToolkitSearch:
    """Where ``find_cuda_toolkit`` looked; ``home`` is the first usable toolkit, or None."""

    home: Optional[str] = None
    looked: list = field(default_factory=list)  # (directory, where the guess came from, missing files)

    def report(self) -> str:
        lines = [
            f"  {home}  ({why}): missing {', '.join(missing)}" for home, why, missing in self.looked
        ]
        needs = f"{CUDA_HEADER}, {CUDA_LIB_DIRS[0]}/libcudart.so (or lib/) and {CUDA_NVCC}"
        return (
            f"looked for a CUDA toolkit ({needs}) in:\n" + ("\n".join(lines) if lines else "  (nowhere)")
        )


def find_cuda_toolkit(
    environ: Mapping[str, str],
    which: Callable[[str], Optional[str]],
    default_roots: Iterable[str] = ("/usr/local/cuda", "/opt/cuda"),
    versioned_glob: str = "/usr/local/cuda-*",
) -> ToolkitSearch:
    """Find the CUDA toolkit to build against.

    Order: ``CUDA_HOME``, else ``CUDA_PATH`` (a directory set there must be a usable toolkit:
    it is the user's explicit choice, so it is never silently replaced); else the toolkit of the
    ``nvcc`` on PATH, following symlinks and wrapper scripts; else ``/usr/local/cuda``,
    ``/opt/cuda`` and ``/usr/local/cuda-*`` (newest first).

    Raises:
        BuildConfigError: ``CUDA_HOME`` / ``CUDA_PATH`` names a directory that is not a usable
            toolkit.
    """
    search = ToolkitSearch()
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = environ.get(var)
        if home:
            missing = toolkit_missing(home)
            if missing:
                raise BuildConfigError(
                    f"seglosses: {var}={home} is not a usable CUDA toolkit: missing "
                    f"{', '.join(missing)} there. Point {var} at the toolkit's root (the directory "
                    f"with bin/nvcc, include/ and lib64/), or unset it to search."
                )
            search.home = home
            search.looked.append((home, var, []))
            return search

    candidates = []  # (directory, why), in order of preference
    nvcc = which("nvcc")
    if nvcc:
        candidates.append((os.path.dirname(os.path.dirname(nvcc)), f"nvcc on PATH: {nvcc}"))
        real = os.path.realpath(nvcc)
        if real != nvcc:
            candidates.append((os.path.dirname(os.path.dirname(real)), f"{nvcc} resolves to {real}"))
        target = nvcc_wrapper_target(real)
        if target:
            for path in dict.fromkeys([target, os.path.realpath(target)]):
                candidates.append((os.path.dirname(os.path.dirname(path)), f"{nvcc} is a script that runs {path}"))
    candidates += [(root, "default location") for root in default_roots]
    candidates += [(root, "default location") for root in sorted(glob.glob(versioned_glob), key=_version_key, reverse=True)]

    seen = set()
    for home, why in candidates:
        key = os.path.realpath(home)
        if key in seen or not os.path.isdir(home):
            continue
        seen.add(key)
        missing = toolkit_missing(home)
        search.looked.append((home, why, missing))
        if not missing:
            search.home = home
            return search
    return search


# ---------------------------------------------------------------------------------------------
# GPU architectures
# ---------------------------------------------------------------------------------------------
# Compiled when TORCH_CUDA_ARCH_LIST is unset, as far as the nvcc supports them: T4 (7.5), A100
# (8.0), A10 / RTX 30 (8.6, whose code also runs on L4 / RTX 40), H100 / H200 (9.0), B200 (10.0),
# RTX 50 (12.0) -- the list of torch's own CUDA 12.8+/13 wheels -- plus PTX of the newest, which
# the driver compiles for GPUs newer than all of them. Never the GPU that happens to be visible:
# the extension must load on every GPU the installed torch supports.
DEFAULT_CUDA_ARCHS = ("7.5", "8.0", "8.6", "9.0", "10.0", "12.0")
# Used when nvcc cannot list its architectures (before CUDA 11.?): all supported since CUDA 11.8.
FALLBACK_CUDA_ARCHS = ("7.5", "8.0", "8.6", "9.0")


def parse_nvcc_arch_list(text: str) -> set:
    """``nvcc --list-gpu-arch`` output (``compute_75`` per line) -> {"7.5", ...}."""
    archs = set()
    for major_minor in re.findall(r"compute_(\d+)\b", text):
        archs.add(f"{major_minor[:-1]}.{major_minor[-1]}")
    return archs


def nvcc_supported_archs(nvcc: str) -> Optional[set]:
    """The virtual architectures ``nvcc`` can compile for, or None if it cannot say."""
    try:
        out = subprocess.run(
            [nvcc, "--list-gpu-arch"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvcc_arch_list(out) or None


def default_cuda_arch_list(supported: Optional[set]) -> str:
    """``TORCH_CUDA_ARCH_LIST`` for the default architectures that ``supported`` contains."""
    archs = [a for a in DEFAULT_CUDA_ARCHS if a in supported] if supported else list(FALLBACK_CUDA_ARCHS)
    if not archs:
        raise BuildConfigError(
            "seglosses: this nvcc supports none of the default GPU architectures "
            f"({', '.join(DEFAULT_CUDA_ARCHS)}); it lists {', '.join(sorted(supported, key=float))}. "
            "Set TORCH_CUDA_ARCH_LIST, e.g. TORCH_CUDA_ARCH_LIST='7.0+PTX'."
        )
    return ";".join(archs) + "+PTX"


def cuda_arch_list(environ: Mapping[str, str], supported: Optional[set]) -> tuple:
    """(the TORCH_CUDA_ARCH_LIST to build with, whether the user chose it)."""
    chosen = environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if chosen:
        return chosen, True
    return default_cuda_arch_list(supported), False


def count_cuda_archs(arch_list: str) -> int:
    return len([a for a in re.split(r"[;\s]+", arch_list) if a])


# ---------------------------------------------------------------------------------------------
# Release flags
# ---------------------------------------------------------------------------------------------
def is_debug_flag(flag: str) -> bool:
    """-g, -g1..3, -ggdb, -gdwarf-N, -gsplit-dwarf, ... (every GCC/Clang -g option but -g0)."""
    return flag.startswith("-g") and flag != "-g0"


def without_debug_flags(args: Sequence[str]) -> list:
    """``args`` (a compiler or linker command) without the flags that add debug info.

    Python's sysconfig CFLAGS, which setuptools puts in front of every C++ compile, carry ``-g``
    on most Pythons (pyenv, python.org, Debian, conda); that makes _C ~8x larger and its compile
    slower, for nothing in a release build.
    """
    return [a for a in args if not is_debug_flag(a)]


def elf_section_names(path: str) -> list:
    """Section names of an ELF64 little-endian file (the x86-64 / aarch64 Linux ``_C``)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path} is not an ELF64 little-endian file")
    (section_headers,) = struct.unpack_from("<Q", data, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", data, 0x3A)
    names_offset = struct.unpack_from("<IIQQQQ", data, section_headers + names_index * entry_size)[4]
    names = []
    for i in range(count):
        (name,) = struct.unpack_from("<I", data, section_headers + i * entry_size)
        start = names_offset + name
        names.append(data[start : data.index(b"\0", start)].decode())
    return names


def debug_sections(path: str) -> list:
    """The DWARF sections of a shared library (empty for a release build)."""
    return [n for n in elf_section_names(path) if n.startswith((".debug", ".zdebug"))]


def release_cxx_flags(debug: bool) -> list:
    """Appended last to the C++ flags: ``-g0`` cancels any ``-g`` that comes from elsewhere
    (a CFLAGS variable, a distribution's compiler wrapper); ``debug`` keeps debug info."""
    return ["-g"] if debug else ["-g0"]


# ---------------------------------------------------------------------------------------------
# The line before the compile
# ---------------------------------------------------------------------------------------------
# Seconds per translation unit in ninja's log of a full build on the 2-core build machine, two
# compiles at a time (DEVELOPERS.md, "Build time"); the estimate assumes ninja compiles them in
# parallel. The 18 small units of csrc/cpu/malis/ and dice_sigmoid_kernels.cpp are one entry.
CPU_UNIT_SECONDS = {
    "csrc/cpu/dice_cpu.cpp": 15.9,
    "csrc/cpu/connected_components_cpu.cpp": 14.1,
    "csrc/cpu/malis_cpu.cpp": 10.7,
    "csrc/cpu/malis/kernels_portable.cpp": 9.3,
    "csrc/cpu/dice_rows.cpp": 8.8,
    "csrc/cpu/dice_label_kernels.cpp": 8.6,
    "csrc/seglosses.cpp": 6.4,
    "the 18 other units": 35.1,
}
# (host code and nvcc's front end, each GPU architecture): the architectures compile in parallel
# threads (nvcc --threads), so their share of the wall time shrinks with the cores.
CUDA_UNIT_SECONDS = {"dice_cuda.cu": (19.0, 15.0), "malis_cuda.cu": (19.0, 7.0)}
LINK_SECONDS = 5.0


def build_time_message(cores: int, cuda_archs: int) -> str:
    """``seglosses: building the C++ extension (about N min)...`` for this machine."""
    cores = max(1, cores)
    cpu = list(CPU_UNIT_SECONDS.values())
    total, longest = sum(cpu), max(cpu)
    if cuda_archs:
        threads = min(cuda_archs, cores)
        for host, per_arch in CUDA_UNIT_SECONDS.values():
            total += host + per_arch * cuda_archs
            longest = max(longest, host + per_arch * cuda_archs / threads)
    seconds = max(longest, total / cores) + LINK_SECONDS
    minutes = max(0.5, round(seconds / 30) / 2)
    what = "C++ extension"
    if cuda_archs:
        what += f" with its CUDA kernels ({cuda_archs} GPU architectures)"
    return f"seglosses: building the {what} (about {minutes:g} min on {cores} cores)..."
