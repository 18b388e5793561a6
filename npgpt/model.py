"""GPT-2: embeddings, a stack of transformer blocks, a final LayerNorm, and a head tied to wte.

    x      = dropout(wte[idx] + wpe[positions])                     `emb`     (B, T, C)
    x      = block_i(x)  for i = 0 .. L-1                           `h.{i}.out`
    logits = ln_f(x) @ wte^T                                        `logits`  (B, T, V)
    loss   = cross_entropy(logits, targets)

`forward` keeps every intermediate in `cache`, under the canonical names of `npgpt.names`
(`cache["activations"]`); `backward(cache)` walks the same steps in reverse and returns one
gradient per parameter, and leaves the gradient of every named activation in
`cache["activation_grads"]`. The head reuses wte, so wte's gradient is the sum of two paths:
the head's, dlogits^T @ ln_f (V, C), into which the embedding's backward adds its rows.

>>> import numpy as np
>>> from npgpt.config import GPTConfig
>>> cfg = GPTConfig.preset("tiny")
>>> params = init_params(cfg, seed=0)
>>> idx = np.array([[1, 2, 3]])
>>> logits, loss, cache = forward(params, cfg, idx, targets=np.array([[2, 3, 4]]))
>>> logits.shape, logits.dtype, bool(abs(loss - np.log(cfg.vocab_size)) < 0.1)
((1, 3, 50257), dtype('float32'), True)
>>> grads = backward(cache)
>>> sorted(grads) == sorted(params)
True
"""

import numpy as np

from npgpt import block, crossentropy, dropout, embedding, layernorm, linear
from npgpt.names import dropout_mask_shapes, param_shapes

INIT_STD = 0.02
RESIDUAL_PROJECTIONS = ("attn.c_proj.weight", "mlp.c_proj.weight")


def init_params(config, seed=0, dtype=np.float32):
    """GPT-2's initialisation: weights ~ N(0, 0.02), biases 0, LayerNorm scales 1; the two
    projections that write into the residual stream are scaled by 1/sqrt(2 L) so that the
    stream's variance does not grow with depth."""
    rng = np.random.default_rng(seed)
    residual_std = INIT_STD / np.sqrt(2 * config.n_layers)
    params = {}
    for name, shape in param_shapes(config).items():
        if "ln_" in name:  # LayerNorm scale and shift
            value = np.ones(shape) if name.endswith("weight") else np.zeros(shape)
        elif name.endswith("bias"):
            value = np.zeros(shape)
        else:
            std = residual_std if name.endswith(RESIDUAL_PROJECTIONS) else INIT_STD
            value = rng.normal(0.0, std, size=shape)
        params[name] = value.astype(dtype)
    return params


def block_params(params, i):
    prefix = f"h.{i}."
    return {name[len(prefix) :]: value for name, value in params.items() if name.startswith(prefix)}


def check_tokens(idx, config, past_len=0):
    idx = np.asarray(idx)
    if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"idx must be a (B, T) array of token ids, got {idx.dtype} {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= config.vocab_size):
        raise ValueError(
            f"token ids must be in [0, {config.vocab_size}); got {idx.min()}..{idx.max()}"
        )
    if past_len + idx.shape[1] > config.context_length:
        raise ValueError(
            f"sequence of {past_len + idx.shape[1]} tokens is longer than the model's "
            f"context_length {config.context_length}"
        )
    return idx


def draw_dropout_masks(config, batch_size, seq_len, rng, given=None):
    """Every mask a training forward needs: taken from `given` by name, else drawn from `rng`."""
    given = given or {}
    masks = {}
    for name, shape in dropout_mask_shapes(config, batch_size, seq_len).items():
        if name in given:
            masks[name] = np.asarray(given[name], dtype=bool)
        elif rng is not None:
            masks[name] = dropout.make_mask(rng, shape, config.drop_rate)
        else:
            raise ValueError(
                f"dropout mask {name!r} was not given and no rng was passed to draw it"
            )
    return masks


