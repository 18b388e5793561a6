"""SIGKILL at any moment: a run killed again and again, anywhere (at a step's start, between its
micro-batches, in an evaluation, at a metrics line, between the files, fsyncs and renames of a
checkpoint), and resumed after each kill, ends bit for bit where the uninterrupted run ends
(float64, CPU). Hypothesis draws where the kills land (trainrun.KILLED_AT_EVENT counts the
events of a run); the default profile tries a few runs, `--hypothesis-profile thorough` many."""

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from trainrun import assert_same_run, run_killed_at_event

from npgpt.training.backend import NumpyBackend
from npgpt.training.loop import train
from npgpt.training.run_directory import find_checkpoint
from npgpt.training.settings import TrainError, resolve_settings

# torch runs on one thread here (one_torch_thread), and in the subprocesses: float64 sums then add
# up in the same order in both; numpy's subprocesses inherit this process's thread count
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
# The events of a fresh run of `kill_settings`: the first process of an example meets them all;
# a resumed one fewer, and a kill drawn past its end lets it finish.
EVENTS = 56
# Each example is several runs in subprocesses: a share of the profile's examples (ci: 20).
EXAMPLES = hypothesis_settings.default.max_examples


def kill_settings(corpus, out, backend):
    """3 steps of 2 micro-batches, dropout on, checkpoints at steps 2 and 3."""
    values = dict(
        preset="tiny", data=[str(corpus)], context_length=8, batch_size=1, grad_accum=2,
        max_steps=3, warmup_steps=1, lr=3e-3, drop_rate=0.1, eval_every=2, eval_batches=1,
        sample_tokens=0, save_every=2, dtype="float64", out=str(out),
        cache_dir=str(out.parent.parent / "cache"), backend=backend,
    )  # fmt: skip
    if backend == "torch":
        values["device"] = "cpu"
    return resolve_settings(values)


def backend_class(name):
    if name == "numpy":
        return NumpyBackend
    from torchgpt.training import TorchBackend

    return TorchBackend


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory):
    """The uninterrupted run of each backend, made on first use."""
    root, made = tmp_path_factory.mktemp("straight"), {}

    def run(backend):
        if backend not in made:
            made[backend] = root / backend
            settings = kill_settings(corpus, made[backend], backend)
            train(settings, backend_class(backend), progress=False)
        return made[backend]

    return run


def check_kills(corpus, tmp_path_factory, straight, backend, kills):
    """A run SIGKILLed at each event number in `kills` in turn (counted from the start of each
    process), resumed each time, then finished in this process, equals the straight run."""
    out = tmp_path_factory.mktemp("killed") / "run"
    settings = kill_settings(corpus, out, backend)
    env = ONE_THREAD if backend == "torch" else None
    landed = [run_killed_at_event(settings, kill_at, env) for kill_at in kills]
    assert landed[0], f"a fresh run ended before its event {kills[0]}: EVENTS is out of date"
    try:
        resume = find_checkpoint(out)
    except TrainError:
        resume = None  # every kill landed before the first checkpoint
    train(settings, backend_class(backend), resume=resume, progress=False)
    state_a, state_b, _ = assert_same_run(straight(backend), out, steps=3)
    assert state_a["rng"] == state_b["rng"] and state_a["position"] == state_b["position"]


KILLS = st.lists(st.integers(1, EVENTS), min_size=1, max_size=3)


@hypothesis_settings(max_examples=max(3, EXAMPLES // 6))
@given(kills=KILLS)
def test_numpy_run_killed_anywhere_resumes_bit_for_bit(corpus, tmp_path_factory, straight, kills):
    check_kills(corpus, tmp_path_factory, straight, "numpy", kills)


@hypothesis_settings(max_examples=max(2, EXAMPLES // 10))
@given(kills=KILLS)
def test_torch_run_killed_anywhere_resumes_bit_for_bit(
    corpus, tmp_path_factory, straight, one_torch_thread, kills
):
    check_kills(corpus, tmp_path_factory, straight, "torch", kills)
