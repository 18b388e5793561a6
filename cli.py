"""npgpt's command line: train, generate, evaluate, fetch and convert GPT-2 weights, serve a page.

    python cli.py generate --checkpoint DIR --prompt "Hello" --backend numpy|torch

stdout carries only what a command produces (for `generate`: the prompt and the generated text);
progress and timings go to stderr. A user error prints one line and exits with status 1.
"""

import sys
import time

import click

BACKENDS = ("numpy", "torch")


def fail(message):
    """A user error: one clear line on stderr, no traceback, exit status 1."""
    raise click.ClickException(message)


def require_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        fail('--backend torch needs PyTorch: pip install -e ".[torch]"')


def torch_model(config, params, device, dtype):
    """A torchgpt.GPT holding `params` on `device` (auto|cpu|cuda|mps)."""
    require_torch()
    from torchgpt.device import resolve_device, resolve_dtype
    from torchgpt.model import GPT

    try:
        torch_device = resolve_device(device)
    except ValueError as err:
        fail(str(err))
    return GPT.from_params(config, params, device=torch_device, dtype=resolve_dtype(dtype))


@click.group()
def main():
    """GPT-2 in NumPy with hand-written backward passes, and its PyTorch twin."""


# ---- generate ------------------------------------------------------------------------------


def load_generator(checkpoint, backend, device="auto", dtype="float32"):
    """(config, a function prompt_ids, settings, use_kv_cache -> iterator of ids, description)."""
    import numpy as np

    from npgpt.config import ConfigError
    from npgpt.weights.checkpoint import CheckpointError
    from npgpt.weights.formats import load

    np_dtype = np.float64 if dtype == "float64" else np.float32
    try:
        config, params = load(checkpoint, dtype=np_dtype)
    except FileNotFoundError as err:
        fail(f"no checkpoint at {checkpoint}: {err}")
    except (CheckpointError, ConfigError, OSError) as err:
        fail(f"cannot load checkpoint {checkpoint}: {err}")
    if backend == "numpy":
        from npgpt.generate import generate

        def run(prompt_ids, settings, use_kv_cache=True):
            return generate(params, config, prompt_ids, settings, use_kv_cache)

        return config, run, "numpy"
    from torchgpt.generate import generate as torch_generate

    model = torch_model(config, params, device, dtype)

    def run(prompt_ids, settings, use_kv_cache=True):
        return torch_generate(model, prompt_ids, settings, use_kv_cache)

    return config, run, f"torch on {next(model.parameters()).device}"


@main.command()
@click.option(
    "--checkpoint", required=True, help="Checkpoint directory, weights file or run directory."
)
@click.option("--prompt", default="", help="Text to continue ('' starts from <|endoftext|>).")
@click.option("--max-new-tokens", default=50, show_default=True, type=int)
@click.option("--temperature", default=1.0, show_default=True, type=float, help="0 = greedy.")
@click.option("--top-k", default=None, type=int, help="Keep the k most probable tokens.")
@click.option("--top-p", default=None, type=float, help="Nucleus sampling mass in (0, 1].")
@click.option("--seed", default=None, type=int, help="Seed of the sampler.")
@click.option("--stop", multiple=True, help="Stop before this string (repeatable).")
@click.option("--no-kv-cache", is_flag=True, help="Recompute the whole window for each token.")
@click.option("--stream/--no-stream", default=True, show_default=True)
@click.option("--backend", type=click.Choice(BACKENDS), default="numpy", show_default=True)
@click.option("--device", default="auto", show_default=True, help="torch: auto|cpu|cuda|mps.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32")
def generate(
    checkpoint,
    prompt,
    max_new_tokens,
    temperature,
    top_k,
    top_p,
    seed,
    stop,
    no_kv_cache,
    stream,
    backend,
    device,
    dtype,
):
    """Continue PROMPT with a trained model; prints the prompt and the generated text."""
    from npgpt.generate import stream_text
    from npgpt.sampling import SamplingSettings
    from npgpt.tokenizer import get_tokenizer

    try:
        settings = SamplingSettings(temperature, top_k, top_p, max_new_tokens, seed, tuple(stop))
    except ValueError as err:
        fail(str(err))
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as err:  # undecodable bytes on the command line
        fail(f"--prompt is not text: character {err.start} is not valid UTF-8; pass UTF-8 text")
    config, run, description = load_generator(checkpoint, backend, device, dtype)
    prompt_ids = get_tokenizer().encode(prompt, allowed_special={"<|endoftext|>"})
    start, count = time.perf_counter(), 0

    def counted(ids):
        nonlocal count
        for token in ids:
            count += 1
            yield token

    pieces = stream_text(counted(run(prompt_ids, settings, not no_kv_cache)), settings.stop)
    if stream:
        click.echo(prompt, nl=False)
        for piece in pieces:
            click.echo(piece, nl=False)
        click.echo()
    else:
        click.echo(prompt + "".join(pieces))
    seconds = time.perf_counter() - start
    click.echo(
        f"{count} tokens in {seconds:.2f} s ({count / max(seconds, 1e-9):.1f} tokens/s, "
        f"{description})",
        err=True,
    )


