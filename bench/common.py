"""Shared helpers for the seglosses benchmark scripts (``bench/dice.py``, ``bench/malis.py``).

Nothing here imports torch at module level: ``bench/malis.py`` also runs this file under the
separate ``bench/.malis-venv`` interpreter (numpy + malis 1.0 only).

Peak memory method (Linux):
    Resident memory is read from ``/proc/self/status``: ``VmRSS`` (now) and ``VmHWM`` (the
    high-water mark). ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is the same high-water mark
    but cannot be reset, so any earlier peak (imports, input creation, a warm-up run) would hide the
    one being measured. Instead, :class:`PeakRSS` resets ``VmHWM`` to the current RSS by writing
    ``"5"`` to ``/proc/self/clear_refs`` (Linux >= 4.0), runs the measured code, and reports
    ``VmHWM - RSS before``. If that write is not allowed, it falls back to a background thread that
    samples ``VmRSS`` every 0.2 ms (it can miss very short peaks; the result says which method ran).
    RSS only sees memory that the allocator has returned to the kernel: glibc keeps small freed
    blocks and, once a large block has been freed, raises its mmap threshold (up to 32 MiB) so that
    later blocks of that size come from the heap and may stay resident. :data:`MALLOC_ENV` fixes the
    mmap threshold at 64 KiB and makes glibc give freed memory back at once, so every tensor buffer
    is its own mapping, counted while alive and gone when freed. Measure memory in a fresh process
    started with that environment, after one warm-up run (which pages in code, starts the OpenMP
    threads and fills lazy caches), and time in another process with the default allocator.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from typing import Callable, List, Optional, Sequence

RESULT_TAG = "@@BENCH_RESULT@@"

#: Environment for a child that measures memory: every allocation >= 64 KiB is an mmap of its own
#: and is unmapped when freed; no trimming delay; one malloc arena per thread type is enough.
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(64 * 1024),
    "MALLOC_TRIM_THRESHOLD_": "0",
    "MALLOC_TOP_PAD_": "0",
    "MALLOC_ARENA_MAX": "2",
}

MIB = 1024.0 * 1024.0


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_repo_to_path() -> None:
    """Make ``import seglosses`` find this checkout's package.

    With an in-place build (``seglosses/_C*.so`` next to the sources) the checkout goes first on
    ``sys.path``; otherwise last, so that an installed seglosses (``pip install .``) is used.
    """
    import glob

    if REPO_ROOT in sys.path:
        return
    if glob.glob(os.path.join(REPO_ROOT, "seglosses", "_C*.so")) or glob.glob(
            os.path.join(REPO_ROOT, "seglosses", "_C*.pyd")):
        sys.path.insert(0, REPO_ROOT)
    else:
        sys.path.append(REPO_ROOT)


# ----------------------------------------------------------------------------- memory

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(r"^" + field + r":\s+(\d+)\s+kB", f.read(), re.M)
    if m is None:
        raise RuntimeError(f"/proc/self/status has no {field} field")
    return int(m.group(1))


def rss_bytes() -> int:
    """Current resident set size of this process, in bytes."""
    return _status_kib("VmRSS") * 1024


def hwm_bytes() -> int:
    """Resident-set high-water mark (VmHWM) of this process, in bytes."""
    return _status_kib("VmHWM") * 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS. Returns False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def malloc_trim() -> None:
    """Ask glibc to return free heap pages to the kernel (no-op elsewhere), so that RSS read
    afterwards counts live memory, not allocator fragmentation."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Context manager measuring the peak RSS above the RSS at entry.

    Example::

        with PeakRSS() as m:
            work()
        print(m.extra_bytes, m.method)
    """

    def __init__(self, sample_interval_s: float = 0.0002):
        self.sample_interval_s = sample_interval_s
        self.before = 0
        self.peak = 0
        self.method = ""
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._sampled = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._sampled = max(self._sampled, rss_bytes())
            time.sleep(self.sample_interval_s)

    def __enter__(self) -> "PeakRSS":
        if reset_peak_rss():
            self.method = "VmHWM after clear_refs"
            self.before = rss_bytes()
        else:
            self.method = "VmRSS sampled every %.1f ms" % (self.sample_interval_s * 1e3)
            self.before = rss_bytes()
            self._sampled = self.before
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is None:
            self.peak = hwm_bytes()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._sampled, rss_bytes())

    @property
    def extra_bytes(self) -> int:
        return max(0, self.peak - self.before)


# ----------------------------------------------------------------------------- timing

def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1,
                setup: Optional[Callable[[], object]] = None, min_time: float = 0.0) -> tuple:
    """Run ``fn`` ``warmup`` times untimed, then at least ``repeats`` times and until the timed
    calls add up to ``min_time`` seconds (so that millisecond-scale calls get enough samples for a
    stable median); ``setup`` runs untimed before each call. Returns (median seconds, list of all
    timed seconds)."""
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    times = []
    while len(times) < max(1, repeats) or sum(times) < min_time:
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


# ----------------------------------------------------------------------------- machine

def seglosses_line() -> str:
    """Where ``import seglosses`` resolves for the children (without importing it here)."""
    import importlib.util

    add_repo_to_path()
    spec = importlib.util.find_spec("seglosses")
    if spec is None:
        return "seglosses: NOT importable (build it: python setup.py build_ext --inplace)"
    return f"seglosses: {os.path.dirname(spec.origin)}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_lines(threads: Optional[Sequence[str]] = None) -> List[str]:
    """Lines naming the machine: CPU, cores, memory, OS, Python, torch, threads."""
    lines = [f"CPU: {cpu_model()} ({usable_cores()} usable cores, os.cpu_count()={os.cpu_count()})"]
    try:
        with open("/proc/meminfo") as f:
            total = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1)) * 1024
        lines.append(f"memory: {total / 2**30:.1f} GiB")
    except (OSError, AttributeError):
        pass
    lines.append(f"OS: {platform.system()} {platform.release()}; Python {platform.python_version()}")
    try:
        import torch

        lines.append(f"torch {torch.__version__} (default intra-op threads: {torch.get_num_threads()}; "
                     f"{_parallel_backend(torch)})")
    except ImportError:
        pass
    try:
        la = os.getloadavg()
        lines.append(f"load average at start: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} "
                     f"(anything near or above {usable_cores()} means the timings are noisy)")
    except OSError:
        pass
    if threads:
        lines.extend(threads)
    return lines


def _parallel_backend(torch) -> str:
    for line in torch.__config__.parallel_info().splitlines():
        if "ATen parallel backend" in line:
            return line.strip()
    return "parallel backend unknown"


# ----------------------------------------------------------------------------- output

def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for r in cells[1:]:
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    return "\n".join(out)


def fmt_s(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds >= 10:
        return f"{seconds:.1f}"
    if seconds >= 1:
        return f"{seconds:.2f}"
    if seconds >= 0.01:
        return f"{seconds:.3f}"
    return f"{seconds:.4f}"


def emit_result(obj: dict) -> None:
    """Child side: print one machine-readable result line for :func:`run_child`."""
    sys.stdout.write(RESULT_TAG + json.dumps(obj) + "\n")
    sys.stdout.flush()


def run_child(argv: Sequence[str], env_extra: Optional[dict] = None, timeout: Optional[float] = None,
              python: Optional[str] = None) -> dict:
    """Run ``python argv...`` in a fresh process and return the dict it passed to
    :func:`emit_result`. On failure returns ``{"error": "..."}`` with the tail of its output."""
    env = dict(os.environ)
    if env_extra:
        env.update(env_extra)
    cmd = [python or sys.executable] + list(argv)
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-6:]
    return {"error": f"exit {proc.returncode}: " + " / ".join(tail)}
