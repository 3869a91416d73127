"""The build decisions of setup.py (tools/seglosses_build.py), without a GPU or a CUDA toolkit,
and the properties of the extension that was built: no debug info, no -g flag."""

import importlib.util
import os
import shutil
import stat
import subprocess
import sys
import sysconfig

import pytest
import torch

import seglosses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("seglosses_build", os.path.join(ROOT, "tools", "seglosses_build.py"))
sb = sys.modules.setdefault("seglosses_build", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(sb)


# ---------------------------------------------------------------------------------------------
# torch missing from the build environment
# ---------------------------------------------------------------------------------------------
def test_missing_torch_message_under_pip_build_isolation():
    path = ["/tmp/pip-build-env-abc123/overlay/lib/python3.11/site-packages", "/usr/lib/python3.11"]
    assert sb.in_pip_build_isolation(path)
    msg = sb.missing_torch_message("/usr/bin/python3", path)
    assert "seglosses compiles against your installed torch: `pip install --no-build-isolation .`" in msg
    assert "isolated" in msg


def test_missing_torch_message_without_isolation_names_the_python():
    msg = sb.missing_torch_message("/opt/env/bin/python", ["/opt/env/lib/python3.11/site-packages"])
    assert not sb.in_pip_build_isolation(["/opt/env/lib/python3.11/site-packages"])
    assert "/opt/env/bin/python" in msg and "cannot import torch" in msg
    assert "--no-build-isolation" in msg


def test_setup_py_without_torch_says_no_build_isolation(tmp_path):
    # What pip's build isolation gives setup.py: setuptools on the path, no torch. `-S` drops this
    # venv's site-packages (and its torch); the overlay directory is named like pip's.
    overlay = tmp_path / "pip-build-env-test" / "overlay"
    overlay.mkdir(parents=True)
    setuptools_dir = os.path.dirname(os.path.dirname(importlib.util.find_spec("setuptools").origin))
    for name in ("setuptools", "_distutils_hack", "pkg_resources"):
        if os.path.exists(os.path.join(setuptools_dir, name)):
            os.symlink(os.path.join(setuptools_dir, name), overlay / name)
    env = dict(os.environ, PYTHONPATH=str(overlay))
    proc = subprocess.run([sys.executable, "-S", "setup.py", "--version"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "seglosses compiles against your installed torch: `pip install --no-build-isolation .`" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# FORCE_CUDA
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, expected", [(None, None), ("", None), ("1", True), ("0", False), (" 1 ", True)])
def test_parse_force_cuda(value, expected):
    assert sb.parse_force_cuda(value) is expected


@pytest.mark.parametrize("value", ["yes", "true", "2", "on"])
def test_parse_force_cuda_rejects_other_values(value):
    with pytest.raises(sb.BuildConfigError, match=f"FORCE_CUDA must be 1 .* or 0 .*, got '{value}'"):
        sb.parse_force_cuda(value)


# ---------------------------------------------------------------------------------------------
# The CUDA toolkit, with fake toolkits
# ---------------------------------------------------------------------------------------------
def _executable(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def fake_toolkit(root, lib_dir="lib64", header=True, cudart=True, nvcc=True):
    """A directory laid out like a CUDA toolkit (empty files), with the parts asked for."""
    root.mkdir(parents=True, exist_ok=True)
    if header:
        (root / "include").mkdir(exist_ok=True)
        (root / "include" / "cuda_runtime.h").write_text("")
    if cudart:
        (root / lib_dir).mkdir(exist_ok=True)
        (root / lib_dir / "libcudart.so.13").write_text("")
    if nvcc:
        _executable(root / "bin" / "nvcc", "\x7fELF")
    return str(root)


def find(environ, nvcc=None, roots=(), versioned=None):
    return sb.find_cuda_toolkit(environ, lambda name: nvcc, default_roots=roots,
                                versioned_glob=versioned or "/nonexistent/cuda-*")


def test_cuda_home_is_used_as_given(tmp_path):
    home = fake_toolkit(tmp_path / "cuda")
    other = fake_toolkit(tmp_path / "other")
    assert find({"CUDA_HOME": home, "CUDA_PATH": other}, nvcc=os.path.join(other, "bin", "nvcc")).home == home


def test_cuda_path_is_used_without_cuda_home(tmp_path):
    home = fake_toolkit(tmp_path / "cuda", lib_dir="lib")
    assert find({"CUDA_PATH": home}).home == home


@pytest.mark.parametrize("part, missing", [("header", "include/cuda_runtime.h"),
                                           ("cudart", "libcudart.so"), ("nvcc", "bin/nvcc")])
def test_cuda_home_that_is_not_a_toolkit_fails_early(tmp_path, part, missing):
    home = fake_toolkit(tmp_path / "cuda", **{part: False})
    with pytest.raises(sb.BuildConfigError, match=f"CUDA_HOME={home} is not a usable CUDA toolkit: missing .*{missing}"):
        find({"CUDA_HOME": home}, roots=[fake_toolkit(tmp_path / "fallback")])


def test_nvcc_wrapper_script_outside_the_toolkit(tmp_path):
    # This machine: /usr/local/bin/nvcc is `exec /usr/local/cuda-13.0/bin/nvcc "$@"`, so torch's
    # guess (the parent of nvcc's bin/) is /usr/local, and the link fails on -lcudart.
    real = fake_toolkit(tmp_path / "cuda-13.0")
    wrapper = _executable(tmp_path / "usr" / "bin" / "nvcc", f'#!/bin/sh\nexec {real}/bin/nvcc "$@"\n')
    (tmp_path / "usr" / "include").mkdir()  # a /usr/local look-alike: include/ but no CUDA
    search = find({}, nvcc=str(wrapper))
    assert search.home == real
    assert search.looked[0][0] == str(tmp_path / "usr")
    assert "is a script that runs" in search.looked[-1][1]


def test_nvcc_symlink_is_followed(tmp_path):
    real = fake_toolkit(tmp_path / "toolkits" / "cuda-12.8")
    (tmp_path / "bin").mkdir()
    os.symlink(os.path.join(real, "bin", "nvcc"), tmp_path / "bin" / "nvcc")
    assert find({}, nvcc=str(tmp_path / "bin" / "nvcc")).home == real


def test_default_locations_newest_version_first(tmp_path):
    for version in ("9.2", "12.9", "13.0", "11.8"):
        fake_toolkit(tmp_path / f"cuda-{version}")
    fake_toolkit(tmp_path / "cuda-14.0", header=False)  # incomplete: skipped
    search = find({}, versioned=str(tmp_path / "cuda-*"))
    assert search.home == str(tmp_path / "cuda-13.0")


def test_no_toolkit_reports_what_was_looked_for(tmp_path):
    broken = fake_toolkit(tmp_path / "cuda", cudart=False)
    search = find({}, roots=[broken, str(tmp_path / "absent")])
    assert search.home is None
    report = search.report()
    assert "include/cuda_runtime.h" in report and "libcudart.so" in report
    assert f"{broken}  (default location): missing lib64/libcudart.so or lib/libcudart.so" in report


def test_this_machines_nvcc_resolves_to_a_toolkit():
    if shutil.which("nvcc") is None:
        pytest.skip("no nvcc on PATH")
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH")}
    search = sb.find_cuda_toolkit(env, shutil.which)
    assert search.home is not None, search.report()
    assert sb.toolkit_missing(search.home) == []


# ---------------------------------------------------------------------------------------------
# GPU architectures
# ---------------------------------------------------------------------------------------------
NVCC_13_0_ARCHS = "compute_75\ncompute_80\ncompute_86\ncompute_87\ncompute_88\ncompute_89\ncompute_90\n" \
                  "compute_100\ncompute_110\ncompute_103\ncompute_120\ncompute_121\n"
NVCC_12_4_ARCHS = "compute_50\ncompute_52\ncompute_53\ncompute_60\ncompute_61\ncompute_62\ncompute_70\n" \
                  "compute_72\ncompute_75\ncompute_80\ncompute_86\ncompute_87\ncompute_89\ncompute_90\n"


def test_parse_nvcc_arch_list():
    assert sb.parse_nvcc_arch_list(NVCC_13_0_ARCHS) == {
        "7.5", "8.0", "8.6", "8.7", "8.8", "8.9", "9.0", "10.0", "11.0", "10.3", "12.0", "12.1"}


@pytest.mark.parametrize("listing, expected", [
    (NVCC_13_0_ARCHS, "7.5;8.0;8.6;9.0;10.0;12.0+PTX"),  # CUDA 13 dropped 5.x-7.0
    (NVCC_12_4_ARCHS, "7.5;8.0;8.6;9.0+PTX"),            # before Blackwell
])
def test_default_arch_list_follows_the_nvcc(listing, expected):
    assert sb.cuda_arch_list({}, sb.parse_nvcc_arch_list(listing)) == (expected, False)


def test_user_arch_list_wins():
    assert sb.cuda_arch_list({"TORCH_CUDA_ARCH_LIST": "9.0"}, {"8.0"}) == ("9.0", True)


def test_arch_list_when_nvcc_cannot_list():
    assert sb.cuda_arch_list({}, None) == ("7.5;8.0;8.6;9.0+PTX", False)


def test_arch_list_when_nvcc_supports_none_of_the_defaults():
    with pytest.raises(sb.BuildConfigError, match="supports none of the default GPU architectures.*TORCH_CUDA_ARCH_LIST"):
        sb.cuda_arch_list({}, {"5.0", "6.0"})


@pytest.mark.parametrize("listing", [NVCC_13_0_ARCHS, NVCC_12_4_ARCHS])
def test_default_arch_list_is_understood_by_torch(listing, monkeypatch):
    from torch.utils.cpp_extension import _get_cuda_arch_flags

    arch_list, _ = sb.cuda_arch_list({}, sb.parse_nvcc_arch_list(listing))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", arch_list)
    flags = _get_cuda_arch_flags()
    assert sb.count_cuda_archs(arch_list) == len([f for f in flags if "code=sm_" in f])
    assert any("code=compute_" in f for f in flags)  # the +PTX


def test_this_machines_nvcc_supports_the_defaults():
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("no nvcc on PATH")
    supported = sb.nvcc_supported_archs(nvcc)
    assert supported, f"{nvcc} --list-gpu-arch gave no architectures"
    assert sb.default_cuda_arch_list(supported).endswith("+PTX")


# ---------------------------------------------------------------------------------------------
# Release flags and the build that was made
# ---------------------------------------------------------------------------------------------
def test_debug_sections_are_found(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    (tmp_path / "f.c").write_text("int f(int x) { return x + 1; }\n")
    for flag, has_debug in (("-g", True), ("-g0", False)):
        lib = str(tmp_path / f"f{flag}.so")
        subprocess.run([cc, "-shared", "-fPIC", flag, str(tmp_path / "f.c"), "-o", lib], check=True)
        assert bool(sb.debug_sections(lib)) == has_debug
        assert ".text" in sb.elf_section_names(lib)


def test_debug_flags_are_removed():
    command = ["gcc", "-Wsign-compare", "-DNDEBUG", "-g", "-fwrapv", "-O3", "-ggdb3", "-gdwarf-4",
               "-gsplit-dwarf", "-g0", "-Wall", "-fPIC"]
    assert sb.without_debug_flags(command) == ["gcc", "-Wsign-compare", "-DNDEBUG", "-fwrapv", "-O3",
                                               "-g0", "-Wall", "-fPIC"]
    assert sb.release_cxx_flags(debug=False) == ["-g0"]


def test_this_pythons_cflags_lose_their_debug_flags():
    cflags = (sysconfig.get_config_var("CFLAGS") or "").split()
    assert not any(sb.is_debug_flag(f) for f in sb.without_debug_flags(cflags))


@pytest.mark.skipif(os.environ.get("SEGLOSSES_DEBUG") == "1", reason="SEGLOSSES_DEBUG=1 keeps debug info")
def test_built_extension_has_no_debug_info():
    path = seglosses._C.__file__
    if not path.endswith(".so"):
        pytest.skip(f"not an ELF shared library: {path}")
    names = sb.elf_section_names(path)
    assert ".text" in names and ".dynsym" in names  # the reader works
    debug = sb.debug_sections(path)
    assert not debug, f"{path} carries debug info ({', '.join(debug)}): a -g reached the compile"


def _this_builds_ninja_file():
    """build.ninja of the in-place build that produced the loaded _C (None when not built here)."""
    if os.path.dirname(os.path.realpath(seglosses._C.__file__)) != os.path.realpath(os.path.join(ROOT, "seglosses")):
        return None
    # setuptools' build_temp: build/temp.<platform>-<cache tag>, e.g. temp.linux-x86_64-cpython-311
    temp = f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
    path = os.path.join(ROOT, "build", temp, "build.ninja")
    return path if os.path.isfile(path) else None


@pytest.mark.skipif(os.environ.get("SEGLOSSES_DEBUG") == "1", reason="SEGLOSSES_DEBUG=1 keeps debug info")
def test_compile_commands_have_no_debug_flag():
    path = _this_builds_ninja_file()
    if path is None:
        pytest.skip("the loaded _C was not built in place here (no build/temp.*/build.ninja)")
    gcc_flags, nvcc_flags = [], []
    for line in open(path):
        key, _, value = line.partition("=")
        if key.strip() in ("cflags", "post_cflags", "ldflags"):
            gcc_flags += value.split()
        elif key.strip() in ("cuda_cflags", "cuda_post_cflags"):
            nvcc_flags += value.split()
    assert gcc_flags, f"no compile flags found in {path}"
    assert not [f for f in gcc_flags if sb.is_debug_flag(f)], f"{path}: the C++ compile has a debug flag"
    # nvcc: its own debug flags, and GCC ones among the (quoted) host flags it passes on; its
    # -gencode / --generate-code are no -g option.
    nvcc_debug = {"-g", "-G", "--debug", "--device-debug"}
    host = [f.strip("'\"") for f in nvcc_flags if not f.startswith(("-gencode", "--generate-code"))]
    assert not nvcc_debug & set(nvcc_flags), f"{path}: the CUDA compile has a debug flag"
    assert not [f for f in host if sb.is_debug_flag(f)], f"{path}: the CUDA host compile has a debug flag"


def test_build_time_message():
    msg = sb.build_time_message(cores=2, cuda_archs=0)
    assert msg.startswith("seglosses: building the C++ extension (about ") and msg.endswith(" min on 2 cores)...")
    assert "CUDA kernels (6 GPU architectures)" in sb.build_time_message(cores=16, cuda_archs=6)


# ---------------------------------------------------------------------------------------------
# The scripts of tools/: they parse, and the GPU check can be rehearsed without a GPU
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", sorted(n for n in os.listdir(os.path.join(ROOT, "tools")) if n.endswith(".sh")))
def test_tool_script_parses(script):
    proc = subprocess.run(["bash", "-n", os.path.join(ROOT, "tools", script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _load_probe():
    spec = importlib.util.spec_from_file_location("gpu_check_probe", os.path.join(ROOT, "tools", "gpu_check_probe.py"))
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    return probe


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answers")
def test_gpu_check_probe_without_gpu(capsys):
    probe = _load_probe()
    assert probe.environment() == 1
    assert probe.arch() == 1  # no capability to build for: gpu_check.sh falls back to setup.py's list
    assert probe.kernels() == (0 if "CUDA:" in torch._C._dispatch_dump("seglosses::dice_sums") else 1)
    out = capsys.readouterr().out
    assert f"torch {torch.__version__}" in out
    assert "CPU-only build" in out or "sees no GPU" in out
    for op in ("dice_sums", "dice_backward", "malis_weights", "malis_counts", "connected_components"):
        assert f"seglosses::{op}" in out  # every op with a CPU kernel is checked for a CUDA one


def test_gpu_check_needs_a_log_dir():
    proc = subprocess.run(["bash", os.path.join(ROOT, "tools", "gpu_check.sh")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Usage: tools/gpu_check.sh" in proc.stderr


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    proc = subprocess.run(["bash", os.path.join(ROOT, "tools", "gpu_check.sh"), "--dry-run", "--python",
                           sys.executable, str(tmp_path / "logs")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for part in ("environment:", "build (CUDA): env FORCE_CUDA=1", "CUDA kernels:", "CUDA tests:",
                 "Dice bench (cuda):", "MALIS bench (cuda):", "dry run: nothing was run"):
        assert f"gpu_check: {part}" in out, out
    selected = int(out.split(" tests carry the cuda marker")[0].rsplit(" ", 1)[-1])
    assert selected > 0  # `pytest -m cuda` selects the @requires_cuda tests
    assert not (tmp_path / "logs" / "build.log").exists()  # nothing ran
