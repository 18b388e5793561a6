"""Many people on the page at once: `cli.py serve` under concurrent chat sessions, one run.

Starts `python cli.py serve` on the tiny model (random weights, written to a temporary
directory) on 127.0.0.1, and opens --sessions chat sessions through `webapp.client`, which speaks
Chainlit's socket.io protocol as the page's script does (no browsers). For --seconds each session
sends prompts one after another, with fixed settings and a seed of its own, and waits for each
answer. Reported: answers and tokens per second, time to first token (median, p95), errors, the
server's memory (RSS) at the start, once warm, at its peak and at the end. Then every answer is
checked against `frontend.Generation` run in this process for the same prompt, settings and seed.

Targets. No errors and no answer unlike Generation's, with at least 8 sessions. Speed is judged
against a peer measured in the same run (before the sessions and after, averaged): Generation
answering the same prompts in this process, on one thread. Served tokens/s at least half the
peer's (the rest goes to streaming each token over socket.io, to a client on the same machine);
the time to first token at p95 within 4 fair shares: with N sessions busy, a new answer's first
token waits for about one token step of each of the others, N peer token-times. Memory grows
by at most 5% from "warm" (a quarter into the run, 10 s at most: every session has answered, so
the worker threads and their buffers exist) to the end: nothing leaks per answer.

All traffic goes to 127.0.0.1; the run ends by itself (each answer within --answer-timeout,
each session within --max-answers). Usage:

    python bench/bench_serve.py [--sessions 8] [--seconds 60] [--max-new-tokens 32]
"""

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

from frontend import Generation, encode_prompt, load_model
from npgpt.config import GPTConfig
from npgpt.model import init_params
from npgpt.weights.checkpoint import save
from webapp.client import ChatSession
from webapp.settings import DEFAULTS, parse

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["The meaning of life is", "Once upon a time", "In 1905, Einstein", "def main():"]
FIXED = {"temperature": "0.9", "top_k": "200", "top_p": "0.95"}
FIRST_SEED = 1000  # session i samples with seed FIRST_SEED + i


