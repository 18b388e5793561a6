"""`cli.py convert` and `cli.py info`: OpenAI and Hugging Face weights rewritten as npgpt
checkpoints bit for bit (or cast on request), a truthful description of any checkpoint, and one
line plus exit status 1 for every user error."""

import numpy as np
import pytest
from click.testing import CliRunner
from hf_files import write_hf_directory

import cli
import npgpt
from npgpt.config import GPTConfig
from npgpt.model import init_params
from npgpt.names import num_params
from npgpt.weights.formats import write_config
from npgpt.weights.openai import save_openai

CFG = GPTConfig(vocab_size=61, context_length=16, emb_dim=8, n_heads=2, n_layers=2)


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, seed=5)


@pytest.fixture(scope="module")
def sources(params, tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    save_openai(root / "openai", CFG, params)
    write_hf_directory(root / "hf", CFG, params)
    return root


def run(*args):
    return CliRunner().invoke(cli.main, [str(arg) for arg in args])


def assert_user_error(result, *fragments):
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("source", ["openai", "hf"])
def test_convert_keeps_every_bit(sources, params, tmp_path, source):
    result = run("convert", sources / source, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{tmp_path / 'out'}\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    config, loaded = npgpt.load(tmp_path / "out", dtype=None)
    assert config == CFG
    for name, value in params.items():
        assert loaded[name].tobytes() == value.tobytes(), name


def test_convert_to_float16(sources, params, tmp_path):
    result = run("convert", sources / "openai", tmp_path / "half", "--dtype", "float16")
    assert result.exit_code == 0, result.output
    _, loaded = npgpt.load(tmp_path / "half", dtype=None)
    for name, value in params.items():
        assert loaded[name].dtype == np.float16
        np.testing.assert_array_equal(loaded[name], value.astype(np.float16))


def info_rows(stdout):
    """{key: value} from info's two columns (keys padded to 14 characters)."""
    return {line[:14].strip(): line[14:] for line in stdout.splitlines()}


def test_info_describes_each_format(sources, tmp_path):
    run("convert", sources / "openai", tmp_path / "npgpt", "--dtype", "float16")
    described = {name: run("info", sources / name) for name in ("openai", "hf")}
    described["npgpt"] = run("info", tmp_path / "npgpt")
    for result in described.values():
        assert result.exit_code == 0, result.output
    rows = {name: info_rows(result.stdout) for name, result in described.items()}
    assert rows["openai"]["format"] == "OpenAI TensorFlow checkpoint"
    assert rows["hf"]["format"] == rows["npgpt"]["format"] == "safetensors (npgpt / Hugging Face)"
    for row in rows.values():
        assert row["parameters"] == f"{num_params(CFG):,}"
        assert row["config"].startswith("vocab_size=61 context_length=16 emb_dim=8 n_heads=2")
    assert rows["openai"]["dtype"] == rows["hf"]["dtype"] == "float32"
    assert rows["npgpt"]["dtype"] == "float16"
    hf_bytes = sum(p.stat().st_size for p in (sources / "hf").iterdir())
    assert rows["hf"]["size on disk"] == f"{hf_bytes / 1e6:.1f} MB in 2 files"
    assert rows["openai"]["size on disk"].endswith("MB in 4 files")


def test_info_of_a_bare_weights_file(sources):
    result = run("info", sources / "hf/model.safetensors")
    assert result.exit_code == 0, result.output
    assert "in 1 file\n" in result.stdout


def test_convert_refuses_to_overwrite_unasked(sources, params, tmp_path):
    npgpt.save(tmp_path, CFG, init_params(CFG, seed=99))
    assert_user_error(run("convert", sources / "hf", tmp_path), "already holds", "--overwrite")
    result = run("convert", sources / "hf", tmp_path, "--overwrite")
    assert result.exit_code == 0, result.output
    _, loaded = npgpt.load(tmp_path)
    np.testing.assert_array_equal(loaded["wte.weight"], params["wte.weight"])


@pytest.mark.parametrize(
    "dtype, message",
    [("bfloat16", "NumPy has no bfloat16"), ("int8", "choose float32, float16, float64")],
)
def test_convert_unsupported_dtype(sources, tmp_path, dtype, message):
    assert_user_error(run("convert", sources / "hf", tmp_path / "x", "--dtype", dtype), message)
    assert not (tmp_path / "x").exists()


def test_missing_source(tmp_path):
    assert_user_error(run("convert", tmp_path / "absent", tmp_path / "x"), "no such file")
    assert_user_error(run("info", tmp_path / "absent"), "no such file")


def test_corrupt_sources_are_one_line(sources, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    raw = (sources / "hf/model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    write_config(bad / "config.json", CFG)
    assert_user_error(run("info", bad), "truncated or corrupt")
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "model.safetensors").write_bytes(raw)
    write_config(wrong / "config.json", CFG.replace(n_layers=3))
    assert_user_error(run("convert", wrong, tmp_path / "x"), "missing keys (12)")
