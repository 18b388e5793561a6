"""The LM head and the cross-entropy in one pass over row chunks: the training loss without the
whole batch's logits.

The plain path computes logits = x @ wte^T for all N = B * T positions and hands them to
`F.cross_entropy`, which wants them in float32: at GPT-2 124M, B = 16, T = 1024 that is a
(16384, 50257) float32 array of 3.3 GB, written, read by the softmax, written again as its
gradient and read by two matmuls, the largest memory traffic of a training step. Here the rows
are taken `rows_per_chunk` at a time (x_c, y_c: a chunk's rows of x and of the targets):

    logits  = x_c @ W^T                                (n, V)  in the matmul dtype (bf16 under
                                                               autocast), then float32 at least
    lse     = logsumexp(logits)                        (n,)
    loss   += sum over kept rows of lse - logits[y_c]          (kept: target != -100)
    dlogits = (softmax(logits) - onehot(y_c)) * keep / N_kept  the cross-entropy's backward
    dx_c    = dlogits @ W                              (n, C)
    dW     += dlogits^T @ x_c                          (V, C)  accumulated in W's dtype

and loss /= N_kept. The loss is a scalar at the end of the graph, so its gradients with respect
to x and W are known in the forward pass up to the one number that backward receives (dloss: 1,
or 1 over the number of accumulated micro-batches); backward only multiplies by it. The
matmuls are the plain path's (one forward, two backward), nothing is recomputed, and the
largest temporary is one chunk's logits. Under `torch.no_grad()` (evaluation) only the loss is
computed.

Not under float16 autocast: float16's narrow range needs the GradScaler's scale inside the
logits' gradient, which this function learns only in backward; `GPT` takes the plain path then
(`chunks_pay`). bfloat16 has float32's range.

Padded vocabulary. 50,257 is odd: a matmul whose output width is a multiple of 64 fills the GPU's
tensor-core tiles, one of 50,257 leaves a ragged last tile. `vocab_multiple` pads W with zero
rows up to the next multiple, inside this function only. The padded columns of each chunk's
logits are set to -inf before the log-sum-exp, so they add exp(-inf) = 0 to every sum, take no
part in the loss, and their dlogits are exactly 0; the padded rows of dW are never returned. The
model's `wte.weight` keeps its 50,257 rows, so its state_dict, checkpoints, optimizer state and
the parity suite do not see the padding at all. Under autocast the padded copy costs nothing:
the matmuls need W cast to bfloat16 anyway, and the cast writes into the padded buffer.

>>> import torch
>>> x, w = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(10, 4, dtype=torch.float64)
>>> y = torch.tensor([[1, 2, -100], [3, 4, 5]])
>>> plain = torch.nn.functional.cross_entropy((x @ w.T).reshape(6, 10), y.reshape(6))
>>> bool(torch.isclose(head_loss(x, w, y, rows_per_chunk=4, vocab_multiple=8), plain))
True
"""

import torch

from npgpt.crossentropy import IGNORE_INDEX

# Rows per chunk: at GPT-2's vocabulary a chunk's temporaries (bf16 logits, their float32 copy,
# bf16 dlogits: 8 bytes a logit) take 1.6 GB, half the plain path's float32 logits alone at
# B = 16, T = 1024, and each chunk's matmuls are still thousands of rows tall.
ROWS_PER_CHUNK = 4096
# The GPU's tensor-core tiles: the padded vocabulary's width is a multiple of this.
VOCAB_MULTIPLE = 64


