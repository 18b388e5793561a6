"""What the bench scripts share: threads, the machine's description, timers, a competing load,
peak memory, and the table of targets. Imported by the scripts in this folder (run as
`python bench/<script>.py`, so this folder is on sys.path)."""

import math
import os
import resource
import subprocess
import sys
import time
from typing import NamedTuple

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def ensure_threads(threads):
    """Run this script with every BLAS/OpenMP pool sized to `threads`. The pools read their size
    from the environment when they start, so a change means starting the script afresh."""
    wanted = {name: str(threads) for name in THREAD_VARIABLES}
    if all(os.environ.get(name) == value for name, value in wanted.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], os.environ | wanted)


def default_threads():
    return int(os.environ.get("OMP_NUM_THREADS", len(os.sched_getaffinity(0))))


def cpu_model():
    """The CPU's marketing name, as /proc/cpuinfo (Linux) or the platform reports it."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def blas_description():
    """NumPy's BLAS and, where threadpoolctl is installed, the kernel it chose for this CPU."""
    import numpy as np

    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    text = f"{blas['name']} {blas.get('version', '')}".strip()
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return text
    kernels = {pool.get("architecture") for pool in threadpool_info() if pool["user_api"] == "blas"}
    kernels.discard(None)
    return f"{text}, kernel {'/'.join(sorted(kernels))}" if kernels else text


def machine_lines(threads):
    """Two lines naming what the figures were measured on."""
    import numpy as np
    import torch

    coretype = os.environ.get("OPENBLAS_CORETYPE")
    forced = f", OPENBLAS_CORETYPE={coretype}" if coretype else ""
    return [
        f"CPU: {cpu_model()}, {len(os.sched_getaffinity(0))} cores available, "
        f"{threads} threads; load average {os.getloadavg()[0]:.1f}",
        f"numpy {np.__version__} ({blas_description()}{forced}), torch {torch.__version__}",
    ]


def timed(fn, repeat=1):
    """(wall seconds, CPU seconds of this process's threads together) per call of `fn`."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - wall) / repeat, (time.process_time() - cpu) / repeat


def repeats_for(fn, min_seconds):
    """Calls of `fn` per timing so that one timing lasts about `min_seconds`; calls it once."""
    wall, _ = timed(fn)
    return max(1, math.ceil(min_seconds / max(wall, 1e-9)))


def interleaved_times(fns, rounds, min_seconds=0.5, statistic=min):
    """(wall, CPU) seconds per call of each function, over `rounds` rounds run in turns
    (a, b, c, a, b, c, ...) after a warm-up turn, so a change in the machine's load hits each
    alike, summarised by `statistic`: the minimum is the estimate least disturbed by other work
    on the machine; the median shows what a loaded machine typically gives. Fast functions are
    called several times per timing (at least `min_seconds` a timing)."""
    repeats = {name: repeats_for(fn, min_seconds) for name, fn in fns.items()}  # the warm-up
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn, repeats[name]))
    return {name: tuple(map(statistic, zip(*t, strict=True))) for name, t in times.items()}


SPIN_LOOP = """
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    pass
"""


class BusyCore:
    """A competing process spinning on one core, as other work on a shared machine does. It
    ends by itself after `seconds` should this script die, and is killed when the block ends."""

    def __init__(self, core, seconds):
        self.args = [sys.executable, "-c", SPIN_LOOP, str(core), str(seconds)]

    def __enter__(self):
        self.process = subprocess.Popen(self.args)
        time.sleep(0.2)  # let it start spinning
        return self

    def __exit__(self, *exc):
        self.process.kill()
        self.process.wait()


def resident_bytes(field):
    """A field of /proc/self/status in bytes: VmRSS (now) or VmHWM (peak since the last reset)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak_resident():
    """Start VmHWM afresh from the current resident set (Linux >= 4.0); False where that is
    not possible, and then the peak is the whole process's (ru_maxrss)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def peak_resident_bytes():
    try:
        return resident_bytes("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Check(NamedTuple):
    """One measured figure against its target: `value <= target` (at_most) or `>=`."""

    name: str
    value: float
    target: float
    at_most: bool
    unit: str = "x"

    @property
    def passed(self):
        return self.value <= self.target if self.at_most else self.value >= self.target

    def cells(self):
        fmt = "{:.0f}%" if self.unit == "%" else "{:.2f}" + self.unit
        target = ("<= " if self.at_most else ">= ") + fmt.format(self.target)
        return fmt.format(self.value), target, "PASS" if self.passed else "MISS"


def print_checks(checks):
    width = max(len(check.name) for check in checks) + 2
    print(f"\n{'check':<{width}}{'measured':>10}{'target':>12}  result")
    for check in checks:
        value, target, result = check.cells()
        print(f"{check.name:<{width}}{value:>10}{target:>12}  {result}")
