"""The training loop, one for both backends. One step is one optimizer update:

    lr        = learning_rate(step)                          warm-up, then cosine (schedule.py)
    windows   = next batch_size * grad_accum window indices  seeded order (windows.py)
    loss      = backend.train_step(micro_batches, lr, ...)   forward + backward per micro-batch,
                                                             mean gradient, clip, AdamW (backend.py)
    every eval_every steps:    train and validation loss on FIXED batches (the same windows each
                               time, so the curve shows the model, not batch noise)
    every sample_every steps:  a sample from a fixed prompt, with a fixed seed
    every save_every steps and at the end: a checkpoint, the metrics file and the loss plot
                               (run_directory.py)

What changes from step to step is a `RunState` (step, tokens seen, data position, metrics
records); what stays put is a `Job`. A run starts from `model.init_params`, or from the weights
`--init-from` names (fine_tune.py). Resume (`--resume DIR`) restores the RunState and the
backend's state, so a resumed run takes exactly the steps the uninterrupted run would have: same
batches, same dropout masks, same learning rates; in float64 the NumPy backend's parameters,
moments and losses match bit for bit (tests/test_train.py).

SIGTERM or SIGINT stops the run at the next micro-batch boundary with the checkpoint of its last
finished step saved (stopping.py); a write that fails (a full disk) stops it with the previous
checkpoint intact (run_directory.py).
"""

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from npgpt import model, optim
from npgpt.config import GPTConfig
from npgpt.schedule import learning_rate
from npgpt.tokenizer import get_tokenizer
from npgpt.training import dataset, fine_tune, metrics, run_directory, stopping, windows
from npgpt.training.backend import Backend, BackendState
from npgpt.training.corpus import DataError
from npgpt.training.plot import plot_losses
from npgpt.training.run_directory import CHECKPOINT_DIR, METRICS_FILE, PLOT_FILE, RunState
from npgpt.training.settings import (
    DTYPES,
    TrainError,
    TrainSettings,
    check_settings,
    model_config,
    sampling_settings,
    total_steps,
)


@dataclasses.dataclass(frozen=True)
class Job:
    """What a run is, fixed from its start to its end."""

    settings: TrainSettings
    config: GPTConfig
    train_windows: windows.Windows
    val_windows: windows.Windows
    source: str  # where the text comes from, for the messages
    max_steps: int
    out: Path  # the run directory
    backend: Backend

    @property
    def tokens_per_step(self):
        return self.settings.batch_size * self.settings.grad_accum * self.config.context_length


def train(settings, make_backend, resume=None, progress=True):
    """Run (or continue, from the checkpoint at `resume`) a training run; return the last
    metrics record. Every user error is raised as TrainError before anything is written; a
    failed write as run_directory.WriteError; a stop on a signal as stopping.Stopped."""
    check_settings(settings)
    resume_dir = None if resume is None else run_directory.find_checkpoint(resume)
    config, start_params = starting_model(settings, resume_dir)
    train_windows, val_windows, source = load_data(settings, config)
    out = run_directory.out_dir(settings)
    run, state = begin(settings, config, out, resume_dir, start_params, len(train_windows))
    backend = make_backend(config, settings, state, run.step)
    max_steps = total_steps(settings, len(train_windows))
    job = Job(settings, config, train_windows, val_windows, source, max_steps, out, backend)
    if backend.is_main:
        run_directory.start(out, run.records)
        print(headline(job), file=sys.stderr)
    with stopping.on_signals(backend.agreed_stop, show=backend.is_main) as stop:
        run_steps(job, run, stop, progress)
        backend.close()
    return finish(job, run, stop)


def run_steps(job, run, stop, progress):
    """The steps from `run` to the end, or until every process agrees to stop (stopping.py)."""
    settings, backend, max_steps = job.settings, job.backend, job.max_steps
    if not run.records:  # a fresh run: the untrained model's losses are step 0's
        first = {"step": 0, "tokens": 0, "loss": None, "lr": None, "tokens_per_s": None}
        log(job, run, evaluate(job, first))
    shown = progress and backend.is_main
    bar = tqdm(total=max_steps, initial=run.step, disable=not shown, file=sys.stderr, unit="step")
    saved = None  # the step of the checkpoint last written
    while run.step < max_steps and not stop.now():
        lr = learning_rate(run.step, settings.lr, settings.min_lr, settings.warmup_steps, max_steps)
        micro_batches, position = next_micro_batches(job, run.position)
        start = time.perf_counter()
        result = backend.train_step(micro_batches, lr, stop.now)
        if result is None:  # stopped between two micro-batches: the step was undone
            break
        seconds = time.perf_counter() - start
        loss, _ = result
        run.step, run.tokens = run.step + 1, run.tokens + job.tokens_per_step
        run.position = position  # taken only now: an abandoned step leaves it where it was
        speed = job.tokens_per_step / seconds
        record = dict(step=run.step, tokens=run.tokens, loss=loss, lr=lr, tokens_per_s=speed)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{speed:.0f}")
        last = run.step == max_steps
        if run.step % settings.eval_every == 0 or last:
            record = evaluate(job, record)
        log(job, run, record)
        if (run.step % settings.sample_every == 0 or last) and settings.sample_tokens:
            show_sample(job, run.step)
        if run.step % settings.save_every == 0 or last:
            save(job, run)
            saved = run.step
    bar.close()
    if stop.agreed and saved != run.step:
        save(job, run)


