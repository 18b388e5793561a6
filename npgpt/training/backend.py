"""The backend: what the training loop asks of the code that does the arithmetic.

The loop (loop.py) never touches a tensor. Once per run it makes a backend,

    make_backend(config, settings, state, step) -> Backend

      config    GPTConfig of the run
      settings  TrainSettings (settings.py)
      state     BackendState to start from: `model.init_params`, zero moments and rng None for a
                fresh run, or what a checkpoint holds
      step      updates already done (0 when fresh): the next update is number step + 1

and then calls only the methods of `Backend`. `NumpyBackend` below is npgpt's, the class
itself being its `make_backend`; `torchgpt.training.TorchBackend` is the PyTorch twin's. Both
satisfy the protocol by their methods' shapes alone: neither inherits from it.
"""

import typing

import numpy as np

from npgpt import model, optim
from npgpt.generate import generate
from npgpt.training.settings import TrainError, adamw_settings


class BackendState(typing.NamedTuple):
    """What a checkpoint holds of a backend, as NumPy arrays under npgpt's names."""

    params: dict  # {name: array}, npgpt.names
    moments: dict  # AdamW's {"exp_avg.<name>" / "exp_avg_sq.<name>": array}, npgpt.optim
    rng: typing.Any  # a JSON-serialisable RNG state that the same backend restores; None: fresh


def never():
    """A `stop_now` that never says stop: a step taken outside the loop."""
    return False


@typing.runtime_checkable
class Backend(typing.Protocol):
    """What the loop calls; each backend is a class with these members (see above)."""

    description: str  # e.g. "numpy float32", shown when the run starts
    # Whether this process prints, samples and writes the run directory: True in a single
    # process. Under data parallelism (torchgpt) every process runs the loop in lock-step and
    # only the main one has it True; the loop needs to know nothing else about the others.
    is_main: bool

    def train_step(self, micro_batches, lr, stop_now=never) -> tuple[float, float] | None:
        """One optimizer update. `micro_batches`: a list of (x, y), int64 arrays (B, T). Forward
        and backward on each (dropout on), average the gradients, clip their global norm to
        `settings.clip`, apply AdamW with learning rate `lr`. Returns the mean loss over the
        micro-batches and the gradient norm before clipping, as Python floats.

        Before each micro-batch but the first it asks `stop_now()` (every process at the same
        points: stopping.py); on True it abandons the step, undoing what the step had done
        (gradients, dropout draws), and returns None."""
        ...

    def agreed_stop(self, signum) -> int:
        """The signal every process stops for: the largest `signum` (0: none) of all processes.
        Under data parallelism an all-reduce, so all stop at the same point; else `signum`."""
        ...

    def eval_loss(self, x, y) -> float:
        """The mean loss of one batch, dropout off, no gradient."""
        ...

    def sample(self, prompt_ids, sampling) -> list[int]:
        """New token ids after `prompt_ids` (sampling: npgpt.sampling.SamplingSettings)."""
        ...

    def state(self) -> BackendState:
        """What a checkpoint saves. Every process calls it (it may gather each one's RNG
        state); the main one writes it."""
        ...

    def close(self) -> None:
        """The run is over. Returns when every process is done with it (the main one has written
        the last checkpoint), so that none tears down what the others still use."""
        ...


class NumpyBackend:
    """npgpt's backend: model.forward/backward, optim.clip_grad_norm and optim.adamw_step."""

    is_main = True

    def __init__(self, config, settings, state, step):
        self.config, self.clip = config, settings.clip
        self.params, self.moments = state.params, state.moments
        self.rng = dropout_rng(settings.seed, state.rng, step)
        self.updates = step
        self.adamw = adamw_settings(settings)
        self.description = f"numpy {settings.dtype}"

    def train_step(self, micro_batches, lr, stop_now=never):
        rng_before = self.rng.bit_generator.state  # to undo an abandoned step's dropout draws
        total, loss_sum = None, 0.0
        for i, (x, y) in enumerate(micro_batches):
            if i > 0 and stop_now():
                self.rng.bit_generator.state = rng_before
                return None
            _, loss, cache = model.forward(self.params, self.config, x, y, train=True, rng=self.rng)
            grads = model.backward(cache)
            loss_sum += float(loss)
            if total is None:
                total = grads
            else:
                for name, g in grads.items():
                    total[name] += g
        for g in total.values():
            g /= len(micro_batches)  # the gradient of the mean loss over micro-batches
        norm = optim.clip_grad_norm(total, self.clip)
        self.updates += 1
        optim.adamw_step(self.params, total, self.moments, self.updates, lr, self.adamw)
        return loss_sum / len(micro_batches), norm

    def agreed_stop(self, signum):
        return signum  # one process: its own request is the agreement

    def eval_loss(self, x, y):
        return float(model.forward(self.params, self.config, x, y)[1])

    def sample(self, prompt_ids, sampling):
        return list(generate(self.params, self.config, prompt_ids, sampling))

    def state(self):
        return BackendState(self.params, self.moments, self.rng.bit_generator.state)

    def close(self):
        pass  # one process, nothing held but arrays


def dropout_rng(seed, rng_state, step):
    """The generator of the dropout masks: from the seed for a fresh run, restored for a resumed
    one. A checkpoint of the torch backend holds torch's RNG states, which mean nothing here:
    the masks then start afresh from (seed, step) (the run continues, not bit for bit)."""
    if rng_state is None:
        return np.random.default_rng(seed)
    if "bit_generator" not in rng_state:
        return np.random.default_rng([seed, step])
    rng = np.random.default_rng(seed)
    try:
        rng.bit_generator.state = rng_state
    except (TypeError, ValueError, KeyError, OverflowError) as err:  # a damaged checkpoint
        raise TrainError(
            f"--resume: the checkpoint's rng (trainer_state.json) is not a NumPy generator "
            f"state ({type(err).__name__}: {err})"
        ) from None
    return rng
