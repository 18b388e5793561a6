"""Generation: sample one token at a time, feeding each back in, with a KV cache.

Without a KV cache every new token re-runs the model over the whole window. But a causal
model's keys and values at earlier positions never change when tokens are appended, so we keep
them: the prompt is run once ("prefill"), then each step runs ONE position, whose query attends
to the cached keys/values of all earlier positions. Same logits, a fraction of the work.

The window. The model has `context_length` (T) positions. While prompt + output fits, the KV
cache grows by one position per token. Once it is full, the window slides: the model conditions
on the last T tokens, whose positions have all shifted by one, so the KV cache cannot be reused
and each further token re-runs the last T tokens (what recomputation does anyway). Either way,
every token is drawn from exactly the logits that full recomputation over the last T tokens
gives.

The loop is independent of the backend: it calls `step(new_ids, past_kv) -> (logits (V,), kv)`,
with `past_kv=None` meaning "start a fresh KV cache with these ids". `numpy_step` is npgpt's
(`npgpt.model.decode`); the PyTorch twin passes its own. An empty prompt starts from
`<|endoftext|>`; generation stops at `<|endoftext|>` (not yielded), after `max_new_tokens`, or
when `stream_text` meets a stop string.

>>> from npgpt.config import GPTConfig
>>> from npgpt.model import init_params
>>> from npgpt.sampling import SamplingSettings
>>> cfg = GPTConfig.preset("tiny")
>>> settings = SamplingSettings(temperature=0, max_new_tokens=5)
>>> ids = list(generate(init_params(cfg), cfg, [15496], settings))
>>> ids == list(generate(init_params(cfg), cfg, [15496], settings, use_kv_cache=False))
True
"""

import numpy as np

from npgpt import model
from npgpt.sampling import sample_next
from npgpt.tokenizer import EOT_ID, get_tokenizer


def numpy_step(params, config):
    """npgpt's step function: logits of the last new position, and the grown KV cache."""

    def step(new_ids, past_kv):
        logits, kv = model.decode(params, config, np.array([new_ids]), past_kv)
        return logits[0, -1], kv

    return step


def generate_tokens(step, prompt_ids, context_length, settings, use_kv_cache=True):
    """Yield new token ids; `step` is a backend's forward (see the module docstring)."""
    ids = list(prompt_ids) or [EOT_ID]
    rng = np.random.default_rng(settings.seed)
    feed, past_kv, kv_len = ids[-context_length:], None, 0
    for _ in range(settings.max_new_tokens):
        logits, kv = step(feed, past_kv)
        kv_len += len(feed)
        token = sample_next(logits, rng, settings)
        if token == EOT_ID:
            return
        yield token
        ids.append(token)
        if use_kv_cache and kv_len < context_length:
            feed, past_kv = [token], kv
        else:  # no KV cache, or the window is full and slides: recompute the last T tokens
            feed, past_kv, kv_len = ids[-context_length:], None, 0


def generate(params, config, prompt_ids, settings, use_kv_cache=True):
    """npgpt generation: an iterator of new token ids."""
    step = numpy_step(params, config)
    return generate_tokens(step, prompt_ids, config.context_length, settings, use_kv_cache)


def longest_stop_prefix(text, stops):
    """Length of the longest end of `text` that could still grow into a stop string."""
    return max(
        (k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])),
        default=0,
    )


def stream_text(token_ids, stop=()):
    """Turn token ids into text pieces as they arrive.

    A token can end in the middle of a UTF-8 character (emoji are often split across tokens), so
    bytes are held until they decode. Text that could be the start of a stop string is held too;
    when a stop string appears, the text before it is emitted and the token stream is closed.
    """
    tokenizer = get_tokenizer()
    pending_bytes, text = b"", ""
    for token in token_ids:
        pending_bytes += tokenizer.decode_single_token_bytes(token)
        try:
            text += pending_bytes.decode("utf-8")
            pending_bytes = b""
        except UnicodeDecodeError as err:
            if err.reason != "unexpected end of data":  # invalid bytes, not an unfinished char
                text += pending_bytes.decode("utf-8", errors="replace")
                pending_bytes = b""
            else:
                text += pending_bytes[: err.start].decode("utf-8")
                pending_bytes = pending_bytes[err.start :]
        hits = [i for i in (text.find(s) for s in stop) if i >= 0]
        if hits:
            if text[: min(hits)]:
                yield text[: min(hits)]
            if hasattr(token_ids, "close"):
                token_ids.close()
            return
        held = longest_stop_prefix(text, stop)
        if len(text) > held:
            yield text[: len(text) - held]
            text = text[len(text) - held :]
    text += pending_bytes.decode("utf-8", errors="replace")
    if text:
        yield text
