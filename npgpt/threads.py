"""How npgpt uses the cores it may run on: its own small pool of threads, BLAS on one thread.

NumPy releases the GIL inside matmul and ufunc loops, so plain Python threads run NumPy in
parallel. npgpt splits each large product and each elementwise pass into blocks, more blocks
than threads, and a pool of `WORKERS` threads takes them one at a time: a thread whose core is
busy with another process simply takes fewer blocks, and an idle thread sleeps.
Why not let BLAS thread itself: after each call OpenBLAS's workers spin (~0.1 s) waiting for
the next, so between two matmuls they hold cores that do no work; and when another process
takes one core, every 2-thread BLAS call waits for a worker that is not running (the whole step
ran 5-10x slower, measured; torch, whose threads sleep, did not). So while npgpt computes, BLAS
runs on one thread (threadpoolctl sets that and restores it after, so other NumPy code in the
process keeps its BLAS threads), and npgpt's blocks are what runs in parallel.

`WORKERS` is `NPGPT_NUM_THREADS` when set, else the cores this process may use: its CPU
affinity (taskset, cpusets), or the container's CPU quota (cgroup) when that is lower.

The helpers and their naive forms:
    matmul(a, b, bias=b0)          a @ b + b0
    rows(fn, (x, y), *args)        fn(x, y, *args), one block of rows at a time
    blocks(fn, n, size)            [fn(s) for s in slices of range(n), `size` long]

>>> import numpy as np
>>> a, b = np.arange(6.0).reshape(2, 3), np.ones((3, 2))
>>> matmul(a, b, bias=np.array([0.0, 10.0]))
array([[ 3., 13.],
       [12., 22.]])
>>> blocks(lambda s: (s.start, s.stop), 5, 2)
[(0, 2), (2, 4), (4, 5)]
"""

import functools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
from threadpoolctl import ThreadpoolController

ROW_ELEMENTS = 1 << 16  # elements per array in a block of rows: 256 KB of float32, in L2
TASKS_PER_WORKER = 4  # blocks of rows per worker: a worker on a busy core takes fewer
MATMUL_BLOCKS_PER_WORKER = 2  # each split of a product costs a few % of its speed
MIN_BLOCK_MACS = 1 << 20  # multiply-adds below which a product is not worth splitting


def cgroup_cores(root="/sys/fs/cgroup"):
    """The CPU quota of this process's cgroup, in cores rounded up; None without a quota."""
    for path, parse in (
        (f"{root}/cpu.max", lambda text: text.split()),  # cgroup v2: "quota period" or "max ..."
        (f"{root}/cpu/cpu.cfs_quota_us", lambda text: [text.strip(), None]),  # cgroup v1
    ):
        try:
            with open(path) as file:
                quota, period = parse(file.read())
            if period is None:
                with open(f"{root}/cpu/cpu.cfs_period_us") as file:
                    period = file.read()
        except (OSError, ValueError):
            continue
        if quota in ("max", "-1"):
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    return None


def available_cores():
    """The cores this process may really use: its affinity, capped by a cgroup quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = cgroup_cores()
    return min(cores or 1, quota or cores or 1)


def worker_count(environ=os.environ):
    value = environ.get("NPGPT_NUM_THREADS", "").strip()
    if not value:
        return available_cores()
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"NPGPT_NUM_THREADS must be a whole number >= 1, got {value!r}")
    return int(value)


WORKERS = worker_count()

_state = threading.local()  # .in_task: this thread is running one of the pool's blocks
_lock = threading.Lock()
_pool = None
_blas = {"controller": None, "limiter": None, "users": 0}


def pool():
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="npgpt")
        return _pool


def _forget_pool():
    """In a forked child the parent's threads do not exist: start a fresh pool when needed."""
    global _pool, _lock
    _pool, _lock = None, threading.Lock()
    _blas["users"] = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _enter_one_blas_thread():
    with _lock:
        if _blas["users"] == 0:
            if _blas["controller"] is None:
                _blas["controller"] = ThreadpoolController()
            _blas["limiter"] = _blas["controller"].limit(limits=1, user_api="blas")
        _blas["users"] += 1


def _leave_one_blas_thread():
    with _lock:
        _blas["users"] -= 1
        if _blas["users"] == 0:
            _blas["limiter"].restore_original_limits()


def one_blas_thread(fn):
    """Decorator: BLAS runs on one thread while `fn` runs (nested and concurrent calls share
    one limit; the last to leave restores BLAS's own setting)."""

    @functools.wraps(fn)
    def limited(*args, **kwargs):
        _enter_one_blas_thread()
        try:
            return fn(*args, **kwargs)
        finally:
            _leave_one_blas_thread()

    return limited


def _run_task(fn, part):
    _state.in_task = True
    try:
        return fn(part)
    finally:
        _state.in_task = False


@one_blas_thread
def blocks(fn, n, size):
    """[fn(s) for s in consecutive slices of range(n), `size` long], the calls handed out to
    the pool; results in order. Inside a block (a helper called by a helper) it runs in turn."""
    parts = [slice(start, min(start + size, n)) for start in range(0, n, max(1, size))]
    if WORKERS == 1 or len(parts) <= 1 or getattr(_state, "in_task", False):
        return [fn(part) for part in parts]
    futures = [pool().submit(_run_task, fn, part) for part in parts]
    wait(futures)  # every block has finished before any error is raised
    return [future.result() for future in futures]


def rows(fn, arrays, *args):
    """fn(*(a[r] for a in arrays), *args) for consecutive blocks r of the arrays' first axis,
    each small enough that its arrays stay in cache; returns fn's results in order. The
    arrays share their first axis; a block of an output array is a view, written in place."""
    n = len(arrays[0])
    if n == 0:
        return []
    per_row = max(a.size // n for a in arrays)
    chunk = max(1, ROW_ELEMENTS // max(1, per_row))
    n_chunks = -(-n // chunk)
    tasks = min(n_chunks, TASKS_PER_WORKER * WORKERS)
    rows_per_task = -(-n_chunks // tasks) * chunk

    def task(span):
        return [
            fn(*(a[start : min(start + chunk, span.stop)] for a in arrays), *args)
            for start in range(span.start, span.stop, chunk)
        ]

    return [result for results in blocks(task, n, rows_per_task) for result in results]


def split_size(n, n_blocks, align=64):
    """Length of each of `n_blocks` blocks covering n, rounded up to a multiple of `align`
    (BLAS kernels work in panels of a few dozen rows or columns)."""
    per_block = math.ceil(n / n_blocks)
    return min(n, math.ceil(per_block / align) * align)


def matmul(a, b, out=None, bias=None):
    """a @ b (+ bias): a (M, K), b (K, N) -> out (M, N), in blocks of the output's rows or
    columns (its longer side) handed out to the pool, each block adding its share of bias."""
    (M, K), N = a.shape, b.shape[1]
    if out is None:
        out = np.empty((M, N), dtype=np.result_type(a, b))
    n_blocks = min(MATMUL_BLOCKS_PER_WORKER * WORKERS, max(1, M * N * K // MIN_BLOCK_MACS))

    def row_block(r):
        np.matmul(a[r], b, out=out[r])
        if bias is not None:
            out[r] += bias

    def column_block(c):
        np.matmul(a, b[:, c], out=out[:, c])
        if bias is not None:
            out[:, c] += bias[c]

    if M >= N:
        blocks(row_block, M, split_size(M, n_blocks))
    else:
        blocks(column_block, N, split_size(N, n_blocks))
    return out
