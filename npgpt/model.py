"""GPT-2: embeddings, a stack of transformer blocks, a final LayerNorm, and a head tied to wte.

    x      = dropout(wte[idx] + wpe[positions])                     `emb`     (B, T, C)
    x      = block_i(x)  for i = 0 .. L-1                           `h.{i}.out`
    logits = ln_f(x) @ wte^T                                        `logits`  (B, T, V)
    loss   = cross_entropy(logits, targets)

Training and evaluation. `forward` returns (logits, loss, cache); the cache, a `ModelCache`,
holds every op's cache for the backward pass and every intermediate under its canonical name
of `npgpt.names` (`cache.activations`). `backward(cache)` walks the same steps in reverse and
returns one gradient per parameter; `backward(cache, return_activation_grads=True)` returns
(grads, activation_grads), the gradient of every named activation as well. The head reuses wte,
so wte's gradient is the sum of two paths: the head's, dlogits^T @ ln_f (V, C), into which the
embedding's backward adds its rows.
Backward uses the cache up, as torch's `loss.backward()` frees its graph: it first empties
`cache.activations` (and each layer's), then lets go of each layer's saved arrays once that
layer's gradients are computed, so the gradients take the place of the activations. Read (or
copy) the activations before backward; a second backward needs a fresh forward.

Generation. `decode(params, config, idx, past_kv)` runs new tokens after the ones whose keys
and values `past_kv` holds, and returns (logits, kv): `kv` is the next call's `past_kv`. It
computes what `forward` computes, without dropout, loss or backward cache.

>>> import numpy as np
>>> from npgpt.config import GPTConfig
>>> cfg = GPTConfig.preset("tiny")
>>> params = init_params(cfg, seed=0)
>>> idx = np.array([[1, 2, 3]])
>>> logits, loss, cache = forward(params, cfg, idx, targets=np.array([[2, 3, 4]]))
>>> logits.shape, logits.dtype, bool(abs(loss - np.log(cfg.vocab_size)) < 0.1)
((1, 3, 50257), dtype('float32'), True)
>>> activations = dict(cache.activations)              # kept beyond backward, which uses it up
>>> grads, activation_grads = backward(cache, return_activation_grads=True)
>>> activation_grads["h.0.ln_1"].shape == activations["h.0.ln_1"].shape == (1, 3, 64)
True
>>> sorted(grads) == sorted(params), cache.activations
(True, {})
>>> step_logits, kv = decode(params, cfg, idx[:, :2])
>>> step_logits, kv = decode(params, cfg, idx[:, 2:], past_kv=kv)
>>> bool(np.allclose(step_logits[:, -1], logits[:, -1], atol=1e-5)), kv[0][0].shape
(True, (1, 4, 3, 16))
"""

from typing import NamedTuple

import numpy as np

from npgpt import block, crossentropy, dropout, embedding, layernorm, linear, threads
from npgpt.config import GPTConfig
from npgpt.names import activation_names, dropout_mask_shapes, param_shapes

INIT_STD = 0.02
VOCAB_BLOCK = 4096  # vocabulary columns of dlogits built at a time: (N, 4096), never (N, V)
RESIDUAL_PROJECTIONS = ("attn.c_proj.weight", "mlp.c_proj.weight")


class ModelCache(NamedTuple):
    """What `backward` needs, and what a reader may inspect, from one `forward`."""

    config: GPTConfig
    embedding: embedding.EmbeddingCache
    emb_drop: dropout.DropoutCache | None
    blocks: list  # one block.BlockCache per layer
    ln_f: layernorm.LayerNormCache
    wte: np.ndarray  # (V, C) the head's weight: the embedding's, tied
    crossentropy: crossentropy.CrossEntropyCache | None  # None without targets
    activations: dict  # {name: array} every activation, npgpt.names.activation_names
    masks: dict  # {name: keep} the dropout masks used; {} without dropout


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


