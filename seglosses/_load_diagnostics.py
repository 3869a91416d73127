"""Why ``seglosses._C`` failed to load, and what fixes it (used by ``seglosses._ops``).

Python's own message is misleading in the common cases ("cannot import name '_C' from partially
initialized module 'seglosses' (most likely due to a circular import)"). The cases told apart:

- shadowed: the package came from a source tree without a build (typically the current
  directory, first on sys.path) while a built copy is installed elsewhere on sys.path;
- never built: the source tree, or an install, has no ``_C`` for this Python;
- built for another Python: there is a ``_C`` but for another interpreter version;
- built against another torch: ``_C`` exists but needs symbols or libraries the installed torch
  lacks (torch has no stable C++ ABI between releases, nor between its CPU and CUDA builds);
- anything else: the loader's message, with the rebuild command.
"""

from __future__ import annotations

import importlib.machinery
import os
import re
import sys
from typing import Optional, Sequence

import torch

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

IN_PLACE_BUILD = "make build  (or: python setup.py build_ext --inplace)"
INSTALL = "pip install --no-build-isolation .  (or: python setup.py install)"

# A missing C++ symbol of c10 / ATen / torch (Itanium-mangled namespaces) or a missing torch library.
_TORCH_SYMBOL = re.compile(r"undefined symbol: _Z(T[VIS])?N[rVKRO]*(3c10|2at|5torch|6caffe2)")
_TORCH_LIBRARY = re.compile(r"lib(c10|torch)\w*\.so")


def _extensions_in(directory: str) -> list:
    """The ``_C`` files for this interpreter in ``directory``."""
    return [
        os.path.join(directory, "_C" + suffix)
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        if os.path.isfile(os.path.join(directory, "_C" + suffix))
    ]


def _other_python_extensions(directory: str) -> list:
    """``_C`` files in ``directory`` built for other interpreters (another ABI tag)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    ours = {"_C" + s for s in importlib.machinery.EXTENSION_SUFFIXES}
    return sorted(n for n in names if n.startswith("_C.") and n.endswith((".so", ".pyd")) and n not in ours)


def _source_tree(package_dir: str) -> Optional[str]:
    """The repository root if ``package_dir`` is the package folder of a seglosses checkout."""
    root = os.path.dirname(package_dir)
    if os.path.isfile(os.path.join(root, "setup.py")) and os.path.isdir(os.path.join(root, "csrc")):
        return root
    return None


def _built_copies_elsewhere(package_dir: str, sys_path: Sequence[str]) -> list:
    """Other ``seglosses`` packages on sys.path that have a ``_C`` for this Python."""
    found = []
    for entry in sys_path:
        candidate = os.path.join(os.path.abspath(entry or os.curdir), "seglosses")
        if os.path.realpath(candidate) == os.path.realpath(package_dir):
            continue
        if _extensions_in(candidate) and candidate not in found:
            found.append(candidate)
    return found


def explain_load_failure(
    exc: ImportError, package_dir: str = PACKAGE_DIR, sys_path: Optional[Sequence[str]] = None
) -> str:
    """The message for an ImportError raised by ``from . import _C``."""
    sys_path = sys.path if sys_path is None else sys_path
    python = f"Python {sys.version_info.major}.{sys.version_info.minor}"
    built = _extensions_in(package_dir)
    source = _source_tree(package_dir)

    if not built:
        elsewhere = _built_copies_elsewhere(package_dir, sys_path)
        if source is not None and elsewhere:
            return (
                f"seglosses: Python imported seglosses from the source tree {source} (the current "
                f"directory or PYTHONPATH comes first on sys.path), which has not been built, instead "
                f"of the installed copy at {elsewhere[0]}. Run from another directory to use the "
                f"installed copy, or build the source tree in place:\n    {IN_PLACE_BUILD}"
            )
        others = _other_python_extensions(package_dir)
        if others:
            return (
                f"seglosses: the compiled extension in {package_dir} was built for another Python "
                f"({', '.join(others)}), not for this {python}. Build it with this Python:\n"
                f"    {IN_PLACE_BUILD if source else INSTALL}"
            )
        if source is not None:
            return (
                f"seglosses: the source tree {source} has not been built (no compiled extension "
                f"seglosses/_C for {python}). Build it in place:\n    {IN_PLACE_BUILD}\n"
                f"or install it into this environment:\n    {INSTALL}"
            )
        return (
            f"seglosses: the installed package at {package_dir} has no compiled extension _C for "
            f"{python}. Reinstall it from the seglosses source tree:\n"
            f"    pip install --no-build-isolation --force-reinstall .  (or: python setup.py install)"
        )

    detail = str(exc)
    rebuild = IN_PLACE_BUILD if source else INSTALL
    if _TORCH_SYMBOL.search(detail) or _TORCH_LIBRARY.search(detail):
        return (
            f"seglosses: {built[0]} was built against a different torch than the one installed now "
            f"(torch {torch.__version__}{', CUDA ' + torch.version.cuda if torch.version.cuda else ', CPU only'}), "
            f"so it cannot be loaded:\n    {detail}\nRebuild it against this torch (torch has no "
            f"stable C++ ABI across releases or between its CPU and CUDA builds):\n    {rebuild}"
        )
    return (
        f"seglosses: {built[0]} could not be loaded with torch {torch.__version__}:\n    {detail}\n"
        f"If it was built elsewhere or against another torch, rebuild it here:\n    {rebuild}"
    )
