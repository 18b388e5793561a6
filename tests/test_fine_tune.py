"""Fine-tuning (`train --init-from`): a small model saved by Hugging Face's `save_pretrained`
trained further on a text file by each backend; the loss falls, and the result loads in
`generate`, `eval`, the web page's loader and `transformers` (logits equal to npgpt's in float64);
every format `npgpt.load` reads can start a run; the position table is cropped, never extended;
the fine-tuning defaults apply unless a flag overrides them; the run resumes bit for bit with
`--resume` alone, after the checkpoint it started from is gone; 2 DDP processes reproduce 1."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hf_files import hf_tensors
from safetensors.numpy import save_file
from trainrun import (
    assert_same_run,
    checkpoint_files,
    deterministic,
    kill_inside_step,
    torchrun_cli,
)

import cli
from frontend import load_model
from npgpt import model
from npgpt.config import GPTConfig
from npgpt.names import param_shapes
from npgpt.tokenizer import get_tokenizer
from npgpt.training import fine_tune, metrics
from npgpt.training.backend import NumpyBackend
from npgpt.training.loop import train
from npgpt.training.settings import SETTINGS, TrainError, TrainSettings, resolve_settings
from npgpt.weights import checkpoint
from npgpt.weights.openai import save_openai
from parity.oracle import errors
from parity.tolerances import FLOAT64

transformers = pytest.importorskip(
    "transformers", reason='transformers is not installed (pip install -e ".[dev]")'
)
torch = pytest.importorskip("torch", reason='torch is not installed (pip install -e ".[torch]")')

ROOT = Path(__file__).resolve().parents[1]
CFG = GPTConfig(context_length=32, emb_dim=16, n_heads=2, n_layers=2, drop_rate=0.1)
T = 16  # the runs' context: half the checkpoint's position table


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A GPT-2 as transformers saves it (model.safetensors with `transformer.` keys and no head,
    config.json), and its parameters as npgpt reads them."""
    directory = tmp_path_factory.mktemp("hf") / "small-gpt2"
    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**CFG.to_hf()))
    hf_model.save_pretrained(directory)
    config, params = checkpoint.load(directory, dtype=np.float64)
    assert config == CFG
    return directory, params


@pytest.fixture(scope="module")
def texts(corpus):
    """(training text, held-out text): the corpus' first 80% and the rest."""
    text = corpus.read_text()
    root = corpus.parent / "texts"
    root.mkdir(exist_ok=True)
    cut = int(len(text) * 0.8)
    (root / "train.txt").write_text(text[:cut])
    (root / "heldout.txt").write_text(text[cut:])
    return root / "train.txt", root / "heldout.txt"


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def fine_tune_args(start_dir, text, out, *more):
    """A short fine-tune of the random start, at a from-scratch learning rate so that 8 steps
    show (the fine-tuning defaults suit a trained model: the defaults' test checks them)."""
    return (
        "train", "--init-from", start_dir, "--data", text, "--context-length", T,
        "--batch-size", 4, "--max-steps", 8, "--lr", 1e-2, "--warmup-steps", 2,
        "--eval-every", 4, "--eval-batches", 2, "--sample-every", 8, "--sample-tokens", 3,
        "--dtype", "float64", "--out", out, "--cache-dir", Path(text).parent / "cache",
        "--no-progress", *more,
    )  # fmt: skip


def eval_loss(checkpoint_path, text, backend="numpy"):
    """`eval`'s loss of a checkpoint on a text, in float64."""
    result = invoke("eval", "--checkpoint", checkpoint_path, "--data", text, "--context-length",
                    T, "--dtype", "float64", "--backend", backend)  # fmt: skip
    assert result.exit_code == 0, result.output
    loss, perplexity = result.stdout.split()[1::2]
    assert math.isclose(math.exp(float(loss)), float(perplexity), rel_tol=1e-3)
    return float(loss)


@pytest.fixture(scope="module")
def runs(start, texts, tmp_path_factory):
    """The same fine-tune by each backend, through the CLI."""
    root = tmp_path_factory.mktemp("fine-tuned")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for backend in ("numpy", "torch"):
            device = ("--device", "cpu") if backend == "torch" else ()
            args = fine_tune_args(start[0], texts[0], root / backend, "--backend", backend, *device)
            result = invoke(*args)
            assert result.exit_code == 0, result.output
            assert f"fine-tuning {start[0]}" in result.stderr
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_fine_tuning_lowers_the_loss_and_loads_in_transformers(runs, start, texts, backend):
    run = runs / backend
    logged = metrics.read(run / "metrics.jsonl")
    assert [r["step"] for r in logged] == list(range(9))
    first, last = logged[0], logged[-1]
    assert last["val_loss"] < first["val_loss"] - 0.1 and last["train_loss"] < first["train_loss"]
    # eval before and after, on text the run never saw
    before, after = eval_loss(start[0], texts[1]), eval_loss(run, texts[1])
    assert after < before - 0.1

    config, params = checkpoint.load(run, dtype=np.float64)
    assert config == CFG.replace(context_length=T)
    assert not np.array_equal(params["wpe.weight"], start[1]["wpe.weight"][:T])  # trained
    hf, info = transformers.GPT2LMHeadModel.from_pretrained(
        run / "checkpoint", local_files_only=True, dtype=torch.float64, output_loading_info=True
    )
    assert {kind: keys for kind, keys in info.items() if len(keys)} == {}  # all found, none left
    hf.eval()
    ids = get_tokenizer().encode(texts[1].read_text())[:T]
    with torch.no_grad():
        hf_logits = hf(torch.tensor([ids])).logits.numpy()
    npgpt_logits = model.forward(params, config, np.array([ids]))[0]
    _, relative = errors(npgpt_logits, hf_logits)
    assert relative <= FLOAT64, relative


