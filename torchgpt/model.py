"""GPT-2 in PyTorch, the twin of `npgpt.model`: same names, same layout, same numbers.

Every parameter is registered under npgpt's canonical name (`npgpt.names.param_shapes`), so
`model.state_dict()` has exactly the keys `wte.weight`, `wpe.weight`, `h.0.ln_1.weight`,
`h.0.attn.c_attn.weight`, ... `ln_f.bias`, and every weight is kept in npgpt's (and OpenAI's)
Conv1D layout, (in, out): `Conv1D` computes `x @ w + b` (one `torch.addmm`), so no tensor is
ever transposed on the way in or out and npgpt -> torchgpt -> npgpt is bit-exact. The LM head
is tied to `wte`: logits = ln_f(x) @ wte^T.

Attention comes in two implementations that compute the same function:
  attn="math"  the explicit formula: scores, causal mask, softmax, dropout, @ v. It exposes the
               probabilities (`h.{i}.attn.probs`) and accepts an external attention-dropout mask.
  attn="sdpa"  `F.scaled_dot_product_attention(is_causal=True)`: flash / memory-efficient
               kernels on a GPU. It never materialises the (T, T) probabilities, so it neither
               captures `attn.probs` nor takes an `h.{i}.attn.drop` mask.

The loss. With `chunked_loss` and targets given, forward computes the LM head and
the cross-entropy together in row chunks (torchgpt/head_loss.py: the whole batch's float32
logits are never held, and on a CUDA device the vocabulary is padded to a multiple of 64 inside
that computation only: `wte.weight`, the state_dict and checkpoints keep 50,257 rows) and
returns logits None. Asking for `capture`, or float16 autocast, takes the plain path:
logits = ln_f(x) @ wte^T, then `F.cross_entropy`, so that the logits and their gradient can be
captured. Both paths give the same loss and gradients (tests/test_torchgpt_head_loss.py).
By default (`chunked_loss=None`) the chunks are taken on a CUDA device: there the float32 logits
of a training batch are gigabytes (3.3 GB at B = 16, T = 1024) and their traffic a tenth of the
step. On the CPU, at the batches a CPU trains (B = 4, T = 256: 0.2 GB of logits), the plain
path stays the default, the same formula as npgpt's, step for step.

forward(idx, targets=None, *, dropout_masks=None, capture=None, past_kv=None, kv=None)
returns (logits, loss):
  dropout_masks  {mask name: bool tensor} (`npgpt.names.dropout_mask_shapes`). In train mode with
                 drop_rate > 0 a given mask replaces random dropout:
                 y = x * keep / (1 - drop_rate), exactly `npgpt.dropout`; masks not given are
                 drawn by torch.
  capture        a dict that forward fills with every activation under `npgpt.names`'s names,
                 each `.retain_grad()`-ed when autograd is recording, so that after
                 `loss.backward()` `capture[name].grad` equals npgpt's activation gradient
                 (`npgpt.backward(cache, return_activation_grads=True)`).
  past_kv        generation's KV cache: one (k, v) per layer, each (B, H, T_past, D), as
                 `npgpt.model.decode` takes it, or a `StaticKV` (torchgpt/static_kv.py) that the
                 new keys and values are written into. The new tokens sit at positions T_past,
                 T_past + 1, ...
  kv             a list that forward fills with each layer's (k, v) over all T_past + T tokens:
                 feed it back as the next call's `past_kv`. `model.decode(idx, past_kv)` wraps
                 both for generation and returns (logits, kv), as `npgpt.model.decode` does.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import npgpt
from npgpt.crossentropy import IGNORE_INDEX
from npgpt.names import dropout_mask_shapes, param_shapes
from npgpt.weights.check import check_params
from torchgpt.device import resolve_device, resolve_dtype
from torchgpt.head_loss import ROWS_PER_CHUNK, VOCAB_MULTIPLE, head_loss
from torchgpt.static_kv import StaticKV

ATTN_CHOICES = ("math", "sdpa")


class Conv1D(nn.Module):
    """y = x @ w + b with w stored (in, out), as in OpenAI's checkpoints and `npgpt.linear`."""

    def __init__(self, n_in, n_out, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None

    def forward(self, x):
        x2d = x.reshape(-1, x.shape[-1])
        y = x2d @ self.weight if self.bias is None else torch.addmm(self.bias, x2d, self.weight)
        return y.view(*x.shape[:-1], y.shape[-1])


def dropout(x, drop_rate, training, keep=None):
    """npgpt.dropout when a keep mask is given (x * keep / (1 - drop_rate)), else torch's own."""
    if not training or drop_rate == 0.0:
        return x
    if keep is None:
        return F.dropout(x, drop_rate, training=True)
    if tuple(keep.shape) != tuple(x.shape):
        raise ValueError(
            f"dropout mask has shape {tuple(keep.shape)}, but its input has {tuple(x.shape)}"
        )
    return x * keep.to(device=x.device, dtype=torch.bool) * (1.0 / (1.0 - drop_rate))


def record(capture, name, tensor):
    if capture is not None:
        if tensor.requires_grad:
            tensor.retain_grad()
        capture[name] = tensor


def causal_allowed(t_query, t_key, device):
    """True where query i may see key j: j <= i + (t_key - t_query) (the KV-cache offset)."""
    return torch.ones(t_query, t_key, dtype=torch.bool, device=device).tril(t_key - t_query)


def keys_and_values(k, v, past_kv):
    """What the new queries attend to: (keys, values, allowed), `allowed` (T, T_key) saying
    which keys each query may see, None for the plain causal mask (no cache before them)."""
    if past_kv is None:
        return k, v, None
    if isinstance(past_kv, tuple):  # one layer's (k, v) of the concatenating cache
        T = k.shape[2]
        k = torch.cat([past_kv[0].to(k.dtype), k], dim=2)
        v = torch.cat([past_kv[1].to(v.dtype), v], dim=2)
        return k, v, None if k.shape[2] == T else causal_allowed(T, k.shape[2], k.device)
    return past_kv.extend(k, v)  # a StaticKV layer: written in place


class Attention(nn.Module):
    def __init__(self, config, attn):
        super().__init__()
        self.n_heads, self.drop_rate, self.attn = config.n_heads, config.drop_rate, attn
        self.c_attn = Conv1D(config.emb_dim, 3 * config.emb_dim, bias=config.qkv_bias)
        self.c_proj = Conv1D(config.emb_dim, config.emb_dim)

    def forward(self, x, masks, capture, prefix, past_kv):
        B, T, C = x.shape
        qkv = self.c_attn(x)
        record(capture, prefix + "qkv", qkv)
        q, k, v = (
            part.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
            for part in qkv.split(C, dim=2)
        )  # each (B, H, T, D)
        k, v, allowed = keys_and_values(k, v, past_kv)
        keep = masks.get("attn.drop")
        if self.attn == "math":
            if allowed is None:
                allowed = causal_allowed(T, T, x.device)
            scale = 1.0 / math.sqrt(q.shape[-1])
            s = (q @ k.transpose(-2, -1)) * scale
            s = s.masked_fill(~allowed, float("-inf"))
            p = torch.softmax(s, dim=-1)
            record(capture, prefix + "probs", p)
            y = dropout(p, self.drop_rate, self.training, keep) @ v
        else:
            if keep is not None and self.training and self.drop_rate > 0:
                raise ValueError(
                    f"{prefix}drop: attn='sdpa' cannot take an external attention-dropout mask; "
                    f"use attn='math'"
                )
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=allowed,
                dropout_p=self.drop_rate if self.training else 0.0,
                is_causal=allowed is None,
            )
        ctx = y.transpose(1, 2).reshape(B, T, C)
        record(capture, prefix + "ctx", ctx)
        out = self.c_proj(ctx)
        record(capture, prefix + "c_proj", out)
        return out, (k, v)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = Conv1D(config.emb_dim, 4 * config.emb_dim)
        self.c_proj = Conv1D(4 * config.emb_dim, config.emb_dim)

    def forward(self, x, capture, prefix):
        h = self.c_fc(x)
        record(capture, prefix + "c_fc", h)
        h = F.gelu(h, approximate="tanh")
        record(capture, prefix + "gelu", h)
        out = self.c_proj(h)
        record(capture, prefix + "c_proj", out)
        return out


