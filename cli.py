"""npgpt's command line: train, generate, evaluate, fetch and convert GPT-2 weights, serve a page.

    python cli.py generate --checkpoint DIR --prompt "Hello" --backend numpy|torch

stdout carries only what a command produces (for `generate`: the prompt and the generated text);
progress and timings go to stderr. A user error prints one line and exits with status 1.

generate, eval, convert, info and serve are thin over `frontend.py` (a checkpoint on a backend,
its `UserError`s), which the web page shares; generate's sampling flags are made from the
settings `npgpt/sampling.py` declares.
"""

import math
import sys
from pathlib import Path

import click
import numpy as np

from frontend import Generation, UserError, encode_prompt, load_checkpoint, load_model
from npgpt.names import num_params
from npgpt.sampling import SETTINGS, SamplingSettings
from npgpt.training.settings import BACKENDS, DTYPES
from npgpt.weights.checkpoint import save
from npgpt.weights.formats import CONFIG_FILE, WEIGHTS_FILE, checkpoint_path


def fail(message):
    """A user error: one clear line on stderr, no traceback, exit status 1."""
    raise click.ClickException(message)


def require_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        fail('--backend torch needs PyTorch: pip install -e ".[torch]"')


class Commands(click.Group):
    """npgpt's commands; a front end's `UserError` becomes Click's one-line error (status 1)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as err:
            raise click.ClickException(str(err)) from None


@click.group(cls=Commands)
def main():
    """GPT-2 in NumPy with hand-written backward passes, and its PyTorch twin."""


def model_options(command):
    """--checkpoint, --backend, --device, --dtype: the model a command loads, and where it runs."""
    options = (
        click.option(
            "--checkpoint",
            required=True,
            help="Checkpoint directory, weights file or run directory.",
        ),
        click.option("--backend", type=click.Choice(BACKENDS), default="numpy", show_default=True),
        click.option(
            "--device", default="auto", show_default=True, help="torch: auto|cpu|cuda|mps."
        ),
        click.option(
            "--dtype", type=click.Choice(tuple(DTYPES)), default="float32", show_default=True
        ),
    )
    for option in reversed(options):
        command = option(command)
    return command


def sampling_options(command):
    """One flag per sampling setting (top_k -> --top-k), with the default and help that
    `npgpt.sampling` declares for it."""
    for setting in reversed(SETTINGS):
        option = click.option(
            "--" + setting.name.replace("_", "-"),
            type=setting.kind,
            default=setting.default,
            multiple=isinstance(setting.default, tuple),
            show_default=setting.default not in (None, ()),
            help=setting.help,
        )
        command = option(command)
    return command


# ---- generate ------------------------------------------------------------------------------


@main.command()
@model_options
@click.option("--prompt", default="", help="Text to continue ('' starts from <|endoftext|>).")
@sampling_options
@click.option("--no-kv-cache", is_flag=True, help="Recompute the whole window for each token.")
@click.option("--stream/--no-stream", default=True, show_default=True)
def generate(checkpoint, backend, device, dtype, prompt, no_kv_cache, stream, **sampling):
    """Continue PROMPT with a trained model; prints the prompt and the generated text."""
    try:
        settings = SamplingSettings(**sampling)
    except ValueError as err:
        fail(str(err))
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as err:  # undecodable bytes on the command line
        fail(f"--prompt is not text: character {err.start} is not valid UTF-8; pass UTF-8 text")
    model = load_model(checkpoint, backend, device, dtype)
    generation = Generation(model, encode_prompt(prompt), settings, use_kv_cache=not no_kv_cache)
    if stream:
        click.echo(prompt, nl=False)
        for piece in generation:
            click.echo(piece, nl=False)
        click.echo()
    else:
        click.echo(prompt + "".join(generation))
    click.echo(
        f"{generation.tokens} tokens in {generation.seconds:.2f} s ({generation.rate:.1f} "
        f"tokens/s, {model.description})",
        err=True,
    )


# ---- train, eval ---------------------------------------------------------------------------


def train_option(setting):
    """The click option of one training setting (npgpt.training.settings declares them all).
    Its default is None, so that `train` knows which flags were typed; the setting's own
    default applies unless the resumed run or a --config file says otherwise."""
    shown = [] if setting.default in (None, ()) else [f"default: {setting.default}"]
    if setting.fine_tuning not in (setting.default, None):
        shown.append(f"with --init-from: {setting.fine_tuning}")
    shown = f" [{'; '.join(shown)}]" if shown else ""
    if setting.kind is bool:
        return click.option(setting.flag, is_flag=True, default=None, help=setting.help)
    return click.option(
        setting.flag,
        type=click.Choice(setting.choices) if setting.choices else setting.kind,
        default=None,
        multiple=setting.repeatable,
        help=setting.help + shown,
    )


def train_options(command):
    from npgpt.training import settings

    for setting in reversed(settings.SETTINGS):
        command = train_option(setting)(command)
    return command


def training_backend(name):
    """The class that makes the backend for --backend NAME (npgpt.training.backend)."""
    if name == "numpy":
        from npgpt.training.backend import NumpyBackend

        return NumpyBackend
    require_torch()
    from torchgpt.training import TorchBackend

    return TorchBackend


@main.command()
@train_options
@click.option("--config", "config_file", default=None, help="TOML or JSON file of these flags.")
@click.option("--resume", default=None, help="Continue the run in this directory.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def train(config_file, resume, progress, **flags):
    """Train a GPT (from scratch, --init-from a checkpoint, or --resume) on text files or the
    built-in corpus.

    SIGTERM or Ctrl-C saves a checkpoint and exits (status 0 or 130); --resume continues.
    Several GPUs: torchrun --nproc_per_node N cli.py train --backend torch ..."""
    from npgpt.training.loop import train as run_training
    from npgpt.training.run_directory import resumed_settings
    from npgpt.training.settings import TrainError, resolve_settings
    from npgpt.training.stopping import Stopped

    given = {key: value for key, value in flags.items() if value not in (None, ())}
    try:
        resumed = None if resume is None else resumed_settings(resume)
        settings = resolve_settings(given, config_file, resumed)
        run_training(settings, training_backend(settings.backend), resume, progress)
    except TrainError as err:  # a WriteError (a full disk) too: its message says what to do
        fail(str(err))
    except Stopped as stop:  # the checkpoint is saved and the run said where
        sys.exit(stop.exit_status)


def eval_windows(data, T, stride, val_fraction, cache_dir):
    """(windows, what they are) to evaluate on (npgpt.training.dataset.evaluation_windows)."""
    from npgpt.training.corpus import DataError
    from npgpt.training.dataset import evaluation_windows

    try:
        return evaluation_windows(data, T, stride, val_fraction, cache_dir)
    except DataError as err:
        fail(str(err))


def mean_loss(loss, windows, batch_size, max_batches):
    """(mean loss per token, windows evaluated) over the first `max_batches` batches."""
    losses, counts = [], []
    for start in list(range(0, len(windows), batch_size))[:max_batches]:
        indices = list(range(start, min(start + batch_size, len(windows))))
        losses.append(loss(*windows.batch(indices)))
        counts.append(len(indices))
    return float(np.average(losses, weights=counts)), sum(counts)


@main.command(name="eval")
@model_options
@click.option(
    "--data",
    multiple=True,
    help="Text file or glob, or a prepared directory (its validation split); default: the "
    "built-in corpus' validation split.",
)
@click.option("--val-fraction", default=0.1, show_default=True, help="Built-in corpus split.")
@click.option("--context-length", type=int, default=None, help="Default: the model's.")
@click.option("--stride", type=int, default=None, help="Default: the context length.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--max-batches", type=click.IntRange(min=1), default=None, help="Default: all.")
@click.option("--cache-dir", default=None, help="Token-id cache (default: ~/.cache/npgpt).")
def evaluate(checkpoint, backend, device, dtype, data, val_fraction, context_length, stride,
             batch_size, max_batches, cache_dir):  # fmt: skip
    """Loss and perplexity of a checkpoint on text files or the built-in validation split."""
    model = load_model(checkpoint, backend, device, dtype)
    longest = model.config.context_length
    T = context_length or longest
    if not 0 < T <= longest:
        fail(f"--context-length must be in [1, {longest}] for this model, got {T}")
    stride = stride or T
    if stride < 1:
        fail(f"--stride must be >= 1, got {stride}")
    windows, source = eval_windows(data, T, stride, val_fraction, cache_dir)
    loss, count = mean_loss(model.loss, windows, batch_size, max_batches)
    click.echo(f"loss {loss:.4f}  perplexity {math.exp(loss):.2f}")
    click.echo(f"{count} windows of {T} tokens from {source} ({backend}, {dtype})", err=True)


# ---- prepare -------------------------------------------------------------------------------


@main.command()
@click.argument("data", nargs=-1, required=True)
@click.option("--out", required=True, help="Directory for the shards and manifest.json.")
@click.option("--text-field", default="text", show_default=True, help="JSON Lines field.")
@click.option("--val-fraction", default=0.1, show_default=True, help="Share held out.")
@click.option("--shard-tokens", default=1 << 25, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Default: every core.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def prepare(data, out, text_field, val_fraction, shard_tokens, workers, progress):
    """Encode text files and globs (UTF-8) and JSON Lines (.jsonl) into GPT-2 token shards
    that `train --data OUT` and `eval --data OUT` memory-map. A stopped prepare resumes when
    run again with the same arguments."""
    from npgpt.training.corpus import DataError
    from npgpt.training.prepare import describe
    from npgpt.training.prepare import prepare as prepare_corpus

    try:
        manifest = prepare_corpus(
            data, out, text_field, val_fraction, shard_tokens, workers, progress
        )
    except DataError as err:
        fail(str(err))
    click.echo(describe(manifest, out))


# ---- download, convert, info ---------------------------------------------------------------


WRITABLE_DTYPES = ("float32", "float16", "float64")  # what NumPy, so npgpt.save, can write
FORMAT_NAMES = {
    "safetensors": "safetensors (npgpt / Hugging Face)",
    "pytorch": "pytorch_model.bin (Hugging Face, read with torch.load(weights_only=True))",
    "openai-tf": "OpenAI TensorFlow checkpoint",
}


def size_on_disk(path):
    """(bytes, file count) of a weights file, or of every file in a checkpoint directory."""
    path = Path(path)
    files = [file for file in path.iterdir() if file.is_file()] if path.is_dir() else [path]
    return sum(file.stat().st_size for file in files), len(files)


def describe_dtypes(params):
    return ", ".join(sorted({str(value.dtype) for value in params.values()}))


@main.command()
@click.argument("model")
@click.option(
    "--source",
    type=click.Choice(["openai", "hf"]),
    default="openai",
    show_default=True,
    help="openai: the original TensorFlow release; hf: Hugging Face's model.safetensors.",
)
@click.option("--dir", "directory", default=None, help="Default: models/MODEL[-hf].")
@click.option("--base-url", default=None, help="A mirror with the same layout.")
def download(model, source, directory, base_url):
    """Fetch GPT-2 weights: MODEL is gpt2, gpt2-medium, gpt2-large or gpt2-xl. Resumes partial
    files; files verified by an earlier run are skipped. Prints the directory."""
    from npgpt.weights.download import DownloadError
    from npgpt.weights.download import download as fetch

    directory = directory or f"models/{model}" + ("-hf" if source == "hf" else "")
    try:
        fetch(model, directory, source=source, base_url=base_url)
    except DownloadError as err:
        fail(str(err))
    click.echo(directory)
    click.echo(f"generate with: python cli.py generate --checkpoint {directory}", err=True)


@main.command()
@click.argument("src")
@click.argument("dst")
@click.option("--dtype", default=None, help="float32, float16 or float64 (default: as stored).")
@click.option("--overwrite", is_flag=True, help="Replace a checkpoint already in DST.")
def convert(src, dst, dtype, overwrite):
    """Rewrite the GPT-2 weights at SRC (OpenAI TensorFlow checkpoint, Hugging Face directory or
    file, npgpt checkpoint or training run directory) as an npgpt checkpoint in DST:
    model.safetensors + config.json, which Hugging Face transformers also reads as it is."""
    if dtype == "bfloat16":
        fail("--dtype bfloat16: NumPy has no bfloat16, so npgpt cannot write it; use float16")
    if dtype is not None and dtype not in WRITABLE_DTYPES:
        fail(f"--dtype {dtype}: not one npgpt writes; choose {', '.join(WRITABLE_DTYPES)}")
    existing = [name for name in (WEIGHTS_FILE, CONFIG_FILE) if (Path(dst) / name).exists()]
    if existing and not overwrite:
        fail(f"{dst} already holds {' and '.join(existing)}; pass --overwrite to replace them")
    kind, config, params = load_checkpoint(src, None if dtype is None else np.dtype(dtype))
    save(dst, config, params)
    size, _ = size_on_disk(Path(dst) / WEIGHTS_FILE)
    click.echo(dst)
    click.echo(
        f"converted {FORMAT_NAMES[kind]} -> npgpt / Hugging Face safetensors "
        f"({describe_dtypes(params)}, {size / 1e6:.1f} MB)",
        err=True,
    )


@main.command()
@click.argument("path")
def info(path):
    """Describe the GPT-2 weights at PATH (any checkpoint `generate` reads, or a training run
    directory): format, config, parameter count, dtype, size."""
    kind, config, params = load_checkpoint(path)
    size, n_files = size_on_disk(checkpoint_path(path))
    fields = " ".join(
        f"{key}={value}" for key, value in config.to_dict().items() if key != "drop_rate"
    )
    rows = [
        ("format", FORMAT_NAMES[kind]),
        ("config", fields),
        ("parameters", f"{num_params(config):,}"),
        ("dtype", describe_dtypes(params)),
        ("size on disk", f"{size / 1e6:.1f} MB in {n_files} file{'s' if n_files > 1 else ''}"),
    ]
    for key, value in rows:
        click.echo(f"{key:<14}{value}")


# ---- serve ---------------------------------------------------------------------------------


@main.command()
@model_options
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="127.0.0.1 = this machine only; 0.0.0.0 = every network (then a password is needed).",
)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--password-file",
    help="A file, readable by you alone, holding the page's password "
    "(or set NPGPT_WEB_PASSWORD). Required beyond this machine.",
)
@click.option(
    "--no-auth",
    is_flag=True,
    help="Serve beyond this machine without a password: anyone who reaches the port can use it.",
)
def serve(checkpoint, backend, device, dtype, host, port, password_file, no_auth):
    """A web page (Chainlit) where you type a prompt and watch the model answer."""
    from webapp.access import is_loopback, server_login
    from webapp.serve import PortUnavailable, chainlit_package
    from webapp.serve import serve as run_page

    if chainlit_package() is None:
        fail('serve needs Chainlit: pip install -e ".[web]"')
    login = server_login(host, password_file, no_auth)
    if no_auth and not is_loopback(host):
        click.echo(
            f"npgpt: warning: --no-auth: anyone who can reach {host}:{port} can use the model, "
            "with no password",
            err=True,
        )
    try:
        run_page(checkpoint, backend, device, dtype, host, port, login)
    except PortUnavailable as err:
        fail(f"{err}; choose another --port")


if __name__ == "__main__":
    sys.exit(main())
