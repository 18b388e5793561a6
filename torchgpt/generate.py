"""Generation with the PyTorch twin: npgpt's loop and sampler, torchgpt's forward.

`npgpt.generate.generate_tokens` is backend-independent: it calls `step(new_ids, past_kv) ->
(logits (V,), kv)`. `torch_step` is that step for a `torchgpt.GPT`: it runs the new ids
through the model after the cached keys/values (`GPT.decode`) and hands the last position's
logits to the shared sampler as a numpy array, so a seed gives the same tokens in either
backend (the sampler draws with numpy in float64 whatever the model's dtype). Streaming and
stop strings come from `npgpt.generate.stream_text`, unchanged.

Attention kernels. Under bf16/fp16 on a recent GPU, `scaled_dot_product_attention` prefers
cuDNN's kernel, which builds an execution plan for every new sequence length: ~80 ms each on an
H100, paid at every token since the length grows by one (measured: 85 ms/token against 11).
Generation therefore picks among the kernels that need no plan: flash, memory-efficient, math.
"""

import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from npgpt.generate import generate_tokens

DECODE_KERNELS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def torch_step(model, amp_dtype=None):
    """The step function for `model` (put in eval mode); `amp_dtype` runs it under autocast."""
    model.eval()
    device = next(model.parameters()).device
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )

    @torch.no_grad()
    def step(new_ids, past_kv):
        idx = torch.tensor([new_ids], dtype=torch.long, device=device)
        with autocast, sdpa_kernel(DECODE_KERNELS):
            logits, kv = model.decode(idx, past_kv)
        last = logits[0, -1]
        if last.dtype in (torch.bfloat16, torch.float16):
            last = last.float()
        return last.cpu().numpy(), kv

    return step


def generate(model, prompt_ids, settings, use_kv_cache=True, amp_dtype=None):
    """An iterator of new token ids, exactly as `npgpt.generate.generate` but on `model`."""
    step = torch_step(model, amp_dtype)
    return generate_tokens(step, prompt_ids, model.config.context_length, settings, use_kv_cache)
