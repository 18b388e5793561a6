"""The page's Chainlit callbacks: every message is a prompt, the answer streams in as it is sampled.

One model, many sessions. The checkpoint is loaded once (on first use, under a lock) and shared
read-only by every browser session; each session keeps its own sampling settings in Chainlit's
per-session store, and each answer runs its own generation iterator with its own KV cache and
random generator, so two people generating at once never see each other's tokens.

Off the event loop. Sampling a token is seconds of NumPy (or PyTorch) work on a big model. The
server's event loop also carries every other session's messages, so each token is computed in a
worker thread (`asyncio.to_thread(next, pieces)`), and the loop only forwards finished pieces of
text to the browser. Two sessions generate in two threads at the same time.

What the model cannot serve is said in the chat, and the server keeps running: a checkpoint that
is missing or unreadable (retried on the next message, so it may appear later), a setting the
sampler rejects, a prompt longer than the model's context window. The window slides over the
model's own output, but a prompt that alone overflows it would lose its beginning unseen.

Who may chat is settled before any of these run: on a page behind a password (`access.py`, whose
check `serve.py` registers), a connection without a valid session cookie is refused, so no chat
starts for it and no message of its reaches `answer`.
"""

import asyncio
import functools
import os
import shutil
import sys
import threading
from pathlib import Path

import chainlit as cl
from chainlit.input_widget import NumberInput, TextInput

from frontend import Generation, UserError, encode_prompt, load_model
from npgpt.config import PRESETS
from npgpt.names import num_params
from webapp import answer_format, serve, settings

LOAD_LOCK = threading.Lock()
DONE = object()  # what `next` returns once the answer is complete


@functools.cache
def load_server_model():
    """(model, summary) of the server's checkpoint; raises UserError when it cannot be loaded."""
    checkpoint = os.environ[serve.ENV_CHECKPOINT]
    model = load_model(
        checkpoint,
        os.environ[serve.ENV_BACKEND],
        os.environ[serve.ENV_DEVICE],
        os.environ[serve.ENV_DTYPE],
    )
    config = model.config
    shape = config.replace(drop_rate=0.0)  # dropout is off when generating anyway
    layout = next(
        (name for name, preset in PRESETS.items() if preset.replace(drop_rate=0.0) == shape),
        "custom",
    )
    summary = (
        f"**{Path(checkpoint).name}** · {layout} layout ({config.n_layers} layers, "
        f"width {config.emb_dim}, context {config.context_length}) · "
        f"{num_params(config) / 1e6:.2f}M parameters · {model.description}"
    )
    return model, summary


def server_model():
    """(model, summary) of the server's checkpoint, loaded on first use; failures are not
    cached, so a checkpoint that appears later is found."""
    with LOAD_LOCK:
        return load_server_model()


def settings_widgets():
    """The settings panel: number boxes for required fields, text boxes (empty = off) for others."""
    widgets = []
    for setting in settings.PANEL_SETTINGS:
        if settings.is_optional(setting):
            widget = TextInput(
                id=setting.name,
                label=setting.label,
                placeholder=settings.when_empty(setting),
                description=setting.accepts,
            )
        else:
            widget = NumberInput(
                id=setting.name,
                label=setting.label,
                initial=setting.default,
                description=setting.accepts,
            )
        widgets.append(widget)
    return widgets


async def say_problem(text):
    await cl.Message(content=f"⚠️ {text}", author="npgpt").send()


@cl.on_app_startup
async def warm_up():
    try:
        await asyncio.to_thread(server_model)
    except UserError as err:
        print(f"npgpt: {err} (the page says so until it loads)", file=sys.stderr)


@cl.on_app_shutdown
def remove_app_dir():
    shutil.rmtree(os.environ[serve.ENV_APP_DIR], ignore_errors=True)


@cl.on_chat_start
async def start():
    await cl.ChatSettings(settings_widgets()).send()
    try:
        _, summary = await asyncio.to_thread(server_model)
    except UserError as err:
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
        model, summary = await asyncio.to_thread(server_model)
    except UserError as err:
        await say_problem(f"No model to answer with: {err}. Each message tries to load it again.")
        return
    try:
        sampling = settings.parse(cl.user_session.get("chat_settings") or settings.DEFAULTS)
    except settings.SettingsError as err:
        await say_problem(f"Invalid setting: {err}. Fix it in the settings panel.")
        return
    prompt_ids = await asyncio.to_thread(encode_prompt, message.content)
    longest = model.config.context_length
    if len(prompt_ids) > longest:
        await say_problem(
            f"The prompt is {len(prompt_ids)} tokens, but this model reads at most {longest} "
            f"(its context window): shorten it by {len(prompt_ids) - longest} tokens."
        )
        return
    # the answer streams inside an open code block, closed once the text is complete
    reply = cl.Message(content=answer_format.OPENING, author="npgpt")
    text = ""
    generation = Generation(model, prompt_ids, sampling)
    pieces = iter(generation)
    while (piece := await asyncio.to_thread(next, pieces, DONE)) is not DONE:
        text += piece
        await reply.stream_token(piece)
    shown = answer_format.fenced(text) if text else answer_format.NO_TEXT
    speed = (
        f"{generation.tokens} tokens in {generation.seconds:.2f} s · {generation.rate:.1f} tokens/s"
    )
    reply.content = f"{shown}\n\n*{speed} · {summary}*"
    await (reply.update() if reply.streaming else reply.send())  # no token: nothing sent yet
