"""npgpt.threads: how many workers, and that splitting work over them gives the unsplit result."""

import os
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from npgpt import threads


@pytest.fixture
def many_blocks(monkeypatch):
    """Three workers and no minimum size: even small products and arrays are split."""
    monkeypatch.setattr(threads, "WORKERS", 3)
    monkeypatch.setattr(threads, "MIN_BLOCK_MACS", 1)
    monkeypatch.setattr(threads, "ROW_ELEMENTS", 7)


def test_worker_count_reads_npgpt_num_threads():
    assert threads.worker_count({"NPGPT_NUM_THREADS": "3"}) == 3
    assert threads.worker_count({"NPGPT_NUM_THREADS": " 1 "}) == 1
    assert threads.worker_count({}) == threads.available_cores() >= 1
    assert threads.worker_count({"NPGPT_NUM_THREADS": ""}) == threads.available_cores()


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_worker_count_refuses_what_is_not_a_count(value):
    with pytest.raises(
        ValueError, match=f"NPGPT_NUM_THREADS must be a whole number >= 1, got '{value}'"
    ):
        threads.worker_count({"NPGPT_NUM_THREADS": value})


@pytest.mark.parametrize(
    "files, cores",
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "200000 100000\n"}, 2),
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 cores of quota: two threads share them
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
        ({}, None),
        ({"cpu.max": "garbage\n"}, None),
    ],
)
def test_cgroup_cores_reads_the_quota_of_cgroup_v1_and_v2(tmp_path, files, cores):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    assert threads.cgroup_cores(str(tmp_path)) == cores


def test_available_cores_is_at_most_the_affinity():
    assert 1 <= threads.available_cores() <= len(os.sched_getaffinity(0))


def test_blocks_returns_every_result_in_order(many_blocks):
    assert threads.blocks(lambda s: list(range(s.start, s.stop)), 10, 3) == [
        [0, 1, 2],
        [3, 4, 5],
        [6, 7, 8],
        [9],
    ]
    assert threads.blocks(lambda s: s, 0, 4) == []


def test_blocks_on_the_pool_run_in_several_threads_and_nest_in_turn(many_blocks):
    seen = set()

    def inner(part):
        seen.add(threading.get_ident())
        return part.stop - part.start

    def outer(part):
        return sum(threads.blocks(inner, part.stop - part.start, 1))  # in turn, in this task

    assert threads.blocks(outer, 40, 4) == [4] * 10
    assert threading.get_ident() not in seen  # the pool's threads did the work


def test_blocks_raise_a_tasks_error_after_every_block_has_finished(many_blocks):
    finished = []

    def task(part):
        if part.start == 0:
            raise RuntimeError("block 0 failed")
        finished.append(part.start)

    with pytest.raises(RuntimeError, match="block 0 failed"):
        threads.blocks(task, 6, 1)
    assert sorted(finished) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("n_rows", [1, 2, 5, 13])
def test_rows_equals_the_function_on_the_whole_arrays(many_blocks, n_rows):
    x = np.random.default_rng(0).standard_normal((n_rows, 3))
    out = np.full_like(x, np.nan)

    def scaled_cumsum(x_block, out_block, factor):
        np.cumsum(x_block, axis=-1, out=out_block)
        out_block *= factor
        return len(x_block)

    counts = threads.rows(scaled_cumsum, (x, out), 2.0)
    assert np.array_equal(out, 2.0 * np.cumsum(x, axis=-1))
    assert counts == [min(2, n_rows - start) for start in range(0, n_rows, 2)]  # 7 // 3 rows each


@pytest.mark.parametrize("shape", [(5, 3, 4), (3, 7, 50), (64, 9, 2), (1, 1, 1)])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matmul_equals_the_single_product(many_blocks, shape, transposed, with_bias):
    M, K, N = shape
    rng = np.random.default_rng(1)
    a = rng.standard_normal((K, M)).T if transposed else rng.standard_normal((M, K))
    b = rng.standard_normal((N, K)).T if transposed else rng.standard_normal((K, N))
    bias = rng.standard_normal(N) if with_bias else None
    expected = a @ b + (bias if with_bias else 0.0)
    np.testing.assert_allclose(threads.matmul(a, b, bias=bias), expected, rtol=1e-13, atol=1e-13)


def blas_threads():
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_blas_runs_on_one_thread_inside_and_as_before_after():
    before = blas_threads()
    inside = threads.one_blas_thread(blas_threads)()
    nested = threads.one_blas_thread(threads.one_blas_thread(blas_threads))()
    assert inside == nested == {1}
    assert blas_threads() == before
