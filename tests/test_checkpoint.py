"""Checkpoints: exact round trips, Hugging Face key forms, config.json, clear errors, and atomic
writes."""

import json
import struct

import numpy as np
import pytest
from hf_files import hf_tensors
from safetensors.numpy import load_file, save_file

from npgpt.config import PRESETS, GPTConfig
from npgpt.model import init_params
from npgpt.weights import checkpoint
from npgpt.weights.atomic import atomic_write, atomic_write_text
from npgpt.weights.check import CheckpointError
from npgpt.weights.checkpoint import load, save
from npgpt.weights.formats import read_config, write_config

CFG = GPTConfig(vocab_size=37, context_length=8, emb_dim=8, n_heads=2, n_layers=2)


@pytest.fixture
def params():
    return init_params(CFG, seed=3)


def write_tensors(directory, tensors, config=CFG):
    directory.mkdir(exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"))
    write_config(directory / "config.json", config)
    return directory


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    params = init_params(CFG, seed=3, dtype=dtype)
    save(tmp_path / "ckpt", CFG, params)
    config, loaded = load(tmp_path / "ckpt", dtype=dtype)
    assert config == CFG
    assert list(loaded) == list(params)
    for name, value in params.items():
        assert loaded[name].dtype == dtype
        assert loaded[name].tobytes() == value.tobytes(), name
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]


def test_load_a_bare_weights_file_and_cast(tmp_path, params):
    save(tmp_path, CFG, params)
    _, loaded = load(tmp_path / "model.safetensors", dtype=np.float64)
    assert loaded["wte.weight"].dtype == np.float64
    np.testing.assert_array_equal(loaded["wte.weight"], params["wte.weight"])


def test_hf_key_forms_are_accepted(tmp_path, params):
    """What `GPT2LMHeadModel.save_pretrained` writes: `transformer.` prefixes, the causal-mask
    buffers (older versions), and `lm_head.weight` when it is the tied wte."""
    tensors = hf_tensors(params, lm_head=True, mask_buffers_for=CFG)
    _, loaded = load(write_tensors(tmp_path / "hf", tensors))
    assert sorted(loaded) == sorted(params)
    for name, value in params.items():
        np.testing.assert_array_equal(loaded[name], value)


def test_untied_lm_head_is_refused(tmp_path, params):
    tensors = params | {"lm_head.weight": params["wte.weight"] + 1.0}
    with pytest.raises(CheckpointError, match="lm_head.weight differs from wte.weight"):
        load(write_tensors(tmp_path / "untied", tensors))


def test_key_and_shape_problems_are_all_listed(tmp_path, params):
    tensors = dict(params)
    del tensors["h.1.mlp.c_fc.bias"], tensors["ln_f.weight"]
    tensors["h.0.attn.c_proj.weight"] = np.zeros((8, 9), np.float32)
    tensors["h.5.ln_1.weight"] = np.zeros(8, np.float32)
    with pytest.raises(CheckpointError) as err:
        load(write_tensors(tmp_path / "bad", tensors))
    message = str(err.value)
    assert "missing keys (2): h.1.mlp.c_fc.bias, ln_f.weight" in message
    assert "unexpected keys (1): h.5.ln_1.weight" in message
    assert "h.0.attn.c_proj.weight: (8, 9) in file, (8, 8) expected" in message
    assert str(tmp_path / "bad" / "model.safetensors") in message


def test_config_that_does_not_match_the_weights(tmp_path, params):
    directory = write_tensors(tmp_path / "deeper", params, CFG.replace(n_layers=3))
    with pytest.raises(CheckpointError, match=r"missing keys \(12\): h\.2\.ln_1\.weight"):
        load(directory)


def test_save_refuses_incomplete_params(tmp_path, params):
    del params["wpe.weight"]
    with pytest.raises(CheckpointError, match="missing keys.*wpe.weight"):
        save(tmp_path, CFG, params)
    assert not (tmp_path / "model.safetensors").exists()


def test_integer_weights_are_refused(tmp_path, params):
    tensors = params | {"ln_f.bias": np.zeros(8, np.int32)}
    with pytest.raises(CheckpointError, match="floating point.*ln_f.bias: int32"):
        load(write_tensors(tmp_path / "ints", tensors))


