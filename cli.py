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


@click.group()
def main():
    """GPT-2 in NumPy with hand-written backward passes, and its PyTorch twin."""


# ---- generate ------------------------------------------------------------------------------


def load_generator(checkpoint, backend, device="auto", dtype="float32"):
    """(config, a function prompt_ids, settings, use_kv_cache -> iterator of ids, description)."""
    import numpy as np

    from npgpt.checkpoint import CheckpointError
    from npgpt.config import ConfigError
    from npgpt.formats import load

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
    require_torch()
    from torchgpt.device import resolve_device, resolve_dtype
    from torchgpt.generate import generate as torch_generate
    from torchgpt.model import GPT

    try:
        torch_device = resolve_device(device)
    except ValueError as err:
        fail(str(err))
    model = GPT.from_params(config, params, device=torch_device, dtype=resolve_dtype(dtype))

    def run(prompt_ids, settings, use_kv_cache=True):
        return torch_generate(model, prompt_ids, settings, use_kv_cache)

    return config, run, f"torch on {torch_device}"


@main.command()
@click.option("--checkpoint", required=True, help="Checkpoint directory or weights file.")
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


# ---- download, convert, info ---------------------------------------------------------------


WRITABLE_DTYPES = ("float32", "float16", "float64")  # what NumPy, so npgpt.save, can write
FORMAT_NAMES = {
    "safetensors": "safetensors (npgpt / Hugging Face)",
    "pytorch": "pytorch_model.bin (Hugging Face, read with torch.load(weights_only=True))",
    "openai-tf": "OpenAI TensorFlow checkpoint",
}


def load_or_fail(path, dtype=None):
    """npgpt.load, with every problem turned into one line; dtype None keeps the stored one."""
    from npgpt.checkpoint import CheckpointError
    from npgpt.config import ConfigError
    from npgpt.formats import detect_format, load

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
    from npgpt.download import DownloadError
    from npgpt.download import download as fetch

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
    file, npgpt checkpoint) as an npgpt checkpoint in DST: model.safetensors + config.json,
    which Hugging Face transformers also reads as it is."""
    from pathlib import Path

    import numpy as np

    from npgpt.checkpoint import CONFIG_FILE, WEIGHTS_FILE, save

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
    """Describe the GPT-2 weights at PATH: format, config, parameter count, dtype, size."""
    from npgpt.names import num_params

    kind, config, params = load_or_fail(path)
    size, n_files = size_on_disk(path)
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
@click.option("--checkpoint", required=True, help="Checkpoint directory or weights file.")
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
