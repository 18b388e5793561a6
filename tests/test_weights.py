"""`npgpt.load` across formats without TensorFlow: OpenAI checkpoints through the NumPy reader,
Hugging Face directories in both key styles, pytorch_model.bin through
torch.load(weights_only=True), and a clear error for every missing, unexpected, mis-shaped,
truncated or corrupt input."""

import json
import pickle
import sys

import numpy as np
import pytest
import torch
from hf_files import hf_tensors
from safetensors.numpy import save_file

from npgpt.config import GPTConfig
from npgpt.model import init_params
from npgpt.names import param_shapes
from npgpt.weights import tf_bundle
from npgpt.weights.check import CheckpointError
from npgpt.weights.checkpoint import load, save
from npgpt.weights.crc32c import crc32c, crc32c_bytewise
from npgpt.weights.formats import detect_format, write_config
from npgpt.weights.openai import openai_name, openai_shape, save_openai

CFG = GPTConfig(vocab_size=53, context_length=16, emb_dim=8, n_heads=2, n_layers=2)
DATA = "model.ckpt.data-00000-of-00001"


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, seed=11)


@pytest.fixture
def openai_dir(tmp_path, params):
    save_openai(tmp_path / "124M", CFG, params, writer="numpy")
    return tmp_path / "124M"


def assert_same(loaded, params):
    assert list(loaded) == list(param_shapes(CFG))
    for name, value in params.items():
        assert loaded[name].dtype == value.dtype, name
        assert loaded[name].tobytes() == value.tobytes(), name


def openai_tensors(params):
    return {
        openai_name(name): params[name].reshape(openai_shape(name, shape))
        for name, shape in param_shapes(CFG).items()
    }


@pytest.mark.parametrize("length", [0, 1, 3, 4, 5, 255, 256, 257, 1000, 256 * 4096 + 17])
def test_fast_crc32c_equals_the_bytewise_loop(length):
    data = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8).tobytes()
    assert crc32c(data) == crc32c_bytewise(data)


# --- OpenAI checkpoints, NumPy reader -------------------------------------------------------


def test_openai_dir_loads_through_the_numpy_reader(openai_dir, params):
    assert detect_format(openai_dir) == ("openai-tf", openai_dir)
    assert detect_format(openai_dir / "model.ckpt.index") == ("openai-tf", openai_dir)
    config, loaded = load(openai_dir, tf_reader="numpy")
    assert config == CFG
    assert_same(loaded, params)
    assert json.loads((openai_dir / "hparams.json").read_text()) == {
        "n_vocab": 53,
        "n_ctx": 16,
        "n_embd": 8,
        "n_head": 2,
        "n_layer": 2,
    }


def test_without_tensorflow_the_tf_reader_names_the_install(openai_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # makes `import tensorflow` fail
    with pytest.raises(CheckpointError, match=r'pip install -e "\.\[tf\]".*reader="numpy"'):
        load(openai_dir, tf_reader="tensorflow")


def test_openai_key_and_shape_problems_are_all_listed(tmp_path, params):
    tensors = openai_tensors(params)
    del tensors["model/ln_f/g"]
    tensors["model/h0/attn/c_proj/w"] = np.zeros((1, 8, 9), np.float32)
    tensors["model/h0/attn/rotary"] = np.zeros(3, np.float32)
    save_openai(tmp_path, CFG, params)  # hparams.json and checkpoint; tensors replaced below
    tf_bundle.write_bundle(tmp_path / "model.ckpt", tensors)
    with pytest.raises(CheckpointError) as err:
        load(tmp_path, tf_reader="numpy")
    message = str(err.value)
    assert "missing keys (1): ln_f.weight" in message
    assert "unexpected keys (1): model/h0/attn/rotary" in message
    assert "h.0.attn.c_proj.weight: (8, 9) in file, (8, 8) expected" in message


def test_hparams_that_do_not_match_the_tensors(openai_dir):
    (openai_dir / "hparams.json").write_text(
        json.dumps({"n_vocab": 53, "n_ctx": 16, "n_embd": 8, "n_head": 2, "n_layer": 3})
    )
    with pytest.raises(CheckpointError, match=r"missing keys \(12\): h\.2\.ln_1\.weight"):
        load(openai_dir, tf_reader="numpy")


def test_hparams_missing_a_key(openai_dir):
    (openai_dir / "hparams.json").write_text(json.dumps({"n_vocab": 53, "n_ctx": 16}))
    with pytest.raises(CheckpointError, match="hparams.json: missing the key 'n_embd'"):
        load(openai_dir, tf_reader="numpy")


def damage_data(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def truncate(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda d: truncate(d / DATA, -1), r"the file has \d+ bytes \(truncated; download"),
        (lambda d: truncate(d / DATA, 0), r"the file has 0 bytes \(truncated"),
        (lambda d: damage_data(d / DATA), "fails its CRC-32C check"),
        (lambda d: (d / DATA).unlink(), "data file is needed"),
        (lambda d: damage_data(d / "model.ckpt.index"), "CRC-32C check|malformed|runs past"),
        (lambda d: truncate(d / "model.ckpt.index", -10), "no table magic number"),
        (lambda d: truncate(d / "model.ckpt.index", 20), "too short for a TensorFlow index"),
        (lambda d: (d / "model.ckpt.index").write_bytes(b"x" * 100), "no table magic"),
        (lambda d: (d / "model.ckpt.index").unlink(), "model.ckpt.index: missing"),
    ],
    ids=[
        "data-one-byte-short",
        "data-empty",
        "data-bit-flip",
        "data-missing",
        "index-bit-flip",
        "index-truncated",
        "index-stub",
        "index-garbage",
        "index-missing",
    ],
)
def test_truncated_or_corrupt_openai_checkpoint(openai_dir, damage, expected):
    damage(openai_dir)
    with pytest.raises(CheckpointError, match=expected) as err:
        load(openai_dir, tf_reader="numpy")
    assert str(openai_dir) in str(err.value)
    assert "\n" not in str(err.value)