class Block(nn.Module):
    """Pre-LN: r = x + drop(attn(ln_1(x))), out = r + drop(mlp(ln_2(r))), as `npgpt.block`."""

    def __init__(self, config, attn):
        super().__init__()
        self.drop_rate = config.drop_rate
        self.ln_1 = nn.LayerNorm(config.emb_dim, eps=config.ln_eps)
        self.attn = Attention(config, attn)
        self.ln_2 = nn.LayerNorm(config.emb_dim, eps=config.ln_eps)
        self.mlp = MLP(config)

    def forward(self, x, masks, capture, prefix, past_kv):
        h = self.ln_1(x)
        record(capture, prefix + "ln_1", h)
        a, kv = self.attn(h, masks, capture, prefix + "attn.", past_kv)
        r = x + dropout(a, self.drop_rate, self.training, masks.get("attn.resid_drop"))
        record(capture, prefix + "res_1", r)
        h = self.ln_2(r)
        record(capture, prefix + "ln_2", h)
        m = self.mlp(h, capture, prefix + "mlp.")
        out = r + dropout(m, self.drop_rate, self.training, masks.get("mlp.resid_drop"))
        record(capture, prefix + "out", out)
        return out, kv


class GPT(nn.Module):
    def __init__(self, config, attn="sdpa", seed=0, chunked_loss=None):
        """Parameters start as `npgpt.init_params(config, seed)` (one initialisation for both
        backends, so a torch run and a numpy run with the same seed start from the same model).
        `chunked_loss`: True, False, or None for "on a CUDA device" (the module docstring)."""
        super().__init__()
        if attn not in ATTN_CHOICES:
            raise ValueError(f"attn must be one of {ATTN_CHOICES}, got {attn!r}")
        self.config, self.attn = config, attn
        self.chunked_loss, self.loss_chunk_rows = chunked_loss, ROWS_PER_CHUNK
        # None: pad the head's vocabulary to VOCAB_MULTIPLE on a CUDA device, where tensor cores
        # tile the matmul and autocast copies W anyway; not on the CPU, where the copy is a cost
        self.loss_vocab_multiple = None
        self.wte = nn.Embedding(config.vocab_size, config.emb_dim)
        self.wpe = nn.Embedding(config.context_length, config.emb_dim)
        self.h = nn.ModuleList(Block(config, attn) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.emb_dim, eps=config.ln_eps)
        if seed is not None:
            self.load_params(npgpt.init_params(config, seed=seed, dtype=np.float32))

    @classmethod
    def from_params(cls, config, params, attn="sdpa", device="cpu", dtype=None, chunked_loss=None):
        """A model holding `params` ({npgpt name: numpy array}, as `npgpt.load` returns); dtype
        defaults to the arrays' own (float32 or float64)."""
        model = cls(config, attn=attn, seed=None, chunked_loss=chunked_loss)
        model.load_params(params)
        if dtype is not None:
            model.to(dtype=resolve_dtype(dtype))
        return model.to(device=resolve_device(device))

    def load_params(self, params):
        check_params(params, self.config, source="params")
        state = {
            name: torch.from_numpy(np.array(params[name])) for name in param_shapes(self.config)
        }
        # assign=True takes the arrays' dtype as it is: float64 in, float64 parameters.
        self.load_state_dict(state, strict=True, assign=True)

    def to_params(self):
        """{npgpt name: numpy array} on the CPU; bfloat16 / float16 come back as float32, the
        narrowest dtype a numpy checkpoint holds."""
        params = {}
        for name, tensor in self.state_dict().items():
            tensor = tensor.detach().cpu()
            if tensor.dtype in (torch.bfloat16, torch.float16):
                tensor = tensor.float()
            params[name] = tensor.numpy().copy()
        return params

    def num_params(self):
        return sum(param.numel() for param in self.parameters())

    def forward(
        self, idx, targets=None, *, dropout_masks=None, capture=None, past_kv=None, kv=None
    ):
        cfg = self.config
        B, T = idx.shape
        masks = dict(dropout_masks or {})
        unknown = sorted(set(masks) - set(dropout_mask_shapes(cfg, B, T)))
        if unknown:
            raise ValueError(f"unknown dropout mask names {unknown}; see npgpt.names")
        pos, layer_past_kv = self.positions(T, past_kv, idx.device)
        x = dropout(
            self.wte(idx) + self.wpe(pos), cfg.drop_rate, self.training, masks.get("emb.drop")
        )
        record(capture, "emb", x)
        for i, block in enumerate(self.h):
            prefix = f"h.{i}."
            block_masks = {n[len(prefix) :]: m for n, m in masks.items() if n.startswith(prefix)}
            x, layer_kv = block(x, block_masks, capture, prefix, layer_past_kv[i])
            if kv is not None:
                kv.append(layer_kv)
        x = self.ln_f(x)
        record(capture, "ln_f", x)
        if targets is not None and self.chunks_pay(capture, x.device):
            multiple = self.loss_vocab_multiple or (VOCAB_MULTIPLE if x.is_cuda else 1)
            return None, head_loss(x, self.wte.weight, targets, self.loss_chunk_rows, multiple)
        logits = F.linear(x, self.wte.weight)  # tied head: x @ wte^T
        record(capture, "logits", logits)
        loss = None
        if targets is not None:
            flat = logits.reshape(-1, logits.shape[-1])
            if flat.dtype in (torch.bfloat16, torch.float16):
                flat = flat.float()  # the loss's log-sum-exp wants float32's range and precision
            loss = F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE_INDEX)
        return logits, loss

    def chunks_pay(self, capture, device):
        """Whether the loss takes torchgpt/head_loss.py's chunks: when asked (`chunked_loss`; by
        default on a CUDA device), unless the logits are to be captured or float16 autocast
        wants its gradient scaler inside them."""
        asked = device.type == "cuda" if self.chunked_loss is None else self.chunked_loss
        fp16 = torch.is_autocast_enabled(device.type) and (
            torch.get_autocast_dtype(device.type) == torch.float16
        )
        return asked and capture is None and not fp16

    def positions(self, n_new, past_kv, device):
        """(positions (n_new,) of the new tokens, each layer's share of the KV cache)."""
        if isinstance(past_kv, StaticKV):
            if past_kv.max_len > self.config.context_length:
                raise ValueError(
                    f"a StaticKV of {past_kv.max_len} positions is longer than the model's "
                    f"context_length {self.config.context_length}"
                )
            pos = past_kv.begin(n_new, device)
            return pos, [past_kv.layer(i) for i in range(self.config.n_layers)]
        past_len = 0 if past_kv is None else past_kv[0][0].shape[2]
        if past_len + n_new > self.config.context_length:
            raise ValueError(
                f"sequence of {past_len + n_new} tokens is longer than the model's "
                f"context_length {self.config.context_length}"
            )
        pos = torch.arange(past_len, past_len + n_new, device=device)
        return pos, past_kv or [None] * self.config.n_layers

    @torch.no_grad()
    def decode(self, idx, past_kv=None):
        """One generation step: logits for the new tokens `idx` (B, T) after the cached ones,
        and the KV cache extended by them: a new list of (k, v), or `past_kv` itself when it is
        a `StaticKV` (written in place)."""
        if isinstance(past_kv, StaticKV):
            logits, _ = self(idx, past_kv=past_kv)
            past_kv.advance(idx.shape[1])
            return logits, past_kv
        kv = []
        logits, _ = self(idx, past_kv=past_kv, kv=kv)
        return logits, kv


def load(path, attn="sdpa", device="cpu", dtype=torch.float32):
    """A `GPT` from an npgpt checkpoint directory (read by `npgpt.load`, nothing redefined)."""
    dtype = resolve_dtype(dtype)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    config, params = npgpt.load(path, dtype=np_dtype)
    return GPT.from_params(config, params, attn=attn, device=device, dtype=dtype)


def save(directory, model):
    """Write `model` as an npgpt checkpoint (`npgpt.save`: model.safetensors + config.json)."""
    npgpt.save(directory, model.config, model.to_params())
