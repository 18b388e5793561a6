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

from npgpt.names import param_shapes


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
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror})") from None
    if not isinstance(fields, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(fields).__name__}, not an object")
    return fields


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
                listed = separators.get(kind, ", ").join(names)
                lines.append(f"  {kind} ({len(names)}): {listed}")
        raise CheckpointError("\n".join(lines))
