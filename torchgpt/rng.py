"""The random state of a torch training run, saved in a checkpoint and restored on --resume.

Dropout draws from torch's generator (each process its own, so each rank's masks differ); the
CUDA generator, NumPy's and Python's global generators and the fp16 GradScaler's scale complete
the state. Saved as JSON (the `rng` of trainer_state.json), so a resumed run draws exactly the
masks the uninterrupted run would have drawn.
"""

import random

import numpy as np
import torch

from npgpt.training.settings import TrainError
from torchgpt.distributed import from_hex, gather_hex


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 -- the global generators are what gets saved
    torch.manual_seed(seed)


def rng_states(ranks, device, scaler):
    """A JSON-able snapshot: each rank's torch RNG (dropout draws from it), numpy's and
    Python's global generators, and the fp16 GradScaler. Every rank calls it: it gathers."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    states = {
        "torch": gather_hex(torch.get_rng_state(), ranks, device),
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "python": [version, list(internal), gauss],
    }
    if device.type == "cuda":
        states["cuda"] = gather_hex(torch.cuda.get_rng_state(device), ranks, device)
    if scaler.is_enabled():
        states["scaler"] = scaler.state_dict()
    return states


def restore_rng_states(states, ranks, device, scaler, seed, step):
    """Undo `rng_states` on every rank. A checkpoint from the numpy backend, or from a run
    with another number of processes, has no torch state for this rank: its dropout then
    starts afresh from the seed, the step and the rank (the run continues, not bit for bit).
    A state that cannot be restored (a damaged trainer_state.json) is a TrainError."""
    if not isinstance(states, dict | None):
        raise TrainError("--resume: the checkpoint's rng (trainer_state.json) is not an object")
    try:
        restore_saved(states, ranks, device, scaler, seed, step)
    except (LookupError, TypeError, ValueError, OverflowError, RuntimeError) as err:
        raise TrainError(
            f"--resume: the checkpoint's rng (trainer_state.json) is not a torch run's RNG "
            f"state ({type(err).__name__}: {err})"
        ) from None


def restore_saved(states, ranks, device, scaler, seed, step):
    torch_states = (states or {}).get("torch")
    if torch_states is None or len(torch_states) != ranks.world_size:
        seed_everything(hash((seed, step, ranks.rank)) % 2**32)
        return
    torch.set_rng_state(from_hex(torch_states[ranks.rank]))
    if device.type == "cuda" and len(states.get("cuda", ())) == ranks.world_size:
        torch.cuda.set_rng_state(from_hex(states["cuda"][ranks.rank]), device)
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "scaler" in states and scaler.is_enabled():
        scaler.load_state_dict(states["scaler"])


def local_rng_state(device):
    """This process's generators that dropout draws from: what a step abandoned in the middle
    (npgpt.training.stopping) puts back, so that its draws never happened."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def set_local_rng_state(state, device):
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