def forward(
    params, config, idx, targets=None, *, train=False, rng=None, dropout_masks=None, past_kv=None
):
    """Returns (logits, loss or None, cache). With `train=True` and drop_rate > 0, dropout is on,
    its masks taken from `dropout_masks` by name or drawn from `rng`. `past_kv` (generation only)
    holds each layer's cached (k, v); the new ones are in cache["present_kv"]."""
    past_len = 0 if past_kv is None else past_kv[0][0].shape[2]
    idx = check_tokens(idx, config, past_len)
    if targets is not None:
        targets = np.asarray(targets)
        if targets.shape != idx.shape:
            raise ValueError(f"targets have shape {targets.shape}, but idx has {idx.shape}")
    B, T = idx.shape
    p_drop = config.drop_rate
    masks = {}
    if train and p_drop > 0:
        masks = draw_dropout_masks(config, B, T, rng, dropout_masks)

    acts, blocks, present_kv = {}, [], []
    emb, emb_cache = embedding.forward(idx, params["wte.weight"], params["wpe.weight"], past_len)
    acts["emb"], emb_drop_cache = dropout.forward(emb, p_drop, masks.get("emb.drop"))
    x = acts["emb"]
    for i in range(config.n_layers):
        keep = {
            name[len(f"h.{i}.") :]: m for name, m in masks.items() if name.startswith(f"h.{i}.")
        }
        layer_past = None if past_kv is None else past_kv[i]
        x, block_cache = block.forward(
            x, block_params(params, i), config.n_heads, config.ln_eps, p_drop, keep, layer_past
        )
        acts |= {f"h.{i}.{name}": value for name, value in block_cache["acts"].items()}
        blocks.append(block_cache)
        present_kv.append(block_cache["present_kv"])
    acts["ln_f"], ln_f_cache = layernorm.forward(
        x, params["ln_f.weight"], params["ln_f.bias"], config.ln_eps
    )
    acts["logits"], _ = linear.forward(acts["ln_f"], params["wte.weight"].T)  # tied head

    loss = ce_cache = None
    if targets is not None:
        loss, ce_cache = crossentropy.forward(acts["logits"], targets)
    cache = dict(
        config=config,
        emb=emb_cache,
        emb_drop=emb_drop_cache,
        blocks=blocks,
        ln_f=ln_f_cache,
        wte=params["wte.weight"],
        ce=ce_cache,
        activations=acts,
        present_kv=present_kv,
        masks=masks,
    )
    return acts["logits"], loss, cache


def backward(cache):
    """Gradient of the loss with respect to every parameter, keyed like `params`."""
    if cache["ce"] is None:
        raise ValueError("backward needs a loss: call forward with targets")
    config = cache["config"]
    grads, d = {}, {}
    d["logits"] = crossentropy.backward(1.0, cache["ce"])
    # The tied head, logits = ln_f @ wte^T, by hand: linear.backward would give the weight's
    # gradient as (C, V), wte^T's layout, and adding that into wte's (V, C) is a slow strided pass.
    wte, ln_f = cache["wte"], cache["activations"]["ln_f"]
    V, C = wte.shape
    dlogits_2d = d["logits"].reshape(-1, V)  # (N, V)
    d["ln_f"] = (dlogits_2d @ wte).reshape(ln_f.shape)  # (B, T, C)
    dwte = dlogits_2d.T @ ln_f.reshape(-1, C)  # (V, C): the head's share of wte's gradient
    dx, grads["ln_f.weight"], grads["ln_f.bias"] = layernorm.backward(d["ln_f"], cache["ln_f"])
    for i in reversed(range(config.n_layers)):
        dx, block_grads, block_act_grads = block.backward(dx, cache["blocks"][i])
        grads |= {f"h.{i}.{name}": g for name, g in block_grads.items()}
        d |= {f"h.{i}.{name}": g for name, g in block_act_grads.items()}
    d["emb"] = dx
    demb = dropout.backward(dx, cache["emb_drop"])
    grads["wte.weight"], grads["wpe.weight"] = embedding.backward(demb, cache["emb"], dwte)
    cache["activation_grads"] = d
    return {name: grads[name] for name in param_shapes(config)}
