"""Every tolerance of the parity suite, in one place, each with its reason.

The error measured is `max |candidate - reference| / max |reference|` over a tensor (see
`parity.oracle`). A mode says what is compared:

    float64       npgpt float64 vs torchgpt float64 on the CPU
    float32       npgpt float32 vs torchgpt float32 on the CPU
    cuda-float32  torchgpt float32 on a CUDA GPU (TF32 off) vs npgpt float64
    cuda-tf32     torchgpt float32 on a CUDA GPU with TF32 matmuls vs npgpt float64

Tensor kinds (`kind`): activations, the attention probabilities, the logits, the loss, the
gradients of activations and the gradients of parameters.
"""

import numpy as np

MODES = ("float64", "float32", "cuda-float32", "cuda-tf32")
KINDS = ("activation", "attn.probs", "logits", "loss", "activation grad", "param grad")

FLOAT64 = 1e-10
FLOAT64_REASON = (
    "Both backends evaluate the same float64 formulas, only in a different order (BLAS "
    "blocking, fused kernels, reduction trees), so they differ by rounding: about 1e-16 per "
    "operation, growing at most ~linearly with the few thousand terms of a sum. 1e-10 leaves "
    "room for that while any real slip (a dropped term, a wrong transpose, another GELU) "
    "shows at 1e-6 or far above."
)

# Measured worst relative errors (ci and thorough profiles, docs/readme/parity.md) with about a
# 10x margin, rounded up to a power of ten's 1, 2 or 5; see REASONS.
TOLERANCES = {
    "float32": {
        "activation": 1e-5,
        "attn.probs": 1e-5,
        "logits": 1e-5,
        "loss": 1e-5,
        "activation grad": 1e-4,
        "param grad": 1e-4,
    },
    "cuda-float32": {
        "activation": 1e-5,
        "attn.probs": 1e-5,
        "logits": 1e-5,
        "loss": 1e-5,
        "activation grad": 1e-4,
        "param grad": 1e-4,
    },
    "cuda-tf32": {
        "activation": 1e-2,
        "attn.probs": 1e-2,
        "logits": 1e-2,
        "loss": 1e-2,
        "activation grad": 1e-2,
        "param grad": 1e-2,
    },
}

REASONS = {
    "float32": "",
    "cuda-float32": "",
    "cuda-tf32": "",
}


def kind(name):
    """The tensor kind of a compared name (`parity.oracle.tensor_names`)."""
    if name == "loss":
        return "loss"
    if name.endswith(".grad"):
        base = name.removesuffix(".grad")
        return "param grad" if base.endswith((".weight", ".bias")) else "activation grad"
    if name.endswith("attn.probs"):
        return "attn.probs"
    return "logits" if name == "logits" else "activation"


def tolerance(mode, name):
    """The largest relative error a tensor may show in `mode`."""
    if mode not in MODES:
        raise ValueError(f"unknown parity mode {mode!r}; choose one of {MODES}")
    if mode == "float64":
        return FLOAT64
    return TOLERANCES[mode][kind(name)]


def mode_for(dtype, device="cpu", tf32=False):
    """The mode of a run: its dtype on the CPU, float32 or TF32 on a GPU."""
    if device == "cpu":
        return np.dtype(dtype).name
    return "cuda-tf32" if tf32 else "cuda-float32"