def corruptions(raw):
    header_len = struct.unpack("<Q", raw[:8])[0]
    return {
        "empty": b"",
        "header cut short": raw[:20],
        "truncated data": raw[: len(raw) // 2],
        "one byte missing": raw[:-1],
        "garbage": b"\xff" * 100,
        "absurd header length": struct.pack("<Q", 10**12) + raw[8:],
        "broken header json": raw[:8] + b"{" * header_len + raw[8 + header_len :],
    }


@pytest.mark.parametrize("kind", sorted(corruptions(b"\0" * 64)))
def test_corrupt_safetensors_is_a_checkpoint_error(tmp_path, params, kind):
    save(tmp_path, CFG, params)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(corruptions(weights.read_bytes())[kind])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load(tmp_path)
    assert str(weights) in str(err.value)


def test_dtype_numpy_cannot_read(tmp_path):
    header = json.dumps({"wte.weight": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}})
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 4)
    write_config(tmp_path / "config.json", CFG)
    with pytest.raises(CheckpointError, match="dtype NumPy cannot represent"):
        load(tmp_path)


def test_missing_files(tmp_path, params):
    with pytest.raises(CheckpointError, match="neither a GPT-2 checkpoint directory"):
        load(tmp_path)
    save(tmp_path, CFG, params)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json beside it"):
        load(tmp_path)


def test_bad_config_json_is_a_checkpoint_error(tmp_path, params):
    save(tmp_path, CFG, params)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        load(tmp_path)


def test_written_checkpoint_is_hf_shaped(tmp_path, params):
    save(tmp_path, CFG, params)
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["n_layer"] == 2 and hf["vocab_size"] == 37
    stored = load_file(str(tmp_path / "model.safetensors"))
    assert stored["h.0.attn.c_attn.weight"].shape == (8, 24)  # Conv1D layout: (in, out)


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "state.bin"
    path.write_bytes(b"old contents")

    def crash_midway(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half of the new")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        atomic_write(path, crash_midway)
    assert path.read_bytes() == b"old contents"
    assert leftovers(tmp_path) == []


def test_atomic_write_replaces_on_success(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert leftovers(tmp_path) == []


def test_save_crash_leaves_the_previous_checkpoint(tmp_path, params, monkeypatch):
    save(tmp_path, CFG, params)
    before = (tmp_path / "model.safetensors").read_bytes()

    def crashing_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(before[: len(before) // 3])
        raise KeyboardInterrupt  # BaseException, like a Ctrl-C mid-write

    monkeypatch.setattr(checkpoint, "save_file", crashing_save_file)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, CFG, init_params(CFG, seed=4))
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert leftovers(tmp_path) == []
    _, loaded = load(tmp_path)
    np.testing.assert_array_equal(loaded["wte.weight"], params["wte.weight"])


# ---- config.json ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_json_round_trips_in_both_forms(name, tmp_path):
    cfg = GPTConfig.preset(name)
    write_config(tmp_path / "config.json", cfg)
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["n_embd"] == cfg.emb_dim and hf["n_layer"] == cfg.n_layers
    assert hf["activation_function"] == "gelu_new" and hf["model_type"] == "gpt2"
    assert read_config(tmp_path / "config.json") == cfg
    npgpt_form = GPTConfig.preset(name, qkv_bias=False, ln_eps=1e-6)
    path = tmp_path / "npgpt.json"
    path.write_text(json.dumps(npgpt_form.to_dict()))
    assert read_config(path) == npgpt_form


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("nope.json", None, "nope.json: no such config file"),
        ("bad.json", "{not json", "bad.json: not valid JSON"),
        (
            "unknown.json",
            json.dumps(GPTConfig().to_dict() | {"n_experts": 8}),
            r"unknown.json: unknown config keys \['n_experts'\]",
        ),
        (
            "invalid.json",
            json.dumps(GPTConfig().to_dict() | {"n_heads": 7}),
            "invalid.json: emb_dim",
        ),
        ("list.json", "[1, 2]", "list.json: holds a JSON list, not an object"),
    ],
)
def test_config_json_errors_name_the_file(tmp_path, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(CheckpointError, match=message):
        read_config(path)