def in_layer(named, i):
    """The entries of `named` (parameters or dropout masks) under `h.{i}.`, by their names
    inside the block (`h.0.ln_1.weight` is `ln_1.weight`)."""
    prefix = f"h.{i}."
    return {name[len(prefix) :]: value for name, value in named.items() if name.startswith(prefix)}


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


def check_targets(targets, idx):
    if targets is None:
        return None
    targets = np.asarray(targets)
    if targets.shape != idx.shape:
        raise ValueError(f"targets have shape {targets.shape}, but idx has {idx.shape}")
    return targets


@threads.one_blas_thread
def forward(params, config, idx, targets=None, *, train=False, rng=None, dropout_masks=None):
    """Returns (logits, loss or None, ModelCache). With `train=True` and drop_rate > 0, dropout is
    on, its masks taken from `dropout_masks` by name or drawn from `rng`."""
    idx = check_tokens(idx, config)
    targets = check_targets(targets, idx)
    drop_rate, wte = config.drop_rate, params["wte.weight"]
    masks = {}
    if train and drop_rate > 0:
        masks = draw_dropout_masks(config, *idx.shape, rng, dropout_masks)
    x, embedding_cache = embedding.forward(idx, wte, params["wpe.weight"])  # (B, T, C)
    emb, emb_drop_cache = dropout.forward(x, drop_rate, masks.get("emb.drop"))
    x, activations, block_caches = emb, {"emb": emb}, []
    for i in range(config.n_layers):
        x, block_cache = block.forward(
            x, in_layer(params, i), config.n_heads, config.ln_eps, drop_rate, in_layer(masks, i)
        )
        activations |= {f"h.{i}.{name}": a for name, a in block_cache.activations.items()}
        block_caches.append(block_cache)
    ln_f, ln_f_cache = layernorm.forward(
        x, params["ln_f.weight"], params["ln_f.bias"], config.ln_eps
    )  # (B, T, C)
    logits, _ = linear.forward(ln_f, wte.T)  # (B, T, V), the head tied to the embedding
    activations |= {"ln_f": ln_f, "logits": logits}
    loss = crossentropy_cache = None
    if targets is not None:
        loss, crossentropy_cache = crossentropy.forward(logits, targets)
    cache = ModelCache(
        config=config,
        embedding=embedding_cache,
        emb_drop=emb_drop_cache,
        blocks=block_caches,
        ln_f=ln_f_cache,
        wte=wte,
        crossentropy=crossentropy_cache,
        activations=activations,
        masks=masks,
    )
    return logits, loss, cache


def tied_head_backward(crossentropy_cache, ln_f, wte, keep_dlogits=False):
    """The head, logits = ln_f @ wte^T, by hand, with the cross-entropy's backward folded in:
    dlogits is built one block c of vocabulary columns at a time and used at once,
        dln_f = sum over c of dlogits[:, c] @ wte[c],    dwte[c] = dlogits[:, c]^T @ ln_f,
    so the (N, V) gradient, the model's largest array, never exists whole (unless
    `keep_dlogits`, for the activation grads), and each block writes its own rows of dwte, in
    wte's (V, C) layout. Returns (dln_f, the head's share of dwte, dlogits or None). Naive form:
        dlogits = crossentropy.backward(1.0, cache)
        dln_f = dlogits @ wte;  dwte = dlogits.T @ ln_f
    """
    V, C = wte.shape
    ln_f_2d = ln_f.reshape(-1, C)  # (N, C)
    dwte = np.empty_like(wte)  # (V, C)
    dlogits = np.empty((len(ln_f_2d), V), dtype=wte.dtype) if keep_dlogits else None

    def block(columns):
        dlogits_block = crossentropy.backward_columns(1.0, crossentropy_cache, columns)
        np.matmul(dlogits_block.T, ln_f_2d, out=dwte[columns])
        if dlogits is not None:
            dlogits[:, columns] = dlogits_block
        return dlogits_block @ wte[columns]  # this block's share of dln_f

    dln_f = sum(threads.blocks(block, V, VOCAB_BLOCK))  # added in block order: deterministic
    if dlogits is not None:
        dlogits = dlogits.reshape(*ln_f.shape[:-1], V)
    return dln_f.reshape(ln_f.shape), dwte, dlogits


