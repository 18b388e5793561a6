"""AdamW with decoupled weight decay, and global-norm gradient clipping.

For each parameter w with gradient dw, at update t = 1, 2, ... (learning rate lr):

    w  <- w - lr * wd * w                      decoupled weight decay (only where `decays`)
    m  <- b1 * m + (1 - b1) * dw               first moment: a running mean of dw
    v  <- b2 * v + (1 - b2) * dw^2             second moment: a running mean of dw^2
    w  <- w - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

The divisions by 1 - b^t undo the moments' bias towards their zero start. The decay is
"decoupled" (Loshchilov & Hutter): it shrinks the weight directly instead of being added to dw,
so Adam's per-coordinate scaling does not weaken it. It applies to matrices and embeddings
(>= 2-D) and not to biases and LayerNorm parameters, which set offsets and scales rather than
feature detectors. The operations above are in the order `torch.optim.AdamW` performs them, so
the two agree to rounding.

The state is plain named arrays, `exp_avg.<name>` and `exp_avg_sq.<name>` (torch's names for m
and v), saved as safetensors next to the model; the step count t lives in the trainer state.

Clipping: if the global norm ||dw|| = sqrt(sum over all parameters of sum(dw^2)) exceeds c,
every gradient is scaled by c / ||dw||, keeping the update's direction and capping its size.

>>> import numpy as np
>>> params = {"w": np.ones((2, 2)), "b": np.zeros(3)}
>>> sorted(decaying(params))
['w']
>>> grads = {"w": np.full((2, 2), 2.0), "b": np.full(3, 4.0)}
>>> clip_grad_norm(grads, 1.0)
8.0
>>> round(global_norm(grads), 6)
1.0
"""

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class AdamWSettings:
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1


def decays(shape):
    """Whether a parameter of this shape gets weight decay: matrices and embeddings only."""
    return len(shape) >= 2


def decaying(shapes):
    """Names of the parameters that decay; `shapes` maps names to arrays or shapes. The
    PyTorch twin builds its parameter groups from this."""
    return [name for name, s in shapes.items() if decays(np.shape(s) if hasattr(s, "shape") else s)]


def init_state(params):
    """Zero moments, one pair per parameter, of the parameter's shape and dtype."""
    state = {}
    for name, w in params.items():
        state[f"exp_avg.{name}"] = np.zeros_like(w)
        state[f"exp_avg_sq.{name}"] = np.zeros_like(w)
    return state


def global_norm(grads):
    return math.sqrt(sum(float(np.vdot(dw, dw)) for dw in grads.values()))


def clip_grad_norm(grads, max_norm):
    """Scale the gradients in place so their global norm is at most max_norm; return the norm
    before clipping."""
    norm = global_norm(grads)
    if max_norm is not None and max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)  # torch's clip_grad_norm_ uses the same 1e-6
        for dw in grads.values():
            dw *= scale
    return norm


def adamw_step(params, grads, state, t, lr, settings):
    """Update `params` and `state` in place with update number t (1-based)."""
    b1, b2 = settings.beta1, settings.beta2
    bias1 = 1 - b1**t
    bias2_sqrt = math.sqrt(1 - b2**t)  # Python floats: a float32 model stays float32
    for name, w in params.items():
        dw = grads[name]
        m, v = state[f"exp_avg.{name}"], state[f"exp_avg_sq.{name}"]
        if decays(w.shape):
            w *= 1 - lr * settings.weight_decay
        m *= b1
        m += (1 - b1) * dw
        v *= b2
        v += (1 - b2) * dw * dw
        denom = np.sqrt(v) / bias2_sqrt + settings.eps
        w -= (lr / bias1) * (m / denom)
