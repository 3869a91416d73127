"""Build seglosses and its one compiled extension, ``seglosses._C``.

The CPU sources are always built. The CUDA sources are added when a CUDA toolkit
is found and the installed torch is a CUDA build, or when ``FORCE_CUDA=1``.
``FORCE_CUDA=0`` forces a CPU-only build.

Build against the torch that is already installed::

    pip install --no-build-isolation .      # or: python setup.py install

Build isolation would download a second (CUDA) torch into a temporary environment.
"""

import glob
import os

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    force = os.environ.get("FORCE_CUDA")
    if force is not None:
        return force == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None


def _openmp_flags() -> list:
    # ATen's OpenMP parallel_for is inlined into our objects: without -fopenmp it runs serially.
    info = torch.__config__.parallel_info()
    if "backend: OpenMP" in info and "OpenMP not found" not in info:
        return ["-fopenmp"]
    return []


def extensions():
    csrc = os.path.join("csrc")
    sources = [os.path.join(csrc, "seglosses.cpp")] + sorted(glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    omp = _openmp_flags()
    # -fno-trapping-math / -fno-math-errno let GCC vectorise the selects and the polynomial exp
    # of the Dice kernels; unlike -ffast-math they do not reorder arithmetic or drop NaN handling.
    cxx = ["-O3", "-fvisibility=hidden", "-fno-trapping-math", "-fno-math-errno"] + omp
    define_macros = []
    if _want_cuda():
        sources += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
        define_macros.append(("WITH_CUDA", None))
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        ext = CUDAExtension
        extra = {"cxx": cxx, "nvcc": nvcc}
    else:
        ext = CppExtension
        extra = {"cxx": cxx}
    return [
        ext(
            name="seglosses._C",
            sources=sources,
            include_dirs=[os.path.join(ROOT, csrc)],
            define_macros=define_macros,
            extra_compile_args=extra,
            extra_link_args=omp,
        )
    ]


setup(
    name="seglosses",
    version="0.1.0",
    description="Memory-efficient, fused segmentation losses for PyTorch: MALIS, one-hot-free Dice, CombinedLoss",
    packages=find_packages(include=["seglosses", "seglosses.*"]),
    python_requires=">=3.9",
    install_requires=["numpy", "pyyaml"],
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