def test_the_fine_tuned_run_loads_in_generate_eval_and_the_web_page(runs, texts):
    """Both backends' runs, read by both backends (the web page's loader is frontend's)."""
    for trained_by in ("numpy", "torch"):
        run = runs / trained_by
        result = invoke("generate", "--checkpoint", run, "--prompt", "The", "--max-new-tokens",
                        4, "--temperature", 0)  # fmt: skip
        assert result.exit_code == 0 and result.stdout.startswith("The"), result.output
        losses = [eval_loss(run, texts[1], backend) for backend in ("numpy", "torch")]
        assert math.isclose(*losses, rel_tol=1e-9)
        for backend in ("numpy", "torch"):
            loaded = load_model(run, backend, dtype="float64")
            assert loaded.config.context_length == T


def saved(kind, directory, params):
    """`params` (of CFG) written in one of the formats npgpt.load reads; returns the path."""
    directory.mkdir()
    if kind == "safetensors file":
        path = directory / "weights.safetensors"
        save_file(hf_tensors(params), str(path))
        (directory / "config.json").write_text(json.dumps(CFG.to_hf()))
        return path
    if kind == "pytorch_model.bin":
        state = {k: torch.from_numpy(v) for k, v in hf_tensors(params, lm_head=True).items()}
        torch.save(state, directory / "pytorch_model.bin")
        (directory / "config.json").write_text(json.dumps(CFG.to_hf()))
        return directory
    if kind == "openai-tf":
        save_openai(directory, CFG, params)
        return directory
    checkpoint.save(directory / "checkpoint", CFG, params)  # a run directory's checkpoint
    return directory


@pytest.mark.parametrize("kind", ["safetensors file", "pytorch_model.bin", "openai-tf", "run"])
def test_every_format_npgpt_load_reads_starts_a_fine_tune(start, tmp_path, kind):
    path = saved(kind, tmp_path / "start", start[1])
    settings = resolve_settings({"init_from": str(path), "context_length": T, "dtype": "float64"})
    config, params = fine_tune.start_model(settings)
    assert config.context_length == T and config.emb_dim == CFG.emb_dim
    for name in param_shapes(config):
        expected = start[1][name][:T] if name == "wpe.weight" else start[1][name]
        np.testing.assert_array_equal(params[name], expected, err_msg=name)
        assert params[name].dtype == np.float64


def test_the_cropped_model_computes_what_the_full_one_does(start):
    settings = resolve_settings({"init_from": str(start[0]), "context_length": T,
                                 "drop_rate": 0.0, "dtype": "float64"})  # fmt: skip
    config, params = fine_tune.start_model(settings)
    assert config == CFG.replace(context_length=T, drop_rate=0.0)
    assert params["wpe.weight"].shape == (T, CFG.emb_dim) and params["wpe.weight"].base is None
    idx = np.random.default_rng(0).integers(0, CFG.vocab_size, (2, T))
    np.testing.assert_array_equal(
        model.forward(params, config, idx)[0], model.forward(start[1], CFG, idx)[0]
    )
    same = resolve_settings({"init_from": str(start[0]), "dtype": "float64"})
    assert fine_tune.start_model(same)[0] == CFG  # no --context-length: the checkpoint's


def assert_one_line_error(result, *phrases):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


@pytest.mark.parametrize(
    "more, phrases",
    [
        (["--preset", "tiny"], ["--preset tiny beside --init-from", "leave --preset out"]),
        (["--preset", "gpt2"], ["--preset gpt2 beside --init-from"]),
        (["--context-length", 33], ["--context-length 33", "32 positions", "32 or less"]),
        (["--drop-rate", 1.5], ["drop_rate must be in [0, 1)"]),
    ],
)
def test_what_cannot_be_fine_tuned_is_refused(start, texts, tmp_path, more, phrases):
    args = list(fine_tune_args(start[0], texts[0], tmp_path / "run"))
    args[args.index("--context-length") : args.index("--context-length") + 2] = []
    assert_one_line_error(invoke(*args, *more), *phrases)
    assert not (tmp_path / "run").exists()


def test_a_missing_start_checkpoint_is_one_line(texts, tmp_path):
    result = invoke("train", "--init-from", tmp_path / "none", "--data", texts[0])
    assert_one_line_error(result, f"--init-from {tmp_path / 'none'}", "no such file")