@threads.one_blas_thread
def backward(cache, return_activation_grads=False):
    """Gradient of the loss with respect to every parameter, keyed like `params`. With
    `return_activation_grads`, returns (grads, activation_grads): also the gradient of every
    activation, by canonical name. Without it, each is let go as soon as it has been used.
    The cache is used up: the activations are emptied, and each layer's cache is let go once
    its gradients are computed (as torch frees its graph in `loss.backward()`)."""
    if cache.crossentropy is None:
        raise ValueError("backward needs a loss: call forward with targets")
    if not cache.activations:
        raise ValueError(
            "this cache was used up by an earlier backward, which lets go of what it has used: "
            "run forward again (and copy cache.activations first if you need them afterwards)"
        )
    config, ln_f = cache.config, cache.activations["ln_f"]
    # what backward needs, the ops' caches hold; the rest (qkv, res_1, out, ...) goes now
    cache.activations.clear()
    for block_cache in cache.blocks:
        block_cache.activations.clear()
    dln_f, dwte, dlogits = tied_head_backward(
        cache.crossentropy, ln_f, cache.wte, keep_dlogits=return_activation_grads
    )
    activation_grads = {"logits": dlogits, "ln_f": dln_f} if return_activation_grads else None
    grads = {}
    dx, grads["ln_f.weight"], grads["ln_f.bias"] = layernorm.backward(dln_f, cache.ln_f)
    for i in reversed(range(config.n_layers)):
        dx, block_grads, block_activation_grads = block.backward(dx, cache.blocks[i])
        cache.blocks[i] = None  # this layer's saved arrays are no longer needed
        grads |= {f"h.{i}.{name}": grad for name, grad in block_grads.items()}
        if return_activation_grads:
            activation_grads |= {f"h.{i}.{n}": d for n, d in block_activation_grads.items()}
    demb = dx
    dx = dropout.backward(demb, cache.emb_drop)
    grads["wte.weight"], grads["wpe.weight"] = embedding.backward(dx, cache.embedding, dwte)
    grads = {name: grads[name] for name in param_shapes(config)}
    if not return_activation_grads:
        return grads
    activation_grads["emb"] = demb
    return grads, {name: activation_grads[name] for name in activation_names(config)}


def check_past_kv(past_kv, config):
    """The number of cached positions, T_past; 0 without a KV cache."""
    if past_kv is None:
        return 0
    if len(past_kv) != config.n_layers:
        raise ValueError(
            f"past_kv holds {len(past_kv)} layers' (k, v), but the model has {config.n_layers}"
        )
    return past_kv[0][0].shape[2]


@threads.one_blas_thread
def decode(params, config, idx, past_kv=None):
    """Generation's forward: logits (B, T, V) for the new tokens `idx` (B, T), which follow the
    T_past positions whose keys and values `past_kv` holds, and `kv`: each layer's (k, v), each
    (B, H, T_past + T, D), to pass back as the next call's `past_kv`."""
    past_len = check_past_kv(past_kv, config)
    idx = check_tokens(idx, config, past_len)
    x, _ = embedding.forward(idx, params["wte.weight"], params["wpe.weight"], past_len)
    kv = []
    for i in range(config.n_layers):
        layer_past_kv = None if past_kv is None else past_kv[i]
        x, block_cache = block.forward(
            x, in_layer(params, i), config.n_heads, config.ln_eps, past_kv=layer_past_kv
        )
        kv.append((block_cache.attn_ctx.k, block_cache.attn_ctx.v))
    ln_f, _ = layernorm.forward(x, params["ln_f.weight"], params["ln_f.bias"], config.ln_eps)
    logits, _ = linear.forward(ln_f, params["wte.weight"].T)  # (B, T, V)
    return logits, kv
