"""pytest set-up for every test directory: the Hypothesis profiles, registered once here (pytest
loads this file before the conftest.py of tests/ and parity/, whichever of them runs).

pytest                                       the `ci` profile (default)
pytest --hypothesis-profile thorough         fresh draws and 20x the examples (parity: about 30
                                             minutes; the readers' fuzzing in tests/: minutes)
"""

from hypothesis import HealthCheck, settings

# ci: a fixed, bounded set of examples (derandomize: the same draws on every run and machine,
# no example database), so a red CI run is reproducible and the parity suite stays within ~3
# minutes on 2 cores. thorough: fresh random draws, 20x the examples. Tests that need more
# examples or a deadline scale these (tests/fuzzing.py), so both profiles keep their meaning.
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
