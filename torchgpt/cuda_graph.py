"""One-token decode steps replayed from a CUDA graph: the launches of a whole forward in one.

At batch 1 a GPT-2 124M decode step is a few hundred small kernels (12 layers of LayerNorm,
matmuls, attention, GELU, residuals), each microseconds of work and each launched by Python:
the GPU waits on the CPU, and the step takes milliseconds whatever the GPU. A CUDA graph records
the kernels of one step once and replays them with a single launch. What a replay may not do is
change a shape or an address, so everything a step reads or writes lives in fixed tensors:

  token    (1, 1)  the new token's id, written before each replay
  pos      (1,)    its position; the graph reads it for wpe, the KV cache's write index and the
                   attention mask (`StaticKV(fixed_shapes=True)`: every step attends to all
                   max_len slots, the ones after `pos` masked)
  logits   (1, 1, V)  the output, overwritten by each replay
  the StaticKV's buffers, allocated by the prompt's eager forward before recording

Recording runs the step twice on a side stream first (cuBLAS and the attention kernels pick and
allocate their workspaces outside the graph) and with autocast's weight-cast cache off: a cast
made during recording must be made again at every replay. The warm-up and the recording write
keys and values at `pos`, the next free slot, which the first replay then overwrites. The
prompt itself runs eagerly, at any length, into the same buffers.
"""

import contextlib

import torch
from torch.nn.attention import sdpa_kernel


def autocast_for(device, amp_dtype):
    """Autocast to `amp_dtype` (none when None), without the weight-cast cache: a graph
    cannot keep a cast made while it records."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype, cache_enabled=False)


class GraphedDecode:
    """`step(token_id) -> logits (1, 1, V)` for `model` after what `kv` (a StaticKV with
    fixed_shapes=True, its buffers allocated) holds; advances `kv` by one position. Attention
    runs on `kernels` (a list of SDPBackend, torchgpt.generate.DECODE_KERNELS)."""

    def __init__(self, model, kv, amp_dtype, kernels):
        self.model, self.kv, self.amp_dtype, self.kernels = model, kv, amp_dtype, kernels
        device = next(model.parameters()).device
        self.token = torch.zeros((1, 1), dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.graph = self.logits = None

    def forward(self):
        with autocast_for(self.pos.device, self.amp_dtype), sdpa_kernel(self.kernels):
            return self.model(self.token, past_kv=self.kv)[0]

    def record(self):
        self.kv.pos = self.pos  # the recorded kernels read the position from this tensor
        try:
            side = torch.cuda.Stream(self.pos.device)
            side.wait_stream(torch.cuda.current_stream(self.pos.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.forward()
            torch.cuda.current_stream(self.pos.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: other threads (the web page's other chats) may use the GPU meanwhile
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.logits = self.forward()
        finally:
            self.kv.pos = None  # eager forwards (the next prompt) count positions themselves

    @torch.no_grad()
    def step(self, token_id):
        if self.kv.length >= self.kv.max_len:
            raise ValueError(f"the KV cache's {self.kv.max_len} positions are full")
        self.token.fill_(token_id)
        self.pos.fill_(self.kv.length)
        if self.graph is None:
            self.record()
        self.graph.replay()
        self.kv.advance(1)
        return self.logits
