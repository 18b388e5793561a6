"""pytest set-up for every suite (tests/, parity/): the Hypothesis profiles, one fixture.

pytest                                  the `ci` profile (default)
pytest --hypothesis-profile thorough    fresh draws and many more examples (parity: about 30
                                        minutes); a test whose examples are costly takes a
                                        share of the profile's (tests/test_sigkill_resume.py)
"""

import pytest
from hypothesis import HealthCheck, settings

# ci: a fixed, bounded set of examples (derandomize: the same draws on every run and machine,
# no example database), so a red CI run is reproducible and the whole suite stays within ~3
# minutes on 2 cores. thorough: fresh random draws, 20x the examples.
settings.register_profile(
    "ci",
    max_examples=20,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=400,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("ci")  # `--hypothesis-profile NAME` (Hypothesis' own option) overrides


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch work on one thread, then restore the count: the models under test
    are small, OpenMP's start-up and spinning cost more than the work on a busy 2-core machine,
    and float64 sums then add up in the same order as in the one-thread subprocesses that the
    kill-and-resume tests start."""
    torch = pytest.importorskip("torch")
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