# ---- train, eval ---------------------------------------------------------------------------


def train_option(setting):
    """The click option of one training setting (npgpt.training.settings declares them all).
    Its default is None, so that `train` knows which flags were typed; the setting's own
    default applies unless the resumed run or a --config file says otherwise."""
    shown = f" [default: {setting.default}]" if setting.default not in (None, ()) else ""
    if setting.value_type is bool:
        return click.option(setting.flag, is_flag=True, default=None, help=setting.help)
    kind = click.Choice(setting.choices) if setting.choices else setting.value_type
    return click.option(
        setting.flag,
        type=kind,
        default=None,
        multiple=setting.repeatable,
        help=setting.help + shown,
    )


def train_options(command):
    from npgpt.training.settings import SETTINGS

    for setting in reversed(SETTINGS.values()):
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
    """Train a GPT (from scratch or --resume) on text files or the built-in corpus.

    Several GPUs: torchrun --nproc_per_node N cli.py train --backend torch ..."""
    from npgpt.training.loop import train as run_training
    from npgpt.training.run_directory import resumed_settings
    from npgpt.training.settings import TrainError, resolve_settings

    given = {key: value for key, value in flags.items() if value not in (None, ())}
    try:
        resumed = None if resume is None else resumed_settings(resume)
        settings = resolve_settings(given, config_file, resumed)
        run_training(settings, training_backend(settings.backend), resume, progress)
    except TrainError as err:
        fail(str(err))


def eval_function(params, config, backend, device, dtype):
    """(x, y) -> mean loss, for the chosen backend."""
    if backend == "numpy":
        from npgpt.model import forward

        return lambda x, y: float(forward(params, config, x, y)[1])
    model = torch_model(config, params, device, dtype).eval()
    torch_device = next(model.parameters()).device
    import torch

    def loss(x, y):
        with torch.no_grad():
            as_tensor = lambda a: torch.from_numpy(a).to(torch_device)  # noqa: E731
            return float(model(as_tensor(x), as_tensor(y))[1])

    return loss


@main.command(name="eval")
@click.option(
    "--checkpoint", required=True, help="Checkpoint directory, weights file or run directory."
)
@click.option("--data", multiple=True, help="Text file or glob (default: built-in validation).")
@click.option("--val-fraction", default=0.1, show_default=True, help="Built-in corpus split.")
@click.option("--context-length", type=int, default=None, help="Default: the model's.")
@click.option("--stride", type=int, default=None, help="Default: the context length.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--max-batches", type=click.IntRange(min=1), default=None, help="Default: all.")
@click.option("--backend", type=click.Choice(BACKENDS), default="numpy", show_default=True)
@click.option("--device", default="auto", show_default=True, help="torch: auto|cpu|cuda|mps.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32")
@click.option("--cache-dir", default=None, help="Token-id cache (default: ~/.cache/npgpt).")
def evaluate(
    checkpoint,
    data,
    val_fraction,
    context_length,
    stride,
    batch_size,
    max_batches,
    backend,
    device,
    dtype,
    cache_dir,
):
    """Loss and perplexity of a checkpoint on text files or the built-in validation split."""
    import math

    import numpy as np

    from npgpt.config import ConfigError
    from npgpt.training import corpus
    from npgpt.training.windows import Windows, split
    from npgpt.weights.checkpoint import CheckpointError
    from npgpt.weights.formats import load

    try:
        config, params = load(checkpoint, dtype=np.float64 if dtype == "float64" else np.float32)
    except FileNotFoundError as err:
        fail(f"no checkpoint at {checkpoint}: {err}")
    except (CheckpointError, ConfigError, OSError) as err:
        fail(f"cannot load checkpoint {checkpoint}: {err}")
    T = context_length or config.context_length
    if not 0 < T <= config.context_length:
        fail(f"--context-length must be in [1, {config.context_length}] for this model, got {T}")
    stride = stride or T
    if stride < 1:
        fail(f"--stride must be >= 1, got {stride}")
    try:
        docs, source = corpus.load_documents(data)
        ids = corpus.token_ids(docs, cache_dir)
        if data:
            if len(ids) < T + 1:
                split(ids, T, stride, 0.5, source)  # raises the too-short error
            windows = Windows(ids, T, stride)
        else:
            windows = split(ids, T, stride, val_fraction, source)[1]
            source += " validation split"
    except corpus.DataError as err:
        fail(str(err))
    loss_of = eval_function(params, config, backend, device, dtype)
    starts = list(range(0, len(windows), batch_size))[:max_batches]
    losses, counts = [], []
    for start in starts:
        indices = list(range(start, min(start + batch_size, len(windows))))
        losses.append(loss_of(*windows.batch(indices)))
        counts.append(len(indices))
    loss = float(np.average(losses, weights=counts))
    click.echo(f"loss {loss:.4f}  perplexity {math.exp(loss):.2f}")
    click.echo(f"{sum(counts)} windows of {T} tokens from {source} ({backend}, {dtype})", err=True)


