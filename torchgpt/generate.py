"""Generation with the PyTorch twin: npgpt's loop and sampler, torchgpt's forward.

`npgpt.generate.generate_tokens` is backend-independent: it calls `step(new_ids, past_kv) ->
(logits (V,), kv)`. `torch_step` is that step for a `torchgpt.GPT`: it runs the new ids
through the model after the cached keys/values (`GPT.decode`) and hands the last position's
logits to the shared sampler as a numpy array, so a seed gives the same tokens in either
backend (the sampler draws with numpy in float64 whatever the model's dtype). Streaming and
stop strings come from `npgpt.generate.stream_text`, unchanged.

The KV cache (`kv_mode`), three forms that give the same logits:
  "concat"  a list of (k, v) per layer, grown by `torch.cat` at every token, as npgpt keeps it:
            each token copies the whole cache.
  "static"  one `StaticKV` (torchgpt/static_kv.py) per `torch_step`, preallocated for the
            context, the new keys and values written in place; a new prompt or a slid window
            starts its buffers over. The default.
  "graph"   the same cache with fixed shapes, and every one-token step replayed from a CUDA
            graph (torchgpt/cuda_graph.py); the prompt runs eagerly. CUDA only, and asked for
            explicitly: it has not yet run on a GPU (bench/bench_torch.py measures it, and
            tests/test_torchgpt_generate.py checks its tokens, wherever CUDA is present).
A `torch_step` holds its one cache: a call with `past_kv` None starts it afresh, so one step
function serves one generation at a time (`generate` makes its own).

Attention kernels. Under bf16/fp16 on a recent GPU, `scaled_dot_product_attention` prefers
cuDNN's kernel, which builds an execution plan for every new sequence length: ~80 ms each on an
H100, paid at every token since the length grows by one (measured: 85 ms/token against 11).
Generation therefore picks among the kernels that need no plan: flash, memory-efficient, math.
"""

import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from npgpt.generate import generate_tokens
from torchgpt.cuda_graph import GraphedDecode
from torchgpt.static_kv import StaticKV

DECODE_KERNELS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
KV_MODES = ("graph", "static", "concat")


def torch_step(model, amp_dtype=None, kv_mode=None):
    """The step function for `model` (put in eval mode); `amp_dtype` runs it under autocast;
    `kv_mode` picks the KV cache (module docstring), "static" by default."""
    model.eval()
    device = next(model.parameters()).device
    kv_mode = kv_mode or "static"
    if kv_mode not in KV_MODES:
        raise ValueError(f"kv_mode must be one of {KV_MODES}, got {kv_mode!r}")
    if kv_mode == "graph" and device.type != "cuda":
        raise ValueError(f"kv_mode 'graph' needs a CUDA device; the model is on {device}")
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    cfg = model.config
    static = StaticKV(cfg.n_layers, cfg.context_length, fixed_shapes=kv_mode == "graph")
    graphed = None
    if kv_mode == "graph":
        graphed = GraphedDecode(model, static, amp_dtype, DECODE_KERNELS)

    @torch.no_grad()
    def step(new_ids, past_kv):
        if graphed is not None and past_kv is not None and len(new_ids) == 1:
            return last_logits(graphed.step(new_ids[0])), static
        if kv_mode != "concat":
            if past_kv is None:
                static.reset()  # a new prompt or a slid window: the buffers start over
            past_kv = static
        idx = torch.tensor([new_ids], dtype=torch.long, device=device)
        with autocast, sdpa_kernel(DECODE_KERNELS):
            logits, kv = model.decode(idx, past_kv)
        return last_logits(logits), kv

    return step


def last_logits(logits):
    """The last position's logits (V,) as a float32 (or float64) numpy array, for the sampler."""
    last = logits[0, -1]
    if last.dtype in (torch.bfloat16, torch.float16):
        last = last.float()
    return last.cpu().numpy()


def generate(model, prompt_ids, settings, use_kv_cache=True, amp_dtype=None, kv_mode=None):
    """An iterator of new token ids, exactly as `npgpt.generate.generate` but on `model`."""
    step = torch_step(model, amp_dtype, kv_mode)
    return generate_tokens(step, prompt_ids, model.config.context_length, settings, use_kv_cache)
