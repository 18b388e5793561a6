"""SIGKILL at any moment: a run killed again and again, anywhere (at a step's start, between its
micro-batches, in an evaluation, at a metrics line, between the files, fsyncs and renames of a
checkpoint), and resumed after each kill, ends bit for bit where the uninterrupted run ends
(float64, CPU). Hypothesis draws where the kills land (trainrun.KILLED_AT_EVENT counts the
events of a run); the default profile tries a few runs, `--hypothesis-profile thorough` many.
Every run is a subprocess on one thread: the float64 sums add up in one order in all of them."""

from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from trainrun import (
    ONE_THREAD,
    assert_same_run,
    run_killed_at_event,
    stop_settings,
    train_on_one_thread,
)

from npgpt.training.run_directory import find_checkpoint
from npgpt.training.settings import TrainError

# The events of a fresh run of `kill_settings`: the first process of an example meets them all;
# a resumed one fewer, and a kill drawn past its end lets it finish. Among them, today: 8 and 11
# between a step's micro-batches, 15-29 the checkpoint of step 2 (27: its rename into place),
# 38-53 that of step 3 (51: between its two renames, the old one renamed away, the new one not
# yet in place). Draws begin with the last: a derandomized first example is the simplest one.
EVENTS = 56
FIRST_DRAWN = (51, 11, 27)
DRAWN = FIRST_DRAWN + tuple(n for n in range(1, EVENTS + 1) if n not in FIRST_DRAWN)
# Each example is several runs in subprocesses: a share of the profile's examples (ci: 20).
EXAMPLES = hypothesis_settings.default.max_examples


def kill_settings(corpus, out, backend):
    """trainrun.stop_settings with checkpoints at steps 2 and 3: more moments to kill."""
    return stop_settings(corpus, out, backend, save_every=2)


def check_kills(corpus, tmp_path_factory, straight_runs, backend, kills):
    """A run SIGKILLed at each event number in `kills` in turn (counted from the start of each
    process), resumed each time, then finished, equals the straight run."""
    out = tmp_path_factory.mktemp("killed") / "run"
    settings = kill_settings(corpus, out, backend)
    landed = [run_killed_at_event(settings, kill_at, ONE_THREAD) for kill_at in kills]
    assert landed[0], f"a fresh run ended before its event {kills[0]}: EVENTS is out of date"
    if backend == "torch":  # finished in this process: a torch process takes seconds to start
        train_on_one_thread(settings, resume=None if fresh(out) else out)
    else:  # in a subprocess: OpenBLAS's thread count cannot be set once it is loaded
        assert not run_killed_at_event(settings, 0, ONE_THREAD)  # 0: no kill
    state_a, state_b, _ = assert_same_run(straight_runs(backend), out, steps=3)
    assert state_a["rng"] == state_b["rng"] and state_a["position"] == state_b["position"]


def fresh(out):
    """Whether the run in `out` has no checkpoint yet (every kill landed before the first)."""
    try:
        find_checkpoint(out)
    except TrainError:
        return True
    return False


def kill_points(at_most):
    """Where each process of a run is killed, by event number: `at_most` processes killed."""
    return st.lists(st.sampled_from(DRAWN), min_size=1, max_size=at_most)


@hypothesis_settings(max_examples=max(3, EXAMPLES // 6))
@given(kills=kill_points(at_most=3))
def test_numpy_run_killed_anywhere_resumes_bit_for_bit(
    corpus, tmp_path_factory, straight_runs, kills
):
    check_kills(corpus, tmp_path_factory, straight_runs, "numpy", kills)


@hypothesis_settings(max_examples=max(1, EXAMPLES // 20))  # a torch process starts in ~4 s
@given(kills=kill_points(at_most=2))
def test_torch_run_killed_anywhere_resumes_bit_for_bit(
    corpus, tmp_path_factory, straight_runs, kills
):
    check_kills(corpus, tmp_path_factory, straight_runs, "torch", kills)