def finish(job, run, stop):
    """The last word, from the main process: where the checkpoint is. A stopped run then raises
    `Stopped` in every process (the command exits with its status)."""
    where = job.out / CHECKPOINT_DIR
    if not stop.agreed:
        if job.backend.is_main:
            print(f"checkpoint: {where}", file=sys.stderr)
        return run.records[-1]
    message = (
        f"stopped by {stopping.signal_name(stop.agreed)} after step {run.step} of "
        f"{job.max_steps}: checkpoint {where}; continue with --resume {job.out}"
    )
    if job.backend.is_main:
        print(message, file=sys.stderr)
    raise stopping.Stopped(message, stop.agreed)


def load_data(settings, config):
    """(train Windows, validation Windows, where the text comes from)."""
    stride = settings.stride or config.context_length
    try:
        return dataset.training_windows(
            settings.data, config.context_length, stride, settings.val_fraction, settings.cache_dir
        )
    except DataError as err:
        raise TrainError(str(err)) from None


def starting_model(settings, resume_dir):
    """(config, params): the model's shape, and the weights a fresh fine-tuning run starts from
    (None: `begin` finds them). A resumed fine-tuning run takes its shape from its own
    checkpoint: the one it started from is not read again (it may be gone)."""
    if settings.init_from is None:
        return model_config(settings), None
    if resume_dir is not None:
        return run_directory.saved_config(resume_dir), None
    return fine_tune.start_model(settings)


def begin(settings, config, out, resume_dir, start_params, num_windows):
    """(RunState, BackendState) to start from: the checkpoint in `resume_dir` (whose position
    must lie within the run's `num_windows` training windows), or a fresh run from
    `start_params` (fine-tuning) or from `model.init_params`."""
    run_directory.refuse_another_run(out, resume_dir)
    dtype = DTYPES[settings.dtype]
    if resume_dir is not None:
        return run_directory.load(resume_dir, config, dtype, num_windows)
    params = start_params
    if params is None:
        params = model.init_params(config, seed=settings.seed, dtype=dtype)
    return RunState(), BackendState(params, optim.init_state(params), None)


def model_name(settings):
    """What the run trains, in its messages: the preset, or the checkpoint it fine-tunes."""
    return settings.preset if settings.init_from is None else settings.init_from


def headline(job):
    verb = "training" if job.settings.init_from is None else "fine-tuning"
    return (
        f"{verb} {model_name(job.settings)} ({job.backend.description}) on {job.source}: "
        f"{len(job.train_windows)} train / {len(job.val_windows)} validation windows of "
        f"{job.config.context_length} tokens, {job.max_steps} steps of {job.tokens_per_step} "
        f"tokens -> {job.out}"
    )


def next_micro_batches(job, position):
    """The next step's grad_accum micro-batches of batch_size windows, and the position after."""
    B = job.settings.batch_size
    indices, position = windows.next_indices(
        len(job.train_windows), B * job.settings.grad_accum, job.settings.seed, position
    )
    micro_batches = [job.train_windows.batch(indices[i : i + B]) for i in range(0, len(indices), B)]
    return micro_batches, position


def fixed_batches(job, split_windows):
    """The evaluation batches: the same windows, spread over the split, at every evaluation."""
    B = job.settings.batch_size
    indices = windows.fixed_indices(len(split_windows), job.settings.eval_batches * B)
    return [split_windows.batch(indices[i : i + B]) for i in range(0, len(indices), B)]


def mean_loss(job, split_windows):
    losses = [job.backend.eval_loss(x, y) for x, y in fixed_batches(job, split_windows)]
    return float(np.mean(losses))


def evaluate(job, record):
    """`record` with the train and validation loss on the fixed batches added, and shown."""
    record = record | {
        "train_loss": mean_loss(job, job.train_windows),
        "val_loss": mean_loss(job, job.val_windows),
    }
    losses = f"train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}"
    show(job, f"step {record['step']}: {losses}")
    return record


def show(job, message):
    """A line on stdout from the main process, above the progress bar."""
    if job.backend.is_main:
        tqdm.write(message, file=sys.stdout)


def show_sample(job, step):
    if job.backend.is_main:
        prompt = job.settings.sample_prompt
        prompt_ids = get_tokenizer().encode(prompt, allowed_special={"<|endoftext|>"})
        ids = job.backend.sample(prompt_ids, sampling_settings(job.settings))
        show(job, f"sample at step {step}: {prompt}{get_tokenizer().decode(ids)}")


def log(job, run, record):
    run.records.append(record)
    if job.backend.is_main:
        with run_directory.writing(job.out / METRICS_FILE, f"the metrics of step {run.step}"):
            metrics.append(job.out / METRICS_FILE, record)


def save(job, run):
    """A checkpoint and the loss plot. Every process hands in its state; the main one writes."""
    state = job.backend.state()
    if job.backend.is_main:
        run_directory.save(job.out, job.config, job.settings, job.max_steps, run, state)
        title = f"{model_name(job.settings)} on {job.source}"
        with run_directory.writing(job.out / PLOT_FILE, f"the loss plot of step {run.step}"):
            plot_losses(run.records, job.out / PLOT_FILE, title=title)
