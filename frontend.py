"""What the front ends share: a checkpoint loaded onto a backend, a prompt encoded, an answer
generated piece by piece and timed, and one error type for what the user can fix.

`cli.py` (generate, eval, convert, info) and the web page (`webapp/app.py`) are thin over this
module; the web page imports no CLI code. It sits beside `cli.py` rather than in `npgpt/`
because `--backend torch` needs `torchgpt`, and `npgpt` never imports `torchgpt`; and rather
than in `webapp/`, because the CLI must not need the web page's package to generate text.

    load_checkpoint(path, dtype)   (format, config, params) of any weights npgpt reads
    load_model(path, backend, device, dtype)    a Model: config, description, generate, loss
    encode_prompt(text)            token ids; a typed `<|endoftext|>` is the special token
    Generation(model, ids, settings)   the answer's text pieces, its token count and speed
    UserError                      one line the user can act on (the CLI exits with status 1)

>>> import tempfile
>>> import npgpt
>>> from npgpt.sampling import SamplingSettings
>>> cfg = npgpt.GPTConfig.preset("tiny")
>>> run = tempfile.mkdtemp()
>>> npgpt.save(run, cfg, npgpt.init_params(cfg))
>>> model = load_model(run, "numpy")
>>> model.description
'numpy'
>>> answer = Generation(model, encode_prompt("Hi"), SamplingSettings(max_new_tokens=3, seed=0))
>>> text = "".join(answer)
>>> answer.tokens <= 3
True
>>> load_model(run + "/missing", "numpy")
Traceback (most recent call last):
...
frontend.UserError: cannot load checkpoint .../missing: .../missing: no such file or directory
"""

import functools
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from npgpt.config import GPTConfig
from npgpt.generate import generate, stream_text
from npgpt.model import forward
from npgpt.tokenizer import EOT_TOKEN, get_tokenizer
from npgpt.weights.check import CheckpointError
from npgpt.weights.checkpoint import load
from npgpt.weights.formats import detect_format

TORCH_INSTALL_HINT = 'pip install -e ".[torch]"'


class UserError(Exception):
    """A problem the user can fix, said in one line: the CLI prints it and exits with status
    1, the web page says it in the chat."""


class Model(NamedTuple):
    """A checkpoint on a backend, as the front ends use it."""

    config: GPTConfig
    description: str  # the backend, and for torch the device: "numpy", "torch on cuda:0"
    generate: Callable  # (prompt_ids, settings, use_kv_cache=True) -> iterator of new token ids
    loss: Callable  # (x, y) as int arrays (B, T) -> mean cross-entropy, a float


def load_checkpoint(path, dtype=None):
    """(format, config, params) of the weights at `path`, in any format `npgpt.load` reads, or
    a training run directory; dtype None keeps the stored dtype."""
    try:
        kind, _ = detect_format(path)
        config, params = load(path, dtype=dtype)
    except (CheckpointError, OSError) as err:
        raise UserError(f"cannot load checkpoint {path}: {' '.join(str(err).split())}") from None
    return kind, config, params


def load_model(path, backend, device="auto", dtype="float32"):
    """The checkpoint at `path` on `backend` ("numpy" or "torch"); `device` (auto, cpu, cuda,
    mps) is torch's, `dtype` the parameters' ("float32" or "float64")."""
    _, config, params = load_checkpoint(path, np.dtype(dtype))
    if backend == "numpy":
        return numpy_model(config, params)
    return torch_model(config, params, device, dtype)


def numpy_model(config, params):
    def loss(x, y):
        return float(forward(params, config, x, y)[1])

    return Model(config, "numpy", functools.partial(generate, params, config), loss)


def torch_model(config, params, device, dtype):
    try:  # PyTorch is optional: imported only when --backend torch asks for it
        import torch

        from torchgpt.device import resolve_device, resolve_dtype
        from torchgpt.generate import generate as torch_generate
        from torchgpt.model import GPT
    except ImportError:
        raise UserError(f"--backend torch needs PyTorch: {TORCH_INSTALL_HINT}") from None
    try:
        torch_device = resolve_device(device)
    except ValueError as err:
        raise UserError(str(err)) from None
    gpt = GPT.from_params(config, params, device=torch_device, dtype=resolve_dtype(dtype)).eval()
    where = next(gpt.parameters()).device  # "cuda:0" where resolve_device said "cuda"

    def loss(x, y):
        with torch.no_grad():
            return float(gpt(torch.from_numpy(x).to(where), torch.from_numpy(y).to(where))[1])

    return Model(config, f"torch on {where}", functools.partial(torch_generate, gpt), loss)


def encode_prompt(text):
    """A prompt's token ids; a typed `<|endoftext|>` is the special token, as in training."""
    return get_tokenizer().encode(text, allowed_special={EOT_TOKEN})


class Generation:
    """One answer: iterate over it for its text, piece by piece as it is sampled (held back
    where a piece could still be the start of a stop string). Once the text is read to its
    end, `tokens` is how many tokens were sampled, `seconds` how long that took, and `rate`
    tokens per second."""

    def __init__(self, model, prompt_ids, settings, use_kv_cache=True):
        self.tokens, self.seconds = 0, None
        self.start = time.perf_counter()
        new_ids = model.generate(prompt_ids, settings, use_kv_cache)
        self.pieces = stream_text(self.counted(new_ids), settings.stop)

    def counted(self, new_ids):
        try:
            for token in new_ids:
                self.tokens += 1
                yield token
        finally:  # the ids ran out, or a stop string closed the stream
            self.seconds = time.perf_counter() - self.start

    def __iter__(self):
        return self.pieces

    @property
    def rate(self):
        return self.tokens / max(self.seconds, 1e-9)