# --- Hugging Face and npgpt directories -----------------------------------------------------


def saved_pretrained(params, prefixed):
    """prefixed: what GPT2LMHeadModel writes (with the tied head); bare: what GPT2Model writes.
    Both with the causal-mask buffers older transformers versions saved."""
    return hf_tensors(params, prefixed=prefixed, lm_head=prefixed, mask_buffers_for=CFG)


HUB_CONFIG = {  # the fields of openai-community/gpt2's config.json, at this model's size
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.1,
    "bos_token_id": 50256,
    "embd_pdrop": 0.1,
    "eos_token_id": 50256,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_ctx": 16,
    "n_embd": 8,
    "n_head": 2,
    "n_layer": 2,
    "n_positions": 16,
    "resid_pdrop": 0.1,
    "summary_activation": None,
    "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
    "vocab_size": 53,
}


def test_a_hub_style_directory(tmp_path, params):
    save_file(saved_pretrained(params, prefixed=False), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(HUB_CONFIG))
    config, loaded = load(tmp_path)
    assert config == CFG.replace(drop_rate=0.1)
    assert_same(loaded, params)


@pytest.mark.parametrize("prefixed", [True, False], ids=["transformer.-keys", "bare-keys"])
def test_hf_safetensors_dir_in_both_key_styles(tmp_path, params, prefixed):
    save_file(saved_pretrained(params, prefixed), str(tmp_path / "model.safetensors"))
    write_config(tmp_path / "config.json", CFG)
    assert detect_format(tmp_path) == ("safetensors", tmp_path / "model.safetensors")
    config, loaded = load(tmp_path)
    assert config == CFG
    assert_same(loaded, params)


@pytest.mark.parametrize("prefixed", [True, False], ids=["transformer.-keys", "bare-keys"])
def test_pytorch_bin_in_both_key_styles(tmp_path, params, prefixed):
    state = {k: torch.from_numpy(v.copy()) for k, v in saved_pretrained(params, prefixed).items()}
    torch.save(state, tmp_path / "pytorch_model.bin")
    write_config(tmp_path / "config.json", CFG)
    assert detect_format(tmp_path) == ("pytorch", tmp_path / "pytorch_model.bin")
    config, loaded = load(tmp_path)
    assert config == CFG
    assert_same(loaded, params)


class Payload:
    """Stands in for arbitrary code in a pickle: weights_only refuses to build it."""

    def __reduce__(self):
        return (print, ("this would run on load",))


def test_pytorch_bin_holding_code_is_refused(tmp_path, params, capfd):
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"wte.weight": Payload()}, f, protocol=2)
    write_config(tmp_path / "config.json", CFG)
    with pytest.raises(CheckpointError, match="not a readable PyTorch weights file.*Unpickl"):
        load(tmp_path)
    assert "this would run on load" not in capfd.readouterr().out


def test_truncated_pytorch_bin(tmp_path, params):
    torch.save({k: torch.from_numpy(v) for k, v in params.items()}, tmp_path / "w.bin")
    truncate(tmp_path / "w.bin", -200)
    write_config(tmp_path / "config.json", CFG)
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load(tmp_path / "w.bin")
    assert str(tmp_path / "w.bin") in str(err.value)


