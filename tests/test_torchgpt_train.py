"""The torch backend of the trainer: it trains what the numpy backend trains, resumes bit for bit
after a SIGKILL, writes checkpoints the other backend generates from, and data parallelism over
2 processes (gloo, CPU) reproduces 1 process.

Tolerances: float64 throughout. numpy and torch compute the same formulas in different orders,
so losses and weights differ by rounding, ~1e-15 relative per operation; after a few AdamW steps
(whose update divides by sqrt(v) ~ |g|) 1e-9 relative still catches any real difference (a wrong
learning rate, decay group, clipping or moment is >= 1e-4). Kill-and-resume is compared exactly."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from trainrun import (
    ONE_THREAD,
    assert_same_run,
    checkpoint_files,
    deterministic,
    kill_inside_step,
    torchrun_cli,
)

import cli
from npgpt import optim
from npgpt.model import init_params
from npgpt.training import metrics
from npgpt.training.backend import Backend, BackendState, NumpyBackend
from npgpt.training.loop import train
from npgpt.training.run_directory import resumed_settings
from npgpt.training.settings import BY_NAME, model_config, resolve_settings
from torchgpt.distributed import shard
from torchgpt.model import ATTN_CHOICES
from torchgpt.training import AMP_DTYPES, TorchBackend

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-9


def tiny_settings(corpus, out, **changes):
    values = dict(
        preset="tiny", data=[str(corpus)], context_length=16, batch_size=4, grad_accum=2,
        max_steps=4, warmup_steps=2, lr=3e-3, min_lr=3e-3, clip=0.05, drop_rate=0.0, eval_every=2,
        eval_batches=1, sample_every=4, sample_tokens=3, save_every=2, dtype="float64",
        out=str(out), cache_dir=str(Path(corpus).parent / "cache"), backend="torch", device="cpu",
    )  # fmt: skip
    return resolve_settings(values | changes)


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    """The same 4 steps (no dropout, clipping active) by each backend, in this process."""
    root = tmp_path_factory.mktemp("runs")
    train(tiny_settings(corpus, root / "torch"), TorchBackend, progress=False)
    numpy_settings = tiny_settings(corpus, root / "numpy", backend="numpy", device="auto")
    train(numpy_settings, NumpyBackend, progress=False)
    return root


def assert_close(a, b, what):
    scale = max(1.0, float(np.max(np.abs(b))))
    assert np.max(np.abs(np.asarray(a) - np.asarray(b))) <= TOL * scale, what


def test_torch_trainer_matches_numpy_trainer(runs):
    torch_log = deterministic(metrics.read(runs / "torch/metrics.jsonl"))
    numpy_log = deterministic(metrics.read(runs / "numpy/metrics.jsonl"))
    assert [r["step"] for r in torch_log] == [0, 1, 2, 3, 4]
    for t, n in zip(torch_log, numpy_log, strict=True):
        assert t.keys() == n.keys() and t["lr"] == n["lr"]
        for key in ("loss", "train_loss", "val_loss"):
            if n.get(key) is not None:
                assert_close(t[key], n[key], f"step {n['step']} {key}")
    params_t, moments_t, state_t = checkpoint_files(runs / "torch")
    params_n, moments_n, state_n = checkpoint_files(runs / "numpy")
    assert params_t.keys() == params_n.keys() and moments_t.keys() == moments_n.keys()
    for name in params_n:
        assert params_t[name].dtype == np.float64
        assert_close(params_t[name], params_n[name], name)
    for name in moments_n:
        assert_close(moments_t[name], moments_n[name], name)
    assert state_t["position"] == state_n["position"] and state_t["step"] == 4
    assert state_t["backend"] == "torch"
    assert {"torch", "numpy", "python"} <= set(state_t["rng"])


@pytest.mark.parametrize("trained_by", ["torch", "numpy"])
def test_a_checkpoint_trained_by_one_backend_generates_in_the_other(runs, trained_by):
    checkpoint = runs / trained_by / "checkpoint"
    outputs = {}
    for backend in ("numpy", "torch"):
        args = ["generate", "--checkpoint", checkpoint, "--prompt", "The", "--max-new-tokens"]
        args += ["8", "--temperature", "0", "--dtype", "float64", "--backend", backend]
        if backend == "torch":
            args += ["--device", "cpu"]
        result = CliRunner().invoke(cli.main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        outputs[backend] = result.stdout
    assert outputs["numpy"] == outputs["torch"]
    assert outputs["numpy"].startswith("The") and len(outputs["numpy"]) > len("The\n")


@pytest.mark.parametrize("trained_by", ["torch", "numpy"])
def test_a_run_trained_by_one_backend_resumes_in_the_other(runs, trained_by, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs / trained_by, run)
    other = "numpy" if trained_by == "torch" else "torch"
    given = {"backend": other, "max_steps": 5} | ({"device": "cpu"} if other == "torch" else {})
    resumed = resolve_settings(given, resumed=resumed_settings(run))
    train(resumed, NumpyBackend if other == "numpy" else TorchBackend, resume=run, progress=False)
    _, _, state = checkpoint_files(run)
    assert state["step"] == 5 and state["backend"] == other
    logged = metrics.read(run / "metrics.jsonl")
    assert [r["step"] for r in logged] == list(range(6))
    assert deterministic(logged[:5]) == deterministic(
        metrics.read(runs / trained_by / "metrics.jsonl")
    )
    assert 0 < logged[5]["loss"] < logged[0]["train_loss"]


def test_resume_after_sigkill_is_bit_exact(corpus, tmp_path):
    changes = dict(max_steps=6, grad_accum=1, batch_size=2, drop_rate=0.1, eval_every=3)
    straight = tiny_settings(corpus, tmp_path / "straight", **changes)
    train(straight, TorchBackend, progress=False)

    killed = tiny_settings(corpus, tmp_path / "killed", **changes)
    kill_inside_step(killed, 5, env=ONE_THREAD)  # after step 4's checkpoint
    assert json.loads((tmp_path / "killed/checkpoint/trainer_state.json").read_text())["step"] == 4

    # torch-only settings are not carried over by a resume: the device is given again
    resumed = resolve_settings({"device": "cpu"}, resumed=killed.to_dict())
    train(resumed, TorchBackend, resume=tmp_path / "killed", progress=False)

    # every dropout draw too: the torch RNG state was restored
    state_a, state_b, _ = assert_same_run(tmp_path / "straight", tmp_path / "killed", steps=6)
    assert state_a["rng"] == state_b["rng"]


def test_two_processes_reproduce_one(runs, corpus, tmp_path):
    """torchrun: 2 gloo processes each take half of every micro-batch (2 of 4 rows), sync
    gradients on the last of 2 micro-batches; 2 steps, then --resume (every process reloads)
    for 2 more: the losses and weights equal the uninterrupted 1-process run's. (The learning
    rate is constant after warm-up, so stopping at step 2 changes no step's rate.)"""
    config = tmp_path / "ddp.json"
    config.write_text(json.dumps(tiny_settings(corpus, tmp_path / "ddp", max_steps=2).to_dict()))
    train_ddp = ["train", "--device", "cpu", "--no-progress"]
    for more in (["--config", config], ["--resume", tmp_path / "ddp", "--max-steps", 4]):
        torchrun_cli(*train_ddp, *more, timeout=120)
    ddp_log = deterministic(metrics.read(tmp_path / "ddp/metrics.jsonl"))
    one_log = deterministic(metrics.read(runs / "torch/metrics.jsonl"))
    assert [r["step"] for r in ddp_log] == [0, 1, 2, 3, 4]  # one writer, not two
    for d, o in zip(ddp_log, one_log, strict=True):
        for key in ("loss", "train_loss", "val_loss"):
            if o.get(key) is not None:
                assert_close(d[key], o[key], f"step {o['step']} {key}")
    params_d = checkpoint_files(tmp_path / "ddp")[0]
    params_o = checkpoint_files(runs / "torch")[0]
    for name in params_o:
        assert_close(params_d[name], params_o[name], name)


def test_torch_only_flags_are_refused_for_the_numpy_backend():
    result = CliRunner().invoke(cli.main, ["train", "--preset", "tiny", "--compile"])
    assert result.exit_code == 1
    assert "--compile: only for --backend torch" in result.output


def test_shard_splits_a_global_batch_between_ranks():
    batch = list(range(8))
    assert [shard(batch, r, 4) for r in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    with pytest.raises(ValueError, match="does not split over 3 ranks"):
        shard(batch, 0, 3)


def test_torch_backend_is_a_backend(corpus, tmp_path):
    settings = tiny_settings(corpus, tmp_path / "unused")
    config = model_config(settings)
    params = init_params(config, dtype=np.float64)
    state = BackendState(params, optim.init_state(params), None)
    backend = TorchBackend(config, settings, state, 0)
    assert isinstance(backend, Backend) and backend.is_main
    assert backend.description == "torch float64 on cpu, amp off, attn sdpa"


def test_the_torch_choices_are_the_ones_torchgpt_implements():
    assert BY_NAME["amp"].choices == tuple(AMP_DTYPES)
    assert sorted(BY_NAME["attn"].choices) == sorted(ATTN_CHOICES)
