"""The CLI's train, eval and generate: a real run end to end, stdout contracts, user errors."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from npgpt.config import GPTConfig
from npgpt.generate import generate
from npgpt.model import init_params
from npgpt.sampling import SamplingSettings
from npgpt.tokenizer import get_tokenizer
from npgpt.training.corpus import builtin_documents
from npgpt.weights import checkpoint

SMALL = GPTConfig(context_length=16, emb_dim=16, n_heads=2, n_layers=1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(builtin_documents()[:3])[:8_000])
    (root / "short.txt").write_text("Too short.")
    (root / "latin1.txt").write_bytes("déjà vu".encode("latin-1"))
    checkpoint.save(root / "ckpt", SMALL, init_params(SMALL, seed=1))
    return root


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def assert_user_error(result, *phrases):
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    assert result.stdout == ""


def tree_bytes(directory):
    return {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir())}


def tiny_run_args(files, out, *more):
    data = () if "--data" in more else ("--data", files / "corpus.txt")
    return (
        "train", "--preset", "tiny", *data, "--context-length", 16,
        "--batch-size", 2, "--max-steps", 2, "--eval-every", 1, "--eval-batches", 1,
        "--sample-every", 2, "--sample-tokens", 3, "--save-every", 2, "--out", out,
        "--cache-dir", files / "cache", "--no-progress", *more,
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained(files):
    out = files / "run"
    result = invoke(*tiny_run_args(files, out))
    assert result.exit_code == 0, result.output
    return out, result


def test_every_training_setting_is_a_train_flag():
    """The flags are made from the settings' declaration: every one is there, with its help and
    default (shown, not applied: a flag not typed must not override a resumed run's value)."""
    from npgpt.training.settings import BY_NAME, SETTINGS

    options = {p.opts[0]: p for p in cli.train.params if p.opts[0].startswith("--")}
    assert set(BY_NAME) == {p.name for p in cli.train.params} - {
        "config_file",
        "resume",
        "progress",
    }
    for setting in SETTINGS:
        option = options[setting.flag]
        assert option.default is None and option.help.startswith(setting.help)
        assert option.multiple == setting.repeatable and option.is_flag == (setting.kind is bool)
    assert "[default: 16]" in options["--batch-size"].help
    assert "[default: 0]" in options["--seed"].help
    assert list(options["--dtype"].type.choices) == ["float32", "float64"]


def test_train_writes_a_checkpoint_metrics_and_samples(trained):
    out, result = trained
    ckpt = out / "checkpoint"
    names = {p.name for p in ckpt.iterdir()}
    assert names >= {"model.safetensors", "config.json", "optimizer.safetensors",
                     "trainer_state.json", "train_config.json"}  # fmt: skip
    saved = json.loads((ckpt / "train_config.json").read_text())
    assert saved["max_steps"] == 2 and saved["preset"] == "tiny" and saved["context_length"] == 16
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["settings"] == saved
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1, 2] and all(r["val_loss"] > 0 for r in lines)
    assert state["metrics"] == lines
    assert "sample at step 2: The" in result.stdout
    config, _ = checkpoint.load(ckpt)
    assert config == GPTConfig.preset("tiny", context_length=16)


def test_every_command_takes_the_run_directory(trained, tmp_path):
    """What `train --out` made is accepted wherever a checkpoint is, as `--resume` accepts it."""
    out, _ = trained
    for command in (
        ["generate", "--prompt", "The", "--temperature", 0, "--max-new-tokens", 5],
        ["eval", "--data", out.parent / "corpus.txt", "--batch-size", 2],
    ):
        by_run = invoke(*command, "--checkpoint", out)
        by_checkpoint = invoke(*command, "--checkpoint", out / "checkpoint")
        assert by_run.exit_code == 0, by_run.output
        assert by_run.stdout == by_checkpoint.stdout
    assert invoke("info", out).stdout == invoke("info", out / "checkpoint").stdout
    result = invoke("convert", out, tmp_path / "converted")
    assert result.exit_code == 0, result.output
    assert tree_bytes(tmp_path / "converted") == {
        name: data
        for name, data in tree_bytes(out / "checkpoint").items()
        if name in ("model.safetensors", "config.json")
    }


