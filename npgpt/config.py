"""The model's hyper-parameters: one frozen dataclass, its presets, and its dict forms.

A GPT-2 is fully described by seven numbers and two switches:

    vocab_size      V   rows of the token embedding (GPT-2: 50257)
    context_length  T   rows of the position embedding: the longest sequence the model sees
    emb_dim         C   width of the residual stream
    n_heads         H   attention heads; each works on C / H channels
    n_layers        L   transformer blocks
    drop_rate           dropout probability (embeddings, attention probabilities, residuals)
    qkv_bias            whether the fused q/k/v projection has a bias (GPT-2: yes)
    ln_eps              LayerNorm's epsilon (GPT-2: 1e-5)

Two dict forms: `to_dict` under these names, and `to_hf` under the field names of Hugging Face's
GPT-2 `config.json`. This module does no file I/O: `npgpt.weights.formats` writes and reads
`config.json`.

>>> GPTConfig.preset("gpt2").emb_dim
768
>>> GPTConfig.from_hf(GPTConfig.preset("tiny").to_hf()) == GPTConfig.preset("tiny")
True
"""

import dataclasses
import math
import numbers

GPT2_VOCAB_SIZE = 50257


class ConfigError(ValueError):
    """A configuration that cannot describe a GPT-2."""


def is_number(value):
    """A number as a file may hold one: never a bool (true is 1 to Python, not to a person)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_count(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = GPT2_VOCAB_SIZE
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.0
    qkv_bias: bool = True
    ln_eps: float = 1e-5

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.emb_dim % self.n_heads:
            raise ConfigError(
                f"emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads}): "
                f"each head gets emb_dim / n_heads channels"
            )
        # a config.json is data: a string or an infinity where a number belongs is refused here
        if not is_number(self.drop_rate) or not 0.0 <= self.drop_rate < 1.0:
            raise ConfigError(f"drop_rate must be in [0, 1), got {self.drop_rate!r}")
        if not is_number(self.ln_eps) or not 0 < self.ln_eps < math.inf:
            raise ConfigError(f"ln_eps must be positive and finite, got {self.ln_eps!r}")
        if not isinstance(self.qkv_bias, bool):
            raise ConfigError(f"qkv_bias must be true or false, got {self.qkv_bias!r}")

    @property
    def head_dim(self):
        return self.emb_dim // self.n_heads

    @classmethod
    def preset(cls, name, **overrides):
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; known keys are {sorted(known)}")
        return cls(**fields)

    def to_hf(self):
        """The fields of a Hugging Face GPT-2 `config.json` (what `transformers` reads)."""
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": self.vocab_size,
            "n_positions": self.context_length,
            "n_ctx": self.context_length,
            "n_embd": self.emb_dim,
            "n_head": self.n_heads,
            "n_layer": self.n_layers,
            "n_inner": None,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": self.ln_eps,
            "resid_pdrop": self.drop_rate,
            "embd_pdrop": self.drop_rate,
            "attn_pdrop": self.drop_rate,
            "initializer_range": 0.02,
            "bos_token_id": GPT2_VOCAB_SIZE - 1,
            "eos_token_id": GPT2_VOCAB_SIZE - 1,
            "tie_word_embeddings": True,
        } | ({} if self.qkv_bias else {"npgpt_qkv_bias": False})

    @classmethod
    def from_hf(cls, hf):
        """Read a Hugging Face GPT-2 `config.json` dict; refuse what this model cannot run."""
        activation = hf.get("activation_function", "gelu_new")
        if activation != "gelu_new":
            raise ConfigError(
                f"activation_function {activation!r} is not supported: npgpt implements GPT-2's "
                f"tanh-approximated GELU ('gelu_new')"
            )
        n_inner = hf.get("n_inner")
        if n_inner is not None and n_inner != 4 * hf["n_embd"]:
            raise ConfigError(f"n_inner {n_inner} is not supported: the MLP is 4 * n_embd wide")
        try:
            return cls(
                vocab_size=hf["vocab_size"],
                context_length=hf["n_positions"],
                emb_dim=hf["n_embd"],
                n_heads=hf["n_head"],
                n_layers=hf["n_layer"],
                drop_rate=hf.get("resid_pdrop", 0.0),
                qkv_bias=hf.get("npgpt_qkv_bias", True),
                ln_eps=hf.get("layer_norm_epsilon", 1e-5),
            )
        except KeyError as missing:
            raise ConfigError(f"Hugging Face config is missing the key {missing}") from None


PRESETS = {
    "gpt2": GPTConfig(emb_dim=768, n_heads=12, n_layers=12),
    "gpt2-medium": GPTConfig(emb_dim=1024, n_heads=16, n_layers=24),
    "gpt2-large": GPTConfig(emb_dim=1280, n_heads=20, n_layers=36),
    "gpt2-xl": GPTConfig(emb_dim=1600, n_heads=25, n_layers=48),
    "tiny": GPTConfig(context_length=64, emb_dim=64, n_heads=4, n_layers=2),
    "small": GPTConfig(context_length=128, emb_dim=128, n_heads=4, n_layers=4, drop_rate=0.1),
}
