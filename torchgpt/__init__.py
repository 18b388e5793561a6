"""torchgpt: npgpt's PyTorch twin, for training and generating on a GPU.

Same parameter names, layouts, activations, checkpoints and sampler as `npgpt`; see
`torchgpt/model.py` for the contract between the two.
"""

from torchgpt.device import resolve_device, resolve_dtype
from torchgpt.model import GPT, load, save

__all__ = ["GPT", "load", "resolve_device", "resolve_dtype", "save"]