def test_a_directory_that_is_neither_names_both_forms(files, tmp_path):
    result = invoke("generate", "--checkpoint", tmp_path, "--prompt", "Hi")
    assert_user_error(result, "neither a GPT-2 checkpoint directory", "nor a training run")


def test_generate_stdout_is_prompt_plus_text_plus_newline(files):
    ckpt = files / "ckpt"
    config, params = checkpoint.load(ckpt)
    prompt = "The list"
    ids = get_tokenizer().encode(prompt)
    new = list(generate(params, config, ids, SamplingSettings(temperature=0, max_new_tokens=6)))
    expected = prompt + get_tokenizer().decode(new) + "\n"
    for stream in ("--stream", "--no-stream"):
        result = invoke("generate", "--checkpoint", ckpt, "--prompt", prompt, "--temperature", 0,
                        "--max-new-tokens", 6, stream)  # fmt: skip
        assert result.exit_code == 0, result.output
        assert result.stdout == expected
        assert "tokens in" in result.stderr


@pytest.mark.parametrize(
    ("args", "phrases"),
    [
        (["--checkpoint", "{root}/missing"], ["missing"]),
        (["--top-p", "1.5"], ["top_p must be in (0, 1]"]),
        (["--top-k", "0"], ["top_k must be a positive integer"]),
        (["--temperature", "-1"], ["temperature must be >= 0"]),
        (["--max-new-tokens", "-2"], ["max_new_tokens must be >= 0"]),
        (["--prompt", "caf\udce9"], ["--prompt is not text"]),
        (["--checkpoint", "{root}/corpus.txt"], ["cannot load checkpoint"]),
    ],
)
def test_generate_user_errors(files, args, phrases):
    base = {"--checkpoint": str(files / "ckpt"), "--prompt": "Hi"}
    given = dict(zip(args[::2], [a.format(root=files) for a in args[1::2]], strict=True))
    argv = [x for key, value in (base | given).items() for x in (key, value)]
    assert_user_error(invoke("generate", *argv), *phrases)


def test_eval_reports_loss_and_perplexity(files):
    ckpt = files / "ckpt"
    result = invoke("eval", "--checkpoint", ckpt, "--data", files / "corpus.txt", "--batch-size", 4,
                    "--max-batches", 2, "--cache-dir", files / "cache")  # fmt: skip
    assert result.exit_code == 0, result.output
    words = result.stdout.split()
    assert words[0] == "loss" and words[2] == "perplexity"
    loss, ppl = float(words[1]), float(words[3])
    assert ppl == pytest.approx(math.exp(loss), rel=1e-3)
    # an untrained model is close to uniform over the vocabulary
    assert abs(loss - math.log(SMALL.vocab_size)) < 0.5
    # the same number by hand, over the first 2 batches of 4 windows
    from npgpt.model import forward
    from npgpt.training.corpus import token_ids
    from npgpt.training.windows import Windows

    config, params = checkpoint.load(ckpt)
    ids = token_ids([(files / "corpus.txt").read_text()], files / "cache")
    windows = Windows(ids, 16, 16)
    x, y = windows.batch(range(8))
    assert loss == pytest.approx(float(forward(params, config, x, y)[1]), abs=1e-4)
    assert "8 windows of 16 tokens" in result.stderr


def test_eval_torch_backend_agrees_with_numpy(files):
    pytest.importorskip("torch", reason="torch not installed: --backend torch needs it")
    args = ["eval", "--checkpoint", files / "ckpt", "--data", files / "corpus.txt",
            "--max-batches", 1, "--cache-dir", files / "cache", "--dtype", "float64"]  # fmt: skip
    numpy_result, torch_result = invoke(*args), invoke(*args, "--backend", "torch")
    assert torch_result.exit_code == 0, torch_result.output
    loss_np, loss_torch = (
        float(numpy_result.stdout.split()[1]),
        float(torch_result.stdout.split()[1]),
    )
    assert loss_torch == pytest.approx(loss_np, abs=2e-4)  # both printed to 4 decimals