# ---- download, convert, info ---------------------------------------------------------------


WRITABLE_DTYPES = ("float32", "float16", "float64")  # what NumPy, so npgpt.save, can write
FORMAT_NAMES = {
    "safetensors": "safetensors (npgpt / Hugging Face)",
    "pytorch": "pytorch_model.bin (Hugging Face, read with torch.load(weights_only=True))",
    "openai-tf": "OpenAI TensorFlow checkpoint",
}


def load_or_fail(path, dtype=None):
    """npgpt.load, with every problem turned into one line; dtype None keeps the stored one."""
    from npgpt.config import ConfigError
    from npgpt.weights.checkpoint import CheckpointError
    from npgpt.weights.formats import detect_format, load

    try:
        kind, _ = detect_format(path)
        config, params = load(path, dtype=dtype)
    except (CheckpointError, ConfigError, OSError) as err:
        fail(f"cannot load {path}: {' '.join(str(err).split())}")
    return kind, config, params


def size_on_disk(path):
    """(bytes, file count) of a weights file, or of every file in a checkpoint directory."""
    from pathlib import Path

    path = Path(path)
    files = [p for p in path.iterdir() if p.is_file()] if path.is_dir() else [path]
    return sum(p.stat().st_size for p in files), len(files)


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
    from pathlib import Path

    import numpy as np

    from npgpt.weights.checkpoint import CONFIG_FILE, WEIGHTS_FILE, save

    if dtype == "bfloat16":
        fail("--dtype bfloat16: NumPy has no bfloat16, so npgpt cannot write it; use float16")
    if dtype is not None and dtype not in WRITABLE_DTYPES:
        fail(f"--dtype {dtype}: not one npgpt writes; choose {', '.join(WRITABLE_DTYPES)}")
    existing = [name for name in (WEIGHTS_FILE, CONFIG_FILE) if (Path(dst) / name).exists()]
    if existing and not overwrite:
        fail(f"{dst} already holds {' and '.join(existing)}; pass --overwrite to replace them")
    kind, config, params = load_or_fail(src, dtype=None if dtype is None else np.dtype(dtype))
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
    from npgpt.names import num_params
    from npgpt.weights.formats import checkpoint_path

    kind, config, params = load_or_fail(path)
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
@click.option(
    "--checkpoint", required=True, help="Checkpoint directory, weights file or run directory."
)
@click.option("--backend", type=click.Choice(BACKENDS), default="numpy", show_default=True)
@click.option("--device", default="auto", show_default=True, help="torch: auto|cpu|cuda|mps.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32")
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 = every network.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
def serve(checkpoint, backend, device, dtype, host, port):
    """A web page (Chainlit) where you type a prompt and watch the model answer."""
    from webapp.serve import PortUnavailable, chainlit_package
    from webapp.serve import serve as run_page

    if chainlit_package() is None:
        fail('serve needs Chainlit: pip install -e ".[web]"')
    try:
        run_page(checkpoint, backend, device, dtype, host, port)
    except PortUnavailable as err:
        fail(f"{err}; choose another --port")


if __name__ == "__main__":
    sys.exit(main())