class Record(NamedTuple):
    session: int
    prompt: str
    text: str | None  # the model's text as the page showed it; None: no answer
    first_token_s: float | None
    error: str | None


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mib(pid):
    """Resident memory of process `pid` in MiB (Linux's /proc), or None where unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def start_server(checkpoint, log):
    port = free_port()
    command = [sys.executable, "cli.py", "serve", "--checkpoint", str(checkpoint)]
    server = subprocess.Popen(
        command + ["--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return server, url
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit(f"serve did not come up at {url}:\n{Path(log.name).read_text()}")


def session_settings(index, max_new_tokens):
    return (
        DEFAULTS | FIXED | {"max_new_tokens": str(max_new_tokens), "seed": str(FIRST_SEED + index)}
    )


async def run_session(url, index, args, deadline, records):
    """One person: open a chat, set the settings, ask until the deadline or --max-answers."""
    session = ChatSession(url)
    try:
        await session.open(timeout=args.answer_timeout)
        said = await session.change_settings(session_settings(index, args.max_new_tokens))
        if said:
            raise RuntimeError(f"the settings were refused: {said}")
        for turn in range(args.max_answers):
            if time.perf_counter() >= deadline:
                break
            prompt = PROMPTS[(index + turn) % len(PROMPTS)]
            answer = await session.ask(prompt, timeout=args.answer_timeout)
            error = None if answer.text is not None else f"not an answer: {answer.content!r}"
            records.append(Record(index, prompt, answer.text, answer.first_token_s, error))
    except Exception as err:  # noqa: BLE001 -- a bench counts every failure, whatever its kind
        records.append(Record(index, "", None, None, f"{type(err).__name__}: {err}"))
    finally:
        await session.close()


async def sample_memory(pid, samples):
    """Append (seconds since the start, RSS in MiB) every second."""
    start = time.perf_counter()
    while True:
        samples.append((time.perf_counter() - start, rss_mib(pid)))
        await asyncio.sleep(1)


async def drive(url, pid, args):
    """(records, seconds, RSS samples) of --sessions sessions asking for --seconds."""
    records, memory = [], []
    sampler = asyncio.create_task(sample_memory(pid, memory))
    start = time.perf_counter()
    deadline = start + args.seconds
    sessions = [run_session(url, i, args, deadline, records) for i in range(args.sessions)]
    await asyncio.gather(*sessions)
    seconds = time.perf_counter() - start
    sampler.cancel()
    return records, seconds, memory


def memory_summary(start_mib, samples, end_mib, seconds):
    """(start, warm, peak, end) RSS in MiB; warm is the first sample after a quarter of the run
    (10 s at most): every session has then answered, so threads and buffers exist."""
    settle = min(10, seconds / 4)
    known = [(t, mib) for t, mib in samples if mib is not None]
    warm = next((mib for t, mib in known if t >= settle), end_mib)
    peak = max([mib for _, mib in known] + [end_mib or 0])
    return start_mib, warm, peak, end_mib


class Peer(NamedTuple):
    """Generation in this process on one thread: the speed the page is judged against."""

    tokens_per_s: float
    seconds_per_answer: float


def generate_cases(model, cases, max_new_tokens):
    """{(session, prompt): (text, tokens)} from frontend.Generation, and its speed as a Peer."""
    answers, tokens, start = {}, 0, time.perf_counter()
    for session, prompt in cases:
        sampling = parse(session_settings(session, max_new_tokens))
        generation = Generation(model, encode_prompt(prompt), sampling)
        answers[(session, prompt)] = ("".join(generation), generation.tokens)
        tokens += generation.tokens
    seconds = time.perf_counter() - start
    return answers, Peer(tokens / seconds, seconds / len(cases))


def mean_peer(before, after):
    """The peer's speed before and after the run, averaged: a machine shared with other work
    changes speed over a minute, and the run sits between the two measurements."""
    return Peer(*((b + a) / 2 for b, a in zip(before, after, strict=True)))


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else None


def describe(args, records, seconds, memory, expected, peer):
    """Print what was measured; returns the rows of the targets table."""
    answered = [r for r in records if r.error is None]
    errors = [r for r in records if r.error is not None]
    wrong = [r for r in answered if r.text != expected[(r.session, r.prompt)][0]]
    tokens_per_s = sum(expected[(r.session, r.prompt)][1] for r in answered) / seconds
    first = [r.first_token_s for r in answered if r.first_token_s is not None]
    p95 = percentile(first, 0.95)
    start_mib, warm_mib, peak_mib, end_mib = memory
    peer_tokens = peer.tokens_per_s
    print(f"\n{args.sessions} sessions for {seconds:.1f} s, {args.max_new_tokens} new tokens each")
    print(
        f"served: {len(answered)} answers, {len(answered) / seconds:.2f} answers/s, "
        f"{tokens_per_s:.0f} tokens/s"
    )
    print(
        f"peer (frontend.Generation in this process, one thread, mean of before and after): "
        f"{peer_tokens:.0f} tokens/s, {peer.seconds_per_answer * 1000:.0f} ms per answer"
    )
    if first:
        print(f"time to first token: median {statistics.median(first):.3f} s, p95 {p95:.3f} s")
    if start_mib:
        print(
            f"server RSS: start {start_mib:.0f} MiB, warm {warm_mib:.0f} MiB, "
            f"peak {peak_mib:.0f} MiB, end {end_mib:.0f} MiB"
        )
    for record in errors[:5]:
        print(f"error in session {record.session}: {record.error}")
    # fair share: a first token waits for about one token step of every other busy session
    wait = 4 * args.sessions / peer_tokens
    grown = end_mib / warm_mib - 1 if warm_mib and end_mib else None
    ratio = tokens_per_s / peer_tokens
    return [
        ("sessions", args.sessions, ">= 8", args.sessions >= 8),
        ("errors", len(errors), "0", not errors),
        ("answers unlike Generation's", len(wrong), "0", bool(answered) and not wrong),
        (
            "time to first token p95 (s)",
            f"{p95:.3f}" if first else "-",
            f"<= {wait:.3f}",
            bool(first) and p95 <= wait,
        ),
        ("served / peer tokens/s", f"{ratio:.2f}", ">= 0.50", ratio >= 0.5),
        (
            "RSS growth warm -> end",
            f"{grown:+.1%}" if grown is not None else "-",
            "<= +5%",
            grown is not None and grown <= 0.05,
        ),
    ]


def print_targets(rows):
    print(f"\n{'':<30} {'measured':>10} {'target':>10}")
    for name, value, target, met in rows:
        print(f"{name:<30} {value!s:>10} {target:>10}  {'PASS' if met else 'MISS'}")
    return all(met for *_, met in rows)


async def warm_up(url):
    """One answer before the clock starts: the model loads, Chainlit's first imports run."""
    session = ChatSession(url)
    try:
        await session.open()
        await session.ask(PROMPTS[0])
    finally:
        await session.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--max-answers", type=int, default=10_000, help="per session")
    parser.add_argument("--answer-timeout", type=float, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="npgpt-bench-serve-") as directory:
        checkpoint = Path(directory) / "tiny"
        config = GPTConfig.preset("tiny")
        save(checkpoint, config, init_params(config, seed=0))
        with open(Path(directory) / "serve.log", "w") as log:
            server, url = start_server(checkpoint, log)
            try:
                model = load_model(checkpoint, "numpy")
                first_cases = [(session, prompt) for session in range(2) for prompt in PROMPTS]
                _, before = generate_cases(model, first_cases, args.max_new_tokens)
                asyncio.run(warm_up(url))
                start_mib = rss_mib(server.pid)
                records, seconds, samples = asyncio.run(drive(url, server.pid, args))
                memory = memory_summary(start_mib, samples, rss_mib(server.pid), seconds)
            finally:
                server.terminate()
                server.wait(timeout=30)
        cases = sorted({(r.session, r.prompt) for r in records if r.error is None})
        expected, after = (
            generate_cases(model, cases, args.max_new_tokens) if cases else ({}, before)
        )
        rows = describe(args, records, seconds, memory, expected, mean_peer(before, after))
    return 0 if print_targets(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