def matmul_dtype(weight):
    """The dtype the head's matmuls run in: autocast's when it is on, else the weight's own."""
    device_type = weight.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def padded_weight(weight, vocab_multiple, dtype):
    """W cast to `dtype`, with zero rows appended up to a multiple of `vocab_multiple` rows."""
    vocab_size, width = weight.shape
    padded_size = -(-vocab_size // vocab_multiple) * vocab_multiple
    if padded_size == vocab_size:
        return weight.to(dtype)
    padded = weight.new_zeros((padded_size, width), dtype=dtype)
    padded[:vocab_size] = weight
    return padded


def chunked_pass(x, weight, targets, rows_per_chunk, vocab_multiple, with_grads):
    """(loss, dx, dW) of mean cross-entropy(x @ W^T, targets), chunk by chunk (module
    docstring); dx and dW are None unless `with_grads`."""
    vocab_size = weight.shape[0]
    x2d, y = x.reshape(-1, x.shape[-1]), targets.reshape(-1)
    dtype = matmul_dtype(weight)
    loss_dtype = torch.promote_types(dtype, torch.float32)  # the log-sum-exp wants float32 at least
    w = padded_weight(weight, vocab_multiple, dtype)
    n_kept = (y != IGNORE_INDEX).sum().to(loss_dtype)
    loss_sum = torch.zeros((), dtype=loss_dtype, device=x.device)
    dx = torch.empty(x2d.shape, dtype=x.dtype, device=x.device) if with_grads else None
    dw = torch.zeros(w.shape, dtype=weight.dtype, device=w.device) if with_grads else None
    for start in range(0, x2d.shape[0], rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        x_chunk = x2d[rows].to(dtype)
        logits = (x_chunk @ w.T).to(loss_dtype)
        logits[:, vocab_size:] = float("-inf")  # the padded vocabulary: probability 0
        lse = torch.logsumexp(logits, dim=1)
        keep = y[rows] != IGNORE_INDEX
        target_ids = torch.where(keep, y[rows], 0)
        # logits[:, :V] makes a target id in the padding an index error, as in F.cross_entropy
        target_logits = logits[:, :vocab_size].gather(1, target_ids[:, None])[:, 0]
        loss_sum += torch.where(keep, lse - target_logits, 0).sum()
        if with_grads:
            row_scale = torch.where(keep, 1 / n_kept, 0)  # 0 on ignored rows
            # dlogits = (exp(logits - lse) - onehot(target)) * row_scale, in logits' buffer
            dlogits = logits.sub_(lse[:, None]).exp_().mul_(row_scale[:, None])
            dlogits.scatter_add_(1, target_ids[:, None], -row_scale[:, None])
            dlogits = dlogits.to(dtype)
            dx[rows] = dlogits @ w
            dw += dlogits.T @ x_chunk
    loss = loss_sum / n_kept  # nan when every target is ignored, as F.cross_entropy's mean
    if not with_grads:
        return loss, None, None
    return loss, dx.view(x.shape), dw[:vocab_size]


class ChunkedHeadLoss(torch.autograd.Function):
    """The loss's forward computes its gradients too (module docstring); backward scales them."""

    @staticmethod
    def forward(ctx, x, weight, targets, rows_per_chunk, vocab_multiple):
        loss, dx, dw = chunked_pass(x, weight, targets, rows_per_chunk, vocab_multiple, True)
        ctx.save_for_backward(dx, dw)
        return loss

    @staticmethod
    def backward(ctx, dloss):
        dx, dw = ctx.saved_tensors
        return dx * dloss, dw * dloss, None, None, None


def head_loss(x, weight, targets, rows_per_chunk=ROWS_PER_CHUNK, vocab_multiple=1):
    """Mean cross-entropy of the tied head's logits x @ weight^T against `targets` (-100:
    ignored), never holding more than `rows_per_chunk` rows of logits.

    x (B, T, C), weight (V, C), targets (B, T) -> a scalar, float32 at least."""
    if tuple(targets.shape) != tuple(x.shape[:-1]):
        raise ValueError(
            f"targets have shape {tuple(targets.shape)}, but the positions are "
            f"{tuple(x.shape[:-1])}: one target id per position"
        )
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return ChunkedHeadLoss.apply(x, weight, targets, rows_per_chunk, vocab_multiple)
    return chunked_pass(x, weight, targets, rows_per_chunk, vocab_multiple, False)[0]
