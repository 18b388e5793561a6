"""The page's Chainlit callbacks: every message is a prompt, the answer streams in as it is sampled.

One model, many sessions. The checkpoint is loaded once (on first use, under a lock) and shared
read-only by every browser session; each session keeps its own sampling settings in Chainlit's
per-session store, and each answer runs its own generation iterator with its own KV cache and
random generator, so two people generating at once never see each other's tokens.

Off the event loop. Sampling a token is seconds of NumPy (or PyTorch) work on a big model. The
server's event loop also carries every other session's messages, so each token is computed in a
worker thread (`asyncio.to_thread(next, tokens)`), and the loop only forwards finished pieces of
text to the browser. Two sessions generate in two threads at the same time.

What the model cannot serve is said in the chat, and the server keeps running: a checkpoint that
is missing or unreadable (retried on the next message, so it may appear later), a setting the
sampler rejects, a prompt longer than the model's context window. The window slides over the
model's own output, but a prompt that alone overflows it would lose its beginning unseen.
"""

import asyncio
import functools
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import chainlit as cl
import click
from chainlit.input_widget import NumberInput, TextInput

from cli import load_generator
from npgpt.config import PRESETS
from npgpt.generate import stream_text
from npgpt.names import num_params
from npgpt.tokenizer import get_tokenizer
from webapp import serve, settings

LOAD_LOCK = threading.Lock()
DONE = object()  # what `next` returns once the answer is complete


class ModelUnavailable(Exception):
    """The server's checkpoint cannot be loaded (yet)."""


@functools.cache
def load_cached():
    checkpoint = os.environ[serve.ENV_CHECKPOINT]
    backend = os.environ[serve.ENV_BACKEND]
    try:
        config, run, description = load_generator(
            checkpoint, backend, os.environ[serve.ENV_DEVICE], os.environ[serve.ENV_DTYPE]
        )
    except click.ClickException as err:
        raise ModelUnavailable(err.message) from None
    shape = config.replace(drop_rate=0.0)  # dropout is off when generating anyway
    layout = next(
        (name for name, preset in PRESETS.items() if preset.replace(drop_rate=0.0) == shape),
        "custom",
    )
    summary = (
        f"**{Path(checkpoint).name}** · {layout} layout ({config.n_layers} layers, "
        f"width {config.emb_dim}, context {config.context_length}) · "
        f"{num_params(config) / 1e6:.2f}M parameters · {description}"
    )
    return config, run, summary


def load_model():
    """(config, run, summary) of the server's checkpoint; failures are not cached."""
    with LOAD_LOCK:
        return load_cached()


def settings_widgets():
    """The settings panel: number boxes for required fields, text boxes (empty = off) for others."""
    widgets = []
    for key, (label, _, required, accepts) in settings.FIELDS.items():
        if required:
            initial = settings.DEFAULTS[key]
            widgets.append(NumberInput(id=key, label=label, initial=initial, description=accepts))
        else:
            empty = accepts.rsplit("empty = ", 1)[1]  # "off" or "random"
            widgets.append(TextInput(id=key, label=label, placeholder=empty, description=accepts))
    return widgets


def encode_prompt(text):
    """The CLI's encoding of a prompt: a typed `<|endoftext|>` is the special token."""
    return get_tokenizer().encode(text, allowed_special={"<|endoftext|>"})


async def say_problem(text):
    await cl.Message(content=f"⚠️ {text}", author="npgpt").send()


def fenced(text):
    """`text` as a Markdown code block shown verbatim: the fence is longer than any ``` inside."""
    ticks = 4
    while "`" * ticks in text:
        ticks += 1
    return "`" * ticks + "text\n" + text + "\n" + "`" * ticks


@cl.on_app_startup
async def warm_up():
    try:
        await asyncio.to_thread(load_model)
    except ModelUnavailable as err:
        print(f"npgpt: {err} (the page says so until it loads)", file=sys.stderr)


@cl.on_app_shutdown
def remove_app_dir():
    shutil.rmtree(os.environ[serve.ENV_APP_DIR], ignore_errors=True)


@cl.on_chat_start
async def start():
    await cl.ChatSettings(settings_widgets()).send()
    try:
        _, _, summary = await asyncio.to_thread(load_model)
    except ModelUnavailable as err:
        await say_problem(f"No model to answer with: {err}. Each message tries to load it again.")
        return
    await cl.Message(content=f"Model: {summary}", author="npgpt").send()


@cl.on_settings_update
async def settings_changed(values):
    try:
        settings.parse(values)
    except settings.SettingsError as err:
        await say_problem(f"Invalid setting: {err}. Fix it in the settings panel.")


@cl.on_message
async def answer(message):
    try:
        config, run, summary = await asyncio.to_thread(load_model)
    except ModelUnavailable as err:
        await say_problem(f"No model to answer with: {err}. Each message tries to load it again.")
        return
    try:
        sampling = settings.parse(cl.user_session.get("chat_settings") or settings.DEFAULTS)
    except settings.SettingsError as err:
        await say_problem(f"Invalid setting: {err}. Fix it in the settings panel.")
        return
    prompt_ids = await asyncio.to_thread(encode_prompt, message.content)
    if len(prompt_ids) > config.context_length:
        await say_problem(
            f"The prompt is {len(prompt_ids)} tokens, but this model reads at most "
            f"{config.context_length} (its context window): shorten it by "
            f"{len(prompt_ids) - config.context_length} tokens."
        )
        return
    count = 0

    def counted(ids):
        nonlocal count
        for token in ids:
            count += 1
            yield token

    reply = cl.Message(content="````text\n", author="npgpt")  # streams inside an open code block
    text = ""
    start_time = time.perf_counter()
    pieces = stream_text(counted(run(prompt_ids, sampling)))
    while (piece := await asyncio.to_thread(next, pieces, DONE)) is not DONE:
        text += piece
        await reply.stream_token(piece)
    seconds = time.perf_counter() - start_time
    shown = fenced(text) if text else "*(no text: `<|endoftext|>` came first, or 0 new tokens)*"
    speed = f"{count} tokens in {seconds:.2f} s · {count / max(seconds, 1e-9):.1f} tokens/s"
    reply.content = f"{shown}\n\n*{speed} · {summary}*"
    await (reply.update() if reply.streaming else reply.send())  # no token: nothing sent yet
