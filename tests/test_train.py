"""The trainer: settings, atomic checkpoint swaps, and bit-exact resume after a SIGKILL."""

import json
from pathlib import Path

import numpy as np
import pytest
from trainrun import assert_same_run, checkpoint_files, kill_inside_step

from npgpt import model, optim
from npgpt.training import metrics, snapshot
from npgpt.training.backend import Backend, BackendState, NumpyBackend
from npgpt.training.loop import train
from npgpt.training.settings import (
    TrainError,
    TrainSettings,
    model_config,
    resolve_settings,
    total_steps,
)


def tiny_settings(corpus, out, **changes):
    values = dict(
        preset="tiny", data=[str(corpus)], context_length=16, batch_size=2, grad_accum=2,
        max_steps=4, warmup_steps=1, lr=3e-3, drop_rate=0.1, eval_every=3, eval_batches=1,
        sample_every=3, sample_tokens=4, save_every=2, dtype="float64", out=str(out),
        cache_dir=str(Path(out).parent / "cache"),
    )  # fmt: skip
    return resolve_settings(values | changes)


def test_resume_after_sigkill_is_bit_exact(corpus, tmp_path):
    straight = tiny_settings(corpus, tmp_path / "straight")
    train(straight, NumpyBackend, progress=False)

    killed = tiny_settings(corpus, tmp_path / "killed")
    kill_inside_step(killed, 3)  # mid-way: after the checkpoint of step 2
    state = json.loads((tmp_path / "killed/checkpoint/trainer_state.json").read_text())
    assert state["step"] == 2
    assert [r["step"] for r in metrics.read(tmp_path / "killed/metrics.jsonl")][-1] == 2

    resumed = resolve_settings({}, resumed=state["settings"])
    train(resumed, NumpyBackend, resume=tmp_path / "killed", progress=False)

    # every loss, lr and val loss, before and after the resume
    state_a, state_b, logged_b = assert_same_run(
        tmp_path / "straight", tmp_path / "killed", steps=4
    )
    params, _, _ = checkpoint_files(tmp_path / "killed")
    assert all(value.dtype == np.float64 for value in params.values())
    assert logged_b[3]["val_loss"] is not None and logged_b[4]["val_loss"] is not None
    assert state_a["rng"] == state_b["rng"] and state_a["position"] == state_b["position"]