def test_the_fine_tuning_defaults_apply_unless_something_overrides_them(tmp_path):
    scratch, tuned = resolve_settings({}), resolve_settings({"init_from": "models/gpt2"})
    changed = {s.name for s in SETTINGS if getattr(scratch, s.name) != getattr(tuned, s.name)}
    assert changed == {"init_from", "preset", "lr", "min_lr", "warmup_steps"}
    assert (tuned.preset, tuned.lr, tuned.min_lr, tuned.warmup_steps) == (None, 6e-5, 6e-6, 10)
    assert (scratch.preset, scratch.lr, scratch.min_lr, scratch.warmup_steps) == (
        "tiny", 2e-3, 2e-4, 20,
    )  # fmt: skip
    flags = {"init_from": "models/gpt2", "lr": 1e-3, "min_lr": 0.0, "warmup_steps": 0}
    overridden = resolve_settings(flags)
    assert (overridden.lr, overridden.min_lr, overridden.warmup_steps) == (1e-3, 0.0, 0)
    config_file = tmp_path / "fine.toml"
    config_file.write_text('init-from = "models/gpt2"\nwarmup-steps = 3\n')
    from_file = resolve_settings({"lr": 2e-4}, config_file)
    assert (from_file.lr, from_file.min_lr, from_file.warmup_steps) == (2e-4, 6e-6, 3)
    # `train --help` states both defaults
    options = {p.opts[0]: p for p in cli.train.params}
    assert "[default: 0.002; with --init-from: 6e-05]" in options["--lr"].help


def test_a_resumed_run_keeps_its_start():
    tuned = resolve_settings({"init_from": "models/gpt2"}).to_dict()
    assert resolve_settings({"max_steps": 400}, resumed=tuned).lr == 6e-5  # not 2e-3
    with pytest.raises(TrainError, match="init_from = 'models/gpt2' differs"):
        resolve_settings({"init_from": "models/gpt2"}, resumed=TrainSettings().to_dict())
    with pytest.raises(TrainError, match="init_from = 'other' differs"):
        resolve_settings({"init_from": "other"}, resumed=tuned)


def test_resume_needs_no_init_from_and_is_bit_exact(start, texts, tmp_path):
    """A fine-tune killed inside step 3 (after the checkpoint of step 2), its start checkpoint
    then moved away, resumed by `train --resume DIR` alone: every parameter, moment, loss and
    dropout draw equals the uninterrupted run's (float64, numpy backend)."""
    first = tmp_path / "start"
    shutil.copytree(start[0], first)
    values = dict(init_from=str(first), data=[str(texts[0])], context_length=T, batch_size=2,
                  grad_accum=2, max_steps=4, lr=1e-2, warmup_steps=1, eval_every=3,
                  eval_batches=1, sample_tokens=0, save_every=2, dtype="float64",
                  cache_dir=str(tmp_path / "cache"))  # fmt: skip
    train(resolve_settings(values | {"out": str(tmp_path / "straight")}), NumpyBackend,
          progress=False)  # fmt: skip
    killed = resolve_settings(values | {"out": str(tmp_path / "killed")})
    kill_inside_step(killed, 3)
    first.rename(tmp_path / "gone")
    result = invoke("train", "--resume", tmp_path / "killed", "--no-progress")
    assert result.exit_code == 0, result.output
    state_a, state_b, _ = assert_same_run(tmp_path / "straight", tmp_path / "killed", steps=4)
    assert state_a["rng"] == state_b["rng"]
    assert state_b["settings"]["init_from"] == str(first)  # the run says where it started
    assert state_b["settings"]["drop_rate"] is None  # the checkpoint's 0.1: dropout was on
    assert checkpoint.load(tmp_path / "killed")[0].drop_rate == 0.1


def test_two_processes_fine_tune_as_one(start, texts, tmp_path):
    """torchrun: 2 gloo processes each load the start checkpoint and take half of every batch;
    without dropout their losses and weights are the 1-process run's, up to rounding."""
    more = ("--backend", "torch", "--device", "cpu", "--drop-rate", 0, "--max-steps", 4)
    torchrun_cli(*fine_tune_args(start[0], texts[0], tmp_path / "ddp", *more))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = invoke(*fine_tune_args(start[0], texts[0], tmp_path / "one", *more))
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    logs = [deterministic(metrics.read(tmp_path / r / "metrics.jsonl")) for r in ("ddp", "one")]
    assert [r["step"] for r in logs[0]] == [0, 1, 2, 3, 4]  # one writer, not two
    for d, o in zip(*logs, strict=True):
        for key in ("loss", "train_loss", "val_loss"):
            if o.get(key) is not None:
                assert abs(d[key] - o[key]) <= 1e-9 * max(1.0, abs(o[key])), (o["step"], key)
    params_d, params_o = (checkpoint_files(tmp_path / r)[0] for r in ("ddp", "one"))
    for name in params_o:
        assert np.max(np.abs(params_d[name] - params_o[name])) <= 1e-9, name
    assert not np.array_equal(params_o["wte.weight"], start[1]["wte.weight"])
