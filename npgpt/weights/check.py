"""The one check every set of GPT-2 weights passes, whichever file it came from or goes to.

Weights are a GPT-2 of a config when they hold exactly the names `npgpt.names.param_shapes`
lists, each with its shape, each floating point. `npgpt.load` checks what it read (from every
format), `npgpt.save` and the OpenAI writer check what they are given, and the PyTorch twin
checks what it is handed. A failure lists every offending tensor at once, naming the file, so
that one read of the message says everything that is wrong.

>>> import numpy as np
>>> from npgpt.config import GPTConfig
>>> from npgpt.model import init_params
>>> cfg = GPTConfig(vocab_size=5, context_length=4, emb_dim=4, n_heads=1, n_layers=1)
>>> params = init_params(cfg) | {"ln_f.bias": np.zeros(4, np.int32)}
>>> check_params(params, cfg, source="w.safetensors")
Traceback (most recent call last):
...
npgpt.weights.check.CheckpointError: w.safetensors does not match the config ...
  not floating point (1): ln_f.bias: int32
"""

import json
from pathlib import Path

from npgpt.names import num_params, param_shapes

SMALLEST_FLOAT_BYTES = 2  # float16 and bfloat16: no set of weights stores a parameter in fewer
LISTED_NAMES = 20  # a message lists this many offending tensors of a kind, then counts the rest


class CheckpointError(ValueError):
    """Weights on disk (or in hand) that cannot be read as a GPT-2 of the stated config."""


def read_json_object(path, missing):
    """The JSON object (a dict) in the file at `path`; anything else is a CheckpointError naming
    the file, `missing` saying what to do when it does not exist."""
    path = Path(path)
    try:
        fields = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {missing}") from None
    # ValueError: bad JSON, bytes that are not UTF-8, an integer of more than 4300 digits;
    # RecursionError: arrays or objects nested thousands deep
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror})") from None
    if not isinstance(fields, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(fields).__name__}, not an object")
    return fields


def check_size(config, config_source, weights_bytes, weights_source):
    """Refuse a config whose parameters cannot fit in `weights_bytes` (the size of the weights
    files), before anything as large as the config says is built: n_layers = 10**9 beside a
    small file would otherwise make a name and a shape for each of 1.2e10 tensors."""
    n_params = num_params(config)
    least = n_params * SMALLEST_FLOAT_BYTES
    if least > weights_bytes:
        raise CheckpointError(
            f"{config_source}: describes a model of {n_params:,} parameters, at least {least:,} "
            f"bytes ({SMALLEST_FLOAT_BYTES} per parameter), but {weights_source} holds only "
            f"{weights_bytes:,} bytes; this config does not belong to these weights"
        )


def listing(names, separator):
    """`names` joined, the first LISTED_NAMES of them, the rest counted."""
    shown = separator.join(names[:LISTED_NAMES])
    more = len(names) - LISTED_NAMES
    return shown + (f"{separator}... and {more} more" if more > 0 else "")


def check_params(params, config, source):
    """Fail with every missing, unexpected, mis-shaped and non-floating tensor listed."""
    expected = param_shapes(config)
    present = [name for name in expected if name in params]
    problems = {
        "missing keys": [name for name in expected if name not in params],
        "unexpected keys": sorted(set(params) - set(expected)),
        "mismatched shapes": [
            f"{name}: {tuple(params[name].shape)} in file, {expected[name]} expected"
            for name in present
            if tuple(params[name].shape) != expected[name]
        ],
        "not floating point": [
            f"{name}: {params[name].dtype}" for name in present if params[name].dtype.kind != "f"
        ],
    }
    if any(problems.values()):
        lines = [f"{source} does not match the config {config}:"]
        separators = {"mismatched shapes": "; ", "not floating point": "; "}
        for kind, names in problems.items():
            if names:
                listed = listing(names, separators.get(kind, ", "))
                lines.append(f"  {kind} ({len(names)}): {listed}")
        raise CheckpointError("\n".join(lines))
