"""GPTConfig: preset sizes, validation, and its two dict forms (npgpt's and Hugging Face's).
Writing and reading `config.json` is tested with the checkpoint, in test_checkpoint.py."""

import json

import pytest

from npgpt.config import PRESETS, ConfigError, GPTConfig
from npgpt.names import num_params, param_shapes

# Parameter counts of OpenAI's released GPT-2 models (head tied to wte, so counted once).
RELEASED_SIZES = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}


@pytest.mark.parametrize("name", sorted(RELEASED_SIZES))
def test_preset_parameter_counts(name):
    assert num_params(GPTConfig.preset(name)) == RELEASED_SIZES[name]


def test_gpt2_count_by_hand():
    """124,439,808 = wte + wpe + 12 blocks + ln_f, each block 12 C^2 + 13 C."""
    V, T, C, L = 50257, 1024, 768, 12
    assert V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C == 124_439_808
    assert num_params(PRESETS["gpt2"]) == 124_439_808


def test_no_qkv_bias_drops_those_parameters():
    cfg = GPTConfig.preset("tiny", qkv_bias=False)
    assert "h.0.attn.c_attn.bias" not in param_shapes(cfg)
    assert num_params(GPTConfig.preset("tiny")) - num_params(cfg) == 2 * 3 * 64


def test_preset_overrides_and_unknown_preset():
    assert GPTConfig.preset("gpt2", n_layers=2).n_layers == 2
    with pytest.raises(ConfigError, match="unknown preset 'gpt3'.*gpt2-medium"):
        GPTConfig.preset("gpt3")


def test_head_dim():
    assert GPTConfig.preset("gpt2").head_dim == 64
    assert GPTConfig.preset("gpt2-xl").head_dim == 64


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(emb_dim=100, n_heads=12), r"emb_dim \(100\) must be divisible by n_heads \(12\)"),
        (dict(n_layers=0), "n_layers must be a positive integer, got 0"),
        (dict(vocab_size=-5), "vocab_size must be a positive integer"),
        (dict(context_length=1.5), "context_length must be a positive integer, got 1.5"),
        (dict(emb_dim=True), "emb_dim must be a positive integer, got True"),
        (dict(n_heads=0), "n_heads must be a positive integer"),
        (dict(drop_rate=1.0), r"drop_rate must be in \[0, 1\), got 1.0"),
        (dict(drop_rate=-0.1), r"drop_rate must be in \[0, 1\)"),
        (dict(ln_eps=0.0), "ln_eps must be positive"),
        (dict(ln_eps=float("inf")), "ln_eps must be positive and finite, got inf"),
        (dict(ln_eps="1e-5"), "ln_eps must be positive and finite, got '1e-5'"),
        (dict(drop_rate="0.1"), r"drop_rate must be in \[0, 1\), got '0.1'"),
        (dict(qkv_bias="yes"), "qkv_bias must be true or false, got 'yes'"),
    ],
)
def test_validation_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        GPTConfig.preset("tiny").replace(**changes)


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        GPTConfig.preset("tiny").n_layers = 3


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_dict_round_trips(name):
    cfg = GPTConfig.preset(name, qkv_bias=False, ln_eps=1e-6)
    assert GPTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    hf = GPTConfig.preset(name).to_hf()
    assert hf["n_embd"] == PRESETS[name].emb_dim and hf["n_layer"] == PRESETS[name].n_layers
    assert hf["activation_function"] == "gelu_new" and hf["model_type"] == "gpt2"
    assert GPTConfig.from_hf(json.loads(json.dumps(hf))) == GPTConfig.preset(name)


def test_hf_config_without_qkv_bias_round_trips():
    cfg = GPTConfig.preset("tiny", qkv_bias=False)
    assert GPTConfig.from_hf(cfg.to_hf()) == cfg


def test_hf_config_as_transformers_writes_it():
    """The fields of the released gpt2 config.json that npgpt reads."""
    hf = {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": 1024,
        "n_embd": 768,
        "n_head": 12,
        "n_layer": 12,
        "n_positions": 1024,
        "resid_pdrop": 0.1,
        "vocab_size": 50257,
    }
    assert GPTConfig.from_hf(hf) == GPTConfig.preset("gpt2", drop_rate=0.1)


@pytest.mark.parametrize("activation", ["gelu", "relu", "gelu_pytorch_tanh"])
def test_refuses_other_activations(activation):
    hf = GPTConfig.preset("tiny").to_hf() | {"activation_function": activation}
    with pytest.raises(ConfigError, match=f"activation_function '{activation}' is not supported"):
        GPTConfig.from_hf(hf)


def test_refuses_other_mlp_width():
    hf = GPTConfig.preset("tiny").to_hf() | {"n_inner": 100}
    with pytest.raises(ConfigError, match="n_inner 100 is not supported"):
        GPTConfig.from_hf(hf)


def test_hf_config_missing_key():
    hf = GPTConfig.preset("tiny").to_hf()
    del hf["n_head"]
    with pytest.raises(ConfigError, match="missing the key 'n_head'"):
        GPTConfig.from_hf(hf)
