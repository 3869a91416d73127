"""What a user sees when seglosses._C cannot be loaded: never built, shadowed by a source tree,
built for another Python, built against another torch (seglosses/_load_diagnostics.py)."""

import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

from seglosses._load_diagnostics import explain_load_failure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]  # e.g. .cpython-311-x86_64-linux-gnu.so
CIRCULAR = ImportError("cannot import name '_C' from partially initialized module 'seglosses' "
                       "(most likely due to a circular import)")


def copy_package(dest):
    """seglosses' Python files (no compiled extension) in dest/seglosses."""
    pkg = dest / "seglosses"
    pkg.mkdir(parents=True)
    for name in os.listdir(os.path.join(ROOT, "seglosses")):
        if name.endswith(".py"):
            shutil.copy(os.path.join(ROOT, "seglosses", name), pkg / name)
    return pkg


def source_tree(dest):
    """A checkout that was never built: setup.py, csrc/ and the package without _C."""
    pkg = copy_package(dest)
    (dest / "setup.py").write_text("")
    (dest / "csrc").mkdir()
    return pkg


def installed_copy(dest):
    """site-packages-like dest with seglosses and a _C file for this Python."""
    pkg = copy_package(dest)
    (pkg / f"_C{SUFFIX}").write_bytes(b"")
    return pkg


def test_never_built_source_tree(tmp_path):
    pkg = source_tree(tmp_path / "repo")
    msg = explain_load_failure(CIRCULAR, str(pkg), sys_path=[str(tmp_path / "repo"), str(tmp_path / "site")])
    assert f"the source tree {tmp_path / 'repo'} has not been built" in msg
    assert "make build" in msg and "pip install --no-build-isolation ." in msg
    assert "circular" not in msg


def test_source_tree_shadowing_an_installed_copy(tmp_path):
    pkg = source_tree(tmp_path / "repo")
    installed = installed_copy(tmp_path / "site")
    msg = explain_load_failure(CIRCULAR, str(pkg), sys_path=[str(tmp_path / "repo"), str(tmp_path / "site")])
    assert f"imported seglosses from the source tree {tmp_path / 'repo'}" in msg
    assert f"instead of the installed copy at {installed}" in msg
    assert "Run from another directory" in msg


def test_built_for_another_python(tmp_path):
    pkg = source_tree(tmp_path / "repo")
    (pkg / "_C.cpython-39-x86_64-linux-gnu.so").write_bytes(b"")
    msg = explain_load_failure(CIRCULAR, str(pkg), sys_path=[])
    assert "built for another Python (_C.cpython-39-x86_64-linux-gnu.so)" in msg
    assert f"Python {sys.version_info.major}.{sys.version_info.minor}" in msg


def test_installed_package_without_extension(tmp_path):
    pkg = copy_package(tmp_path / "site")
    msg = explain_load_failure(CIRCULAR, str(pkg), sys_path=[str(tmp_path / "site")])
    assert f"the installed package at {pkg} has no compiled extension" in msg
    assert "--force-reinstall" in msg


def load_error(path):
    """The ImportError Python raises when it loads the extension module at path as seglosses._C."""
    spec = importlib.util.spec_from_file_location("seglosses._C", path)
    with pytest.raises(ImportError) as info:
        importlib.util.module_from_spec(spec)
    return info.value


def test_built_against_another_torch(tmp_path):
    # A _C that needs a c10 symbol this torch does not have: what an extension built against
    # another torch release (or its CUDA build) gives at import.
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    pkg = source_tree(tmp_path / "repo")
    lib = pkg / f"_C{SUFFIX}"
    code = "extern void _ZN3c1019seglosses_test_goneEv(void);\nvoid PyInit__C(void) { _ZN3c1019seglosses_test_goneEv(); }\n"
    (tmp_path / "c.c").write_text(code)
    subprocess.run([cc, "-shared", "-fPIC", str(tmp_path / "c.c"), "-o", str(lib)], check=True)
    exc = load_error(lib)
    assert "undefined symbol: _ZN3c10" in str(exc)
    msg = explain_load_failure(exc, str(pkg), sys_path=[])
    assert f"{lib} was built against a different torch than the one installed now" in msg
    assert "undefined symbol" in msg and "make build" in msg


def test_unloadable_extension_file(tmp_path):
    pkg = source_tree(tmp_path / "repo")
    lib = pkg / f"_C{SUFFIX}"
    lib.write_bytes(b"not a shared library")
    msg = explain_load_failure(load_error(lib), str(pkg), sys_path=[])
    assert f"{lib} could not be loaded" in msg and "rebuild it here" in msg


def run_import(cwd, pythonpath):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in pythonpath))
    return subprocess.run([sys.executable, "-c", "import seglosses"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_import_from_unbuilt_source_tree_in_a_subprocess(tmp_path):
    """The whole path a user takes: `python -c "import seglosses"` in a checkout that shadows an
    installed copy; one clear message, no "circular import"."""
    source_tree(tmp_path / "repo")
    installed = installed_copy(tmp_path / "site")
    proc = run_import(tmp_path / "repo", [tmp_path / "site"])
    assert proc.returncode != 0
    assert "ImportError: seglosses: Python imported seglosses from the source tree" in proc.stderr, proc.stderr
    assert str(installed) in proc.stderr
    assert "circular" not in proc.stderr
    assert proc.stderr.count("Traceback") == 1