def test_eval_on_the_builtin_validation_split(trained, files):
    out, _ = trained
    result = invoke("eval", "--checkpoint", out / "checkpoint", "--max-batches", 1,
                    "--batch-size", 2, "--cache-dir", files / "cache")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "built-in corpus (pydoc_data.topics) validation split" in result.stderr
    assert "2 windows of 16 tokens" in result.stderr


@pytest.mark.parametrize(
    ("args", "phrases"),
    [
        (["--checkpoint", "{root}/missing"], ["missing"]),
        (["--data", "{root}/short.txt"], ["short.txt", "has 3 tokens", "needs at least"]),
        (["--data", "{root}/nope.txt"], ["nope.txt: no such file"]),
        (["--data", "{root}/latin1.txt"], ["latin1.txt is not UTF-8", "byte offset 1"]),
        (["--context-length", "64"], ["--context-length must be in [1, 16]"]),
    ],
)
def test_eval_user_errors(files, args, phrases):
    base = {"--checkpoint": str(files / "ckpt"), "--cache-dir": str(files / "cache")}
    given = dict(zip(args[::2], [a.format(root=files) for a in args[1::2]], strict=True))
    argv = [x for key, value in (base | given).items() for x in (key, value)]
    assert_user_error(invoke("eval", *argv), *phrases)


@pytest.mark.parametrize(
    ("args", "phrases"),
    [
        ([], ["already holds a training run", "--resume"]),
        (["--resume", "{out}", "--context-length", "32"], ["context_length = 32 differs"]),
        (["--resume", "{root}/nowhere"], ["no training checkpoint there"]),
        (["--data", "{root}/short.txt"], ["short.txt", "has 3 tokens but needs at least"]),
        (["--data", "{root}/missing.txt"], ["missing.txt: no such file"]),
        (["--data", "{root}/latin1.txt"], ["latin1.txt is not UTF-8", "0xe9 at byte offset 1"]),
        (["--val-fraction", "0.001"], ["validation split is empty"]),
        (["--lr", "-1"], ["--lr must be > 0"]),
        (["--min-lr", "1"], ["--min-lr must be in [0, --lr"]),
        (["--preset", "huge"], ["unknown preset 'huge'"]),
        (["--config", "{root}/none.toml"], ["none.toml: no such file"]),
    ],
)
def test_train_user_errors_leave_the_checkpoint_alone(trained, files, args, phrases):
    out, _ = trained
    before = tree_bytes(out / "checkpoint")
    metrics_before = (out / "metrics.jsonl").read_bytes()
    more = [a.format(root=files, out=out) for a in args]
    result = invoke(*tiny_run_args(files, out, *more))
    assert_user_error(result, *phrases)
    assert tree_bytes(out / "checkpoint") == before
    assert (out / "metrics.jsonl").read_bytes() == metrics_before


def test_resume_continues_from_the_checkpoint(trained, files, tmp_path):
    out, _ = trained
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "checkpoint").mkdir()
    for name, data in tree_bytes(out / "checkpoint").items():
        (copy / "checkpoint" / name).write_bytes(data)
    (copy / "metrics.jsonl").write_bytes((out / "metrics.jsonl").read_bytes())
    result = invoke("train", "--resume", copy / "checkpoint", "--max-steps", 3, "--no-progress")
    assert result.exit_code == 0, result.output
    state = json.loads((copy / "checkpoint/trainer_state.json").read_text())
    assert state["step"] == 3 and state["settings"]["max_steps"] == 3
    assert [json.loads(x)["step"] for x in (copy / "metrics.jsonl").read_text().splitlines()] == [
        0, 1, 2, 3,
    ]  # fmt: skip
    _, params = checkpoint.load(copy / "checkpoint")
    _, before = checkpoint.load(out / "checkpoint")
    assert not np.array_equal(params["wte.weight"], before["wte.weight"])