def test_settings_defaults_config_file_and_command_line(tmp_path):
    assert resolve_settings() == TrainSettings()
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "tiny"\nmax-steps = 7\nlr = 1\ndata = "a.txt"\n')
    s = resolve_settings({"max_steps": 9}, config_file=toml)
    assert (s.preset, s.max_steps, s.lr, s.data) == ("tiny", 9, 1.0, ("a.txt",))
    assert isinstance(s.lr, float)
    as_json = tmp_path / "run.json"
    as_json.write_text(json.dumps(s.to_dict()))
    assert resolve_settings(config_file=as_json) == s  # train_config.json reproduces a run


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ('{"bogus": 1}', "unknown setting(s) bogus"),
        ('{"max_steps": "ten"}', "max_steps = 'ten' should be of type int"),
        ('{"batch_size": true}', "batch_size = True should be"),
        ('{"lr": 0.1, "min_lr": 0.5}', "--min-lr must be in [0, --lr = 0.1]"),
        ('{"context_length": 0}', "--context-length must be > 0"),
        ("[1, 2]", "expected a table of settings"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_config_files_name_the_file_and_key(tmp_path, text, phrase):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(TrainError) as err:
        resolve_settings(config_file=path)
    assert phrase in str(err.value)


def test_a_resumed_run_keeps_its_model_and_data():
    saved = TrainSettings(preset="tiny", max_steps=10).to_dict()
    assert resolve_settings({"max_steps": 20}, resumed=saved).max_steps == 20
    assert resolve_settings({"preset": "tiny"}, resumed=saved).preset == "tiny"
    with pytest.raises(TrainError, match="seed = 3 differs from the resumed run's 0"):
        resolve_settings({"seed": 3}, resumed=saved)


def test_torch_only_settings_are_refused_by_numpy_and_not_inherited_by_a_resume(tmp_path):
    toml = tmp_path / "gpu.toml"
    toml.write_text('backend = "torch"\namp = "bf16"\ncompile = true\n')
    s = resolve_settings(config_file=toml)
    assert (s.amp, s.compile, s.device) == ("bf16", True, "auto")
    with pytest.raises(TrainError, match="--amp, --compile: only for --backend torch"):
        resolve_settings({"backend": "numpy"}, config_file=toml)
    resumed = resolve_settings({}, resumed=s.to_dict())  # a resume may change them: not kept
    assert (resumed.backend, resumed.amp, resumed.compile) == ("torch", "off", False)
    assert resolve_settings({"amp": "fp16"}, resumed=s.to_dict()).amp == "fp16"
    with pytest.raises(TrainError, match="--amp bf16 keeps float32 master weights"):
        resolve_settings({"dtype": "float64"}, config_file=toml)
    with pytest.raises(TrainError, match="--attn must be one of sdpa, math, got 'flash'"):
        resolve_settings({"backend": "torch", "attn": "flash"})


def make_dir(path, content):
    path.mkdir()
    (path / "file").write_text(content)


def test_snapshot_swap_replaces_the_whole_directory(tmp_path):
    target = tmp_path / "checkpoint"
    snapshot.write_directory(target, lambda d: (d / "a").write_text("1"))
    snapshot.write_directory(target, lambda d: (d / "b").write_text("2"))
    assert [p.name for p in target.iterdir()] == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_snapshot_failed_write_keeps_the_previous_directory(tmp_path):
    target = tmp_path / "checkpoint"
    snapshot.write_directory(target, lambda d: (d / "a").write_text("1"))

    def crash(d):
        (d / "a").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        snapshot.write_directory(target, crash)
    assert (target / "a").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


@pytest.mark.parametrize(
    ("left", "expected"),
    [
        ({".checkpoint.tmp-x": "new, torn", "checkpoint": "old"}, "old"),  # killed in step 1
        ({"checkpoint.old": "old"}, "old"),  # killed between the renames
        ({"checkpoint.old": "old", "checkpoint": "new"}, "new"),  # killed while deleting
    ],
)
def test_snapshot_recover_finds_the_complete_directory(tmp_path, left, expected):
    for name, content in left.items():
        make_dir(tmp_path / name, content)
    snapshot.recover(tmp_path / "checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert (tmp_path / "checkpoint/file").read_text() == expected


def test_epochs_replace_max_steps():
    assert resolve_settings({"epochs": 2}).epochs == 2.0
    with pytest.raises(TrainError, match="give --max-steps or --epochs, not both"):
        resolve_settings({"epochs": 2, "max_steps": 5})


def test_epochs_set_the_number_of_steps():
    assert total_steps(TrainSettings(max_steps=7), 1000) == 7
    settings = TrainSettings(epochs=1.5, batch_size=4, grad_accum=2, max_steps=7)
    assert total_steps(settings, 100) == 19  # ceil(1.5 * 100 / 8)


def test_numpy_backend_is_a_backend_whose_state_is_what_it_trains():
    settings = TrainSettings(dtype="float64")
    config = model_config(settings)
    params = model.init_params(config, dtype=np.float64)
    backend = NumpyBackend(
        config, settings, BackendState(params, optim.init_state(params), None), 0
    )
    assert isinstance(backend, Backend)
    x = np.arange(2 * 8).reshape(2, 8) % config.vocab_size
    before = backend.state().params["wte.weight"].copy()
    loss, norm = backend.train_step([(x, x), (x, x)], lr=1e-3)
    assert isinstance(loss, float) and isinstance(norm, float) and norm > 0
    state = backend.state()
    assert not np.array_equal(state.params["wte.weight"], before)
    assert np.any(state.moments["exp_avg.wte.weight"] != 0)
    assert state.rng["bit_generator"] == "PCG64"
