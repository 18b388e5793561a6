"""A preallocated KV cache for generation: keys and values written in place, never concatenated.

`GPT.decode(idx, past_kv)` with `past_kv` a list of (k, v) per layer, as `npgpt.model.decode`
keeps it, grows every layer's tensors with `torch.cat`: each new token copies the whole cache and
allocates it anew. A `StaticKV` holds, per layer, one (B, H, max_len, D) buffer of keys and one of
values, allocated on first use in the dtype and on the device of the keys written; `length`
positions are filled. A forward writes its T new tokens' keys and values at positions length,
..., length + T - 1 and `GPT.decode` then advances `length` by T. The new queries attend to

  fixed_shapes=False  the filled prefix, buffer[:, :, :length + T]: the least work.
  fixed_shapes=True   the whole buffer, with allowed[i, j] = j <= position of query i, so that
                      every one-token step has the same shapes and reads its position from a
                      tensor: what a CUDA graph replays (torchgpt.cuda_graph). A masked key gets
                      probability exp(-inf) = 0, so the result is the prefix form's; buffers
                      start at zero and `reset` leaves earlier finite keys and values, so no
                      masked slot holds a NaN to make 0 * v a NaN.

>>> from npgpt.config import GPTConfig
>>> from torchgpt.model import GPT
>>> model = GPT(GPTConfig.preset("tiny", context_length=8)).eval()
>>> kv = StaticKV(model.config.n_layers, max_len=8)
>>> logits, kv = model.decode(torch.tensor([[1, 2, 3]]), kv)
>>> logits, kv = model.decode(torch.tensor([[4]]), kv)
>>> kv.length, tuple(kv.keys[0].shape)  # (B, H, max_len, D)
(4, (1, 4, 8, 16))
"""

import dataclasses

import torch


class StaticKV:
    """Every layer's keys and values in buffers of `max_len` positions (module docstring)."""

    def __init__(self, n_layers, max_len, fixed_shapes=False):
        self.max_len, self.fixed_shapes = max_len, fixed_shapes
        self.keys, self.values = [None] * n_layers, [None] * n_layers
        self.length = 0
        # A CUDA graph's input: the new token's position, read by the recorded kernels; set by
        # torchgpt.cuda_graph while it records, None for every eager forward.
        self.pos = None
        self.positions = self.allowed = None  # this forward's, set by `begin`

    def reset(self):
        """Empty the cache, keeping its buffers (and their addresses, which a graph holds)."""
        self.length = 0

    def begin(self, n_new, device):
        """The positions (n_new,) of a forward's new tokens, and the mask its layers share."""
        if self.length + n_new > self.max_len:
            raise ValueError(
                f"{self.length} cached + {n_new} new tokens do not fit the KV cache's "
                f"{self.max_len} positions"
            )
        if self.pos is not None:
            self.positions = self.pos
        else:
            self.positions = torch.arange(self.length, self.length + n_new, device=device)
        n_keys = self.max_len if self.fixed_shapes else self.length + n_new
        if self.length == 0 and not self.fixed_shapes:
            self.allowed = None  # the plain causal mask: attention may take its fastest kernel
        else:
            self.allowed = torch.arange(n_keys, device=device) <= self.positions[:, None]
        return self.positions

    def advance(self, n_new):
        self.length += n_new

    def layer(self, index):
        return LayerKV(self, index)

    def extend(self, index, k, v):
        """Write layer `index`'s new keys and values (B, H, T, D); return what the new queries
        attend to: (keys, values, allowed), allowed None for the plain causal mask."""
        if self.keys[index] is None:
            shape = (k.shape[0], k.shape[1], self.max_len, k.shape[3])
            self.keys[index], self.values[index] = k.new_zeros(shape), v.new_zeros(shape)
        keys, values = self.keys[index], self.values[index]
        if (keys.dtype, keys.shape[:2], keys.shape[3]) != (k.dtype, k.shape[:2], k.shape[3]):
            raise ValueError(
                f"the KV cache holds {keys.dtype} keys of shape {tuple(keys.shape)}, but the "
                f"new ones are {k.dtype} {tuple(k.shape)}: start a new StaticKV when the batch "
                f"or the autocast dtype changes"
            )
        if self.fixed_shapes:
            keys.index_copy_(2, self.positions, k)
            values.index_copy_(2, self.positions, v)
            return keys, values, self.allowed
        stop = self.length + k.shape[2]
        keys[:, :, self.length : stop] = k
        values[:, :, self.length : stop] = v
        return keys[:, :, :stop], values[:, :, :stop], self.allowed


@dataclasses.dataclass(frozen=True)
class LayerKV:
    """One layer's share of a `StaticKV`: what `Attention` receives as its `past_kv`."""

    cache: StaticKV
    index: int

    def extend(self, k, v):
        return self.cache.extend(self.index, k, v)
