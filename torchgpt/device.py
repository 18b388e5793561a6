"""Where and in what precision torchgpt runs: `--device auto|cpu|cuda|mps` and dtype names.

>>> resolve_device("cpu")
device(type='cpu')
>>> resolve_dtype("float64")
torch.float64
"""

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float64": torch.float64,
    "fp64": torch.float64,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def mps_available():
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def resolve_device(name="auto"):
    """`auto` picks CUDA, then Apple's MPS, then the CPU; an explicit name that this machine
    cannot serve is an error rather than a silent fall-back to a slower device. `cuda:1` and
    the like pass through."""
    name = str(name)
    kind = name.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA GPU on this machine")
    if kind == "mps" and not mps_available():
        raise ValueError("--device mps was asked for, but this torch build has no usable MPS")
    return torch.device(name)


def resolve_dtype(dtype):
    """A torch dtype from a torch dtype, a numpy dtype or a name such as `float64` / `bf16`."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = getattr(dtype, "__name__", None) or str(dtype)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]
