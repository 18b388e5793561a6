"""What Hypothesis draws: a model, its parameters, a batch, a dtype and dropout masks.

    config      n_layers 1-3, n_heads 1-4, head size 1-16 (emb_dim = heads * head size),
                context 1-24, vocab 1-64 or GPT-2's 50257, qkv_bias on/off. emb_dim 1 and 2
                are left out: LayerNorm's normalised output keeps C - 2 degrees of freedom, so
                over C = 1 channel it is 0 and over C = 2 it is +-(1, -1) whatever the input
                (up to eps); every gradient through it is then 0 up to eps, what is computed is
                cancellation noise (exactly 0 in npgpt, ~1e-13 in torch at C = 1; 1e-3 relative
                in float32 at C = 2), and no relative error against it means anything
    batch       B 1-3, T 1-context, token ids in [0, V), targets in [0, V) with some -100
                (ignored), at least one not ignored (the mean loss needs a term)
    dtype       float64 or float32, the same in both backends
    dropout     rate 0, 0.1 or 0.5; when > 0 the model is in training mode and every mask comes
                from `npgpt.model.draw_dropout_masks` with a drawn seed, and the very same boolean
                arrays go to both backends (`dropout_masks=`, by npgpt.names' mask names)
    parameters  seeded normals: weights and biases N(0, (0.02 * scale)^2), LayerNorm gains
                1 + N(0, 0.1^2) and shifts N(0, 0.1^2); scale 0.01 (tiny activations: LayerNorm
                runs on inputs far below its eps), 1 (GPT-2's init), or 25 (weights of std 0.5:
                saturated softmax and GELU, logits in the hundreds)

Every random array comes from a seed that Hypothesis draws, so a failing example shrinks to
small seeds, sizes and ids, and prints as a handful of integers that reproduce it.
"""

import dataclasses

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from npgpt.config import GPT2_VOCAB_SIZE, GPTConfig
from npgpt.crossentropy import IGNORE_INDEX
from npgpt.model import draw_dropout_masks
from npgpt.names import param_shapes

SCALES = (1.0, 0.01, 25.0)  # shrinks towards GPT-2's own init scale
DROP_RATES = (0.0, 0.1, 0.5)
DTYPES = ("float64", "float32")


def random_params(config, seed, scale=1.0, dtype=np.float64):
    """Every parameter drawn from `seed` (see the module docstring for the distributions)."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(config).items():
        if "ln_" in name and name.endswith("weight"):
            value = 1.0 + rng.normal(0.0, 0.1, shape)
        elif "ln_" in name:
            value = rng.normal(0.0, 0.1, shape)
        else:
            value = rng.normal(0.0, 0.02 * scale, shape)
        params[name] = value.astype(dtype)
    return params


@dataclasses.dataclass(frozen=True)
class Case:
    """One drawn example; `params()` and `masks` rebuild the same arrays every time."""

    config: GPTConfig
    idx: np.ndarray  # (B, T) token ids
    targets: np.ndarray  # (B, T) token ids or -100
    dtype: str
    param_seed: int
    scale: float
    mask_seed: int

    @property
    def train(self):
        return self.config.drop_rate > 0

    def params(self, dtype=None):
        return random_params(self.config, self.param_seed, self.scale, dtype or self.dtype)

    @property
    def masks(self):
        if not self.train:
            return None
        B, T = self.idx.shape
        return draw_dropout_masks(self.config, B, T, np.random.default_rng(self.mask_seed))


@st.composite
def configs(draw, dropout=True, min_emb_dim=3):
    n_heads = draw(st.integers(1, 4))
    head_size = draw(st.integers(-(-min_emb_dim // n_heads), 16))  # emb_dim >= min_emb_dim
    return GPTConfig(
        vocab_size=draw(st.one_of(st.integers(1, 64), st.just(GPT2_VOCAB_SIZE))),
        context_length=draw(st.integers(1, 24)),
        emb_dim=n_heads * head_size,
        n_heads=n_heads,
        n_layers=draw(st.integers(1, 3)),
        drop_rate=draw(st.sampled_from(DROP_RATES)) if dropout else 0.0,
        qkv_bias=draw(st.booleans()),
    )


@st.composite
def cases(draw, dropout=True, dtypes=DTYPES, scales=SCALES, min_emb_dim=3):
    """A `Case`. `dropout=False` keeps drop_rate at 0 (for sdpa, which cannot take an external
    attention-dropout mask); `dtypes`, `scales` and `min_emb_dim` narrow the draws (the GPU
    properties, see parity.tolerances)."""
    config = draw(configs(dropout=dropout, min_emb_dim=min_emb_dim))
    B = draw(st.integers(1, 3))
    T = draw(st.integers(1, config.context_length))
    token = st.integers(0, config.vocab_size - 1)
    idx = draw(arrays(np.int64, (B, T), elements=token))
    targets = draw(arrays(np.int64, (B, T), elements=st.one_of(token, st.just(IGNORE_INDEX))))
    targets.flat[draw(st.integers(0, B * T - 1))] = draw(token)  # at least one loss term
    return Case(
        config=config,
        idx=idx,
        targets=targets,
        dtype=draw(st.sampled_from(dtypes)),
        param_seed=draw(st.integers(0, 2**32 - 1)),
        scale=draw(st.sampled_from(scales)),
        mask_seed=draw(st.integers(0, 2**32 - 1)),
    )