def test_truncated_safetensors_through_npgpt_load(tmp_path, params):
    save(tmp_path, CFG, params)
    truncate(tmp_path / "model.safetensors", -1)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load(tmp_path)


def test_hf_key_and_shape_problems_are_all_listed(tmp_path, params):
    tensors = saved_pretrained(params, prefixed=True)
    del tensors["transformer.h.1.ln_2.bias"]
    tensors["transformer.wpe.weight"] = np.zeros((32, 8), np.float32)
    tensors["transformer.h.0.attn.q_norm.weight"] = np.zeros(8, np.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    write_config(tmp_path / "config.json", CFG)
    with pytest.raises(CheckpointError) as err:
        load(tmp_path)
    message = str(err.value)
    assert "missing keys (1): h.1.ln_2.bias" in message
    assert "unexpected keys (1): h.0.attn.q_norm.weight" in message
    assert "wpe.weight: (32, 16) in file" not in message
    assert "wpe.weight: (32, 8) in file, (16, 8) expected" in message


def test_bare_weights_without_config_must_be_a_gpt2_size(tmp_path, params):
    save_file(dict(params), str(tmp_path / "weights.safetensors"))
    with pytest.raises(CheckpointError, match="no config.json beside it.*not those of any GPT-2"):
        load(tmp_path / "weights.safetensors")


def test_what_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="neither a GPT-2 checkpoint directory") as err:
        load(tmp_path)
    assert "nor a training run directory (a checkpoint/ directory" in str(err.value)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="unknown weights file"):
        load(tmp_path / "notes.txt")
    with pytest.raises(CheckpointError, match="no such file or directory"):
        load(tmp_path / "absent")


def test_bfloat16_safetensors_refused_even_once_ml_dtypes_is_loaded(tmp_path, params):
    """TensorFlow and JAX import ml_dtypes, after which safetensors returns bfloat16 arrays
    instead of failing; npgpt refuses them either way."""
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes comes with tensorflow")
    tensors = dict(params) | {"ln_f.bias": params["ln_f.bias"].astype(ml_dtypes.bfloat16)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    write_config(tmp_path / "config.json", CFG)
    with pytest.raises(CheckpointError, match=r"dtype NumPy cannot represent \(ln_f.bias: bfl"):
        load(tmp_path)


# --- one check for every format ------------------------------------------------------------


def write_in_format(fmt, directory, params):
    """`params` as the named format writes them (under its own names)."""
    directory.mkdir()
    if fmt == "openai-tf":
        tensors = {openai_name(n): v.reshape(openai_shape(n, v.shape)) for n, v in params.items()}
        save_openai(directory, CFG, init_params(CFG))  # hparams.json and checkpoint
        tf_bundle.write_bundle(directory / "model.ckpt", tensors)
        return directory
    tensors = hf_tensors(params)
    if fmt == "pytorch":
        torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, directory / "w.bin")
        weights = directory / "w.bin"
    else:
        save_file(tensors, str(directory / "model.safetensors"))
        weights = directory
    write_config(directory / "config.json", CFG)
    return weights


@pytest.mark.parametrize("fmt", ["safetensors", "pytorch", "openai-tf"])
def test_every_format_passes_the_same_check(tmp_path, params, fmt):
    bad = dict(params) | {"ln_f.bias": np.arange(8, dtype=np.int32)}
    del bad["h.1.ln_2.weight"]
    bad["h.0.mlp.c_fc.bias"] = np.zeros(5, np.float32)
    with pytest.raises(CheckpointError) as err:
        load(write_in_format(fmt, tmp_path / fmt, bad), tf_reader="numpy")
    message = str(err.value)
    assert "missing keys (1): h.1.ln_2.weight" in message
    assert "h.0.mlp.c_fc.bias: (5,) in file, (32,) expected" in message
    assert "not floating point (1): ln_f.bias: int32" in message


def test_save_refuses_what_load_would_refuse(tmp_path, params):
    with pytest.raises(CheckpointError, match="not floating point.*ln_f.bias: int64"):
        save(tmp_path, CFG, dict(params) | {"ln_f.bias": np.arange(8)})
    with pytest.raises(CheckpointError, match="not floating point.*wte.weight: int32"):
        save_openai(tmp_path, CFG, dict(params) | {"wte.weight": np.zeros((53, 8), np.int32)})
    assert list(tmp_path.iterdir()) == []
