"""Preparing a corpus larger than memory: speed of `prepare` against its peers, and memory.

Generates (once, cached under /tmp) a corpus of --size MB of text files made from Python's
help topics (`pydoc_data.topics`): spans of their words, shuffled, with 8% of the words swapped
for random others, in documents of 4 KB to 2 MB plus one document of up to 64 MB. Then, each
measured in a fresh subprocess (so peak resident memory is the measured job's own):

    speed, on the same --speed-mb of files (every job's ids are checked to be the same), the
    best of --repeats runs taken in turns:
      single-process loop    today's path: encode_ordinary per document into one list, np.array
      multiprocessing pool   the usual prepare script: a Pool of tiktoken encoders, one task
                             a document, the parent writing each document's ids as they come
      prepare                npgpt.training.prepare (threads)     target >= 1.8x loop on 2
                                                                   cores, and >= the pool
      prepare on processes   the same pipeline with processes instead of threads
    (with tokens per CPU second, and cores busy = CPU seconds / wall seconds: on a machine that
    other work keeps busy, a job gets only its share of the cores, and the speed-ups cannot show)
    prepare on the whole corpus: tokens/s and peak RSS            target < 500 MB
    opening the prepared corpus: the size check alone, and with every shard's sha256
    training: peak RSS of a process that opens the prepared corpus and trains the default tiny
    preset (numpy, B = 16, T = 64) for 20 steps, on the whole corpus and on 10 MB of it
                                                                   target within 100 MB

Usage: python bench/bench_prepare.py [--size 1000] [--speed-mb 128] [--repeats 2]
                                    [--dir /tmp/npgpt-bench-prepare]
       (a quick run: --size 50 --speed-mb 10 --repeats 1)
"""

import argparse
import hashlib
import json
import multiprocessing
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MB = 1 << 20
TRAIN_STEPS = 20  # of the default tiny preset: B = 16 windows of T = 64 tokens


# ---- the corpus ----------------------------------------------------------------------------


def make_corpus(folder, total_bytes, seed=0):
    """Text files of about `total_bytes` in all (made once; a stamp file marks a finished set)."""
    stamp = folder / "DONE"
    if stamp.exists() and stamp.read_text() == f"{total_bytes} {seed}":
        return sorted(folder.glob("*.txt"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    from pydoc_data.topics import topics

    words = np.array(re.findall(r"\S+\s*", "\n\n".join(topics[k] for k in sorted(topics))))
    words = words.astype(object)
    mean_word = sum(map(len, words)) / len(words)
    rng = np.random.default_rng(seed)
    huge = min(64 * MB, total_bytes // 8)
    sizes, written = [huge], huge
    while written < total_bytes:
        sizes.append(int(np.exp(rng.uniform(np.log(4096), np.log(2 * MB)))))
        written += sizes[-1]
    for i, size in enumerate(sizes):
        text = document(words, int(size / mean_word), rng)
        (folder / f"doc-{i:05d}.txt").write_text(text, encoding="utf-8")
    stamp.write_text(f"{total_bytes} {seed}")
    return sorted(folder.glob("*.txt"))


def document(words, count, rng):
    """`count` words: spans of 20 to 400 consecutive words from random places, 8% swapped."""
    lengths = rng.integers(20, 400, size=count // 20 + 1)
    starts = rng.integers(0, len(words) - 400, size=len(lengths))
    index = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths, strict=True)])
    swap = rng.random(len(index)) < 0.08
    index[swap] = rng.integers(0, len(words), size=int(swap.sum()))
    return "".join(words[index[:count]].tolist())


# ---- the jobs, each run in its own process ---------------------------------------------------


def peak_rss_mb():
    """This process's peak resident memory. Not getrusage's ru_maxrss, which counts the RSS of
    the parent that forked this process; VmHWM belongs to the memory map exec made."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def cpu_seconds():
    """CPU time of this process and of its children that have ended (a pool's workers)."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(job, *args, **kwargs):
    """job(...)'s result, with the wall-clock and CPU seconds it took."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = job(*args, **kwargs)
    return {**result, "seconds": time.perf_counter() - wall, "cpu_seconds": cpu_seconds() - cpu}


def job_loop(files):
    from npgpt.tokenizer import get_tokenizer

    get_tokenizer()
    return timed(loop_ids, files)


def loop_ids(files):
    """Today's path: one list of every document's ids, then an array."""
    from npgpt.tokenizer import EOT_ID, get_tokenizer

    tok, ids = get_tokenizer(), []
    for i, path in enumerate(files):
        if i:
            ids.append(EOT_ID)
        ids += tok.encode_ordinary(Path(path).read_text(encoding="utf-8"))
    ids = np.array(ids, dtype=np.uint16)
    return {"tokens": len(ids), "sha256": hashlib.sha256(ids).hexdigest()}


def encode_document(text):
    from npgpt.tokenizer import get_tokenizer

    return np.array(get_tokenizer().encode_ordinary(text), dtype=np.uint16)


def job_pool(files, out):
    from npgpt.tokenizer import get_tokenizer

    get_tokenizer()  # built before the fork, so every worker has it
    return timed(pool_ids, files, out)


def pool_ids(files, out):
    """The usual prepare script: a pool of encoders, a document a task, ids written in order."""
    from npgpt.tokenizer import EOT_ID

    texts = (Path(path).read_text(encoding="utf-8") for path in files)
    digest, tokens = hashlib.sha256(), 0
    with open(out, "wb") as f, multiprocessing.Pool(os.cpu_count()) as pool:
        for i, ids in enumerate(pool.imap(encode_document, texts)):
            if i:
                ids = np.concatenate([[EOT_ID], ids]).astype(np.uint16)
            f.write(ids.tobytes())
            digest.update(ids)
            tokens += len(ids)
        pool.close()
        pool.join()  # so the workers' CPU time is counted
    return {"tokens": tokens, "sha256": digest.hexdigest()}


def job_prepare(files, out, processes=False):
    from npgpt.tokenizer import get_tokenizer
    from npgpt.training import prepare

    if processes:
        from concurrent.futures import ProcessPoolExecutor

        prepare.ThreadPoolExecutor = ProcessPoolExecutor  # the alternative measured, not used
    get_tokenizer()
    result = timed(lambda: {"manifest": prepare.prepare(files, out, progress=False)})
    manifest = result.pop("manifest")
    digest = hashlib.sha256()
    for entry in manifest["shards"]:
        digest.update((Path(out) / entry["file"]).read_bytes())
    return {**result, "tokens": manifest["tokens"], "sha256": digest.hexdigest()}


def job_train(out, run):
    """Open the prepared corpus (sizes only; every sha256, as on a first open), then train the
    default tiny model for TRAIN_STEPS steps on it: the peak RSS of a real run's start."""
    from npgpt.training.backend import NumpyBackend
    from npgpt.training.loop import train
    from npgpt.training.settings import resolve_settings
    from npgpt.training.shards import VERIFIED_FILE, open_prepared

    start = time.perf_counter()
    open_prepared(out, verify=False)
    size_check = time.perf_counter() - start
    (Path(out) / VERIFIED_FILE).unlink(missing_ok=True)
    start = time.perf_counter()
    open_prepared(out)
    hashed = time.perf_counter() - start
    opened = peak_rss_mb()
    settings = resolve_settings(
        {
            "data": [out],
            "max_steps": TRAIN_STEPS,
            "eval_every": TRAIN_STEPS,
            "eval_batches": 1,
            "sample_tokens": 0,
            "out": run,
        }  # fmt: skip
    )
    start = time.perf_counter()
    record = train(settings, NumpyBackend, progress=False)
    return {
        "open_size_check": size_check,
        "open_sha256": hashed,
        "rss_opened": opened,
        "train_seconds": time.perf_counter() - start,
        "val_loss": record["val_loss"],
    }


JOBS = {"loop": job_loop, "pool": job_pool, "prepare": job_prepare, "train": job_train}


def run_job(name, **kwargs):
    """Run JOBS[name](**kwargs) in a fresh Python; its result with its peak RSS in MB."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as arguments:
        json.dump(kwargs, arguments)  # a file: thousands of paths overflow a command line
        arguments.flush()
        command = [sys.executable, __file__, "--job", name, arguments.name]
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"job {name} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


# ---- the report ------------------------------------------------------------------------------


def speed_jobs(files, work):
    cores = os.cpu_count()
    return {
        "single-process loop (today)": lambda: run_job("loop", files=files),
        f"multiprocessing pool ({cores} procs)": lambda: run_job(
            "pool", files=files, out=str(work / "pool.bin")
        ),
        f"prepare ({cores} threads)": lambda: run_job(
            "prepare", files=files, out=str(work / "speed-threads")
        ),
        f"prepare on {cores} processes": lambda: run_job(
            "prepare", files=files, out=str(work / "speed-processes"), processes=True
        ),
    }


def speed_section(paths, work, repeats):
    """Each job `repeats` times, in turns (so a change of the machine's load hits all alike);
    the fastest run of each counts."""
    size, files = sum(p.stat().st_size for p in paths), [str(p) for p in paths]
    results = {}
    for _ in range(repeats):
        for name, job in speed_jobs(files, work).items():
            shutil.rmtree(work / "speed-threads", ignore_errors=True)
            shutil.rmtree(work / "speed-processes", ignore_errors=True)
            result = job()
            if name not in results or result["seconds"] < results[name]["seconds"]:
                results[name] = result
    same = len({(r["tokens"], r["sha256"]) for r in results.values()}) == 1
    tokens = next(iter(results.values()))["tokens"]
    print(
        f"\nspeed on the same {size / MB:.0f} MB ({len(files)} files, {tokens / 1e6:.1f} M tokens;"
    )
    print(f"  the same ids from every job: {'yes' if same else 'NO'})")
    rates = {name: r["tokens"] / r["seconds"] for name, r in results.items()}
    loop, pool = list(rates.values())[:2]
    print(
        f"  {'':32s} {'M tok/s':>7s} {'x loop':>7s} {'x pool':>7s} {'M tok/CPU s':>12s} "
        f"{'cores busy':>11s}"
    )
    for name, rate in rates.items():
        result = results[name]
        print(
            f"  {name:32s} {rate / 1e6:7.2f} {rate / loop:7.2f} {rate / pool:7.2f} "
            f"{result['tokens'] / result['cpu_seconds'] / 1e6:12.2f} "
            f"{result['cpu_seconds'] / result['seconds']:11.2f}"
        )
    threads = list(rates.values())[2]
    print(
        f"  target: prepare >= 1.8x loop: {verdict(threads >= 1.8 * loop)}; "
        f">= pool: {verdict(threads >= pool)}"
    )
    return same


def verdict(met):
    return "met" if met else "NOT met"


def memory_section(paths, small_paths, work):
    files, small_files = [str(p) for p in paths], [str(p) for p in small_paths]
    full = run_job("prepare", files=files, out=str(work / "full"))
    size = sum(p.stat().st_size for p in paths)
    print(
        f"\nprepare on the whole corpus ({size / MB:.0f} MB): {full['tokens'] / 1e6:.1f} M tokens "
        f"in {full['seconds']:.1f} s = {full['tokens'] / full['seconds'] / 1e6:.2f} M tok/s"
    )
    print(
        f"  peak RSS {full['peak_rss_mb']:.0f} MB (target < 500 MB: "
        f"{verdict(full['peak_rss_mb'] < 500)})"
    )
    run_job("prepare", files=small_files, out=str(work / "small"))
    big = run_job("train", out=str(work / "full"), run=str(work / "run-full"))
    small = run_job("train", out=str(work / "small"), run=str(work / "run-small"))
    shard_gb = full["tokens"] * 2 / 1e9
    print(
        f"\nopening the whole corpus ({shard_gb:.2f} GB of shards): size check "
        f"{big['open_size_check']:.3f} s, with every sha256 (first open) {big['open_sha256']:.2f} s"
    )
    small_mb = sum(p.stat().st_size for p in small_paths) / MB
    difference = big["peak_rss_mb"] - small["peak_rss_mb"]
    print(f"\nthe first {TRAIN_STEPS} training steps (tiny preset, numpy), peak RSS in MB:")
    print("  prepared corpus          opened  after training  seconds  val loss")
    for name, job in [("whole corpus", big), (f"{small_mb:.0f} MB of it", small)]:
        print(
            f"  {name:22s} {job['rss_opened']:8.0f} {job['peak_rss_mb']:15.0f} "
            f"{job['train_seconds']:8.1f} {job['val_loss']:9.3f}"
        )
    print(
        f"  difference {difference:+.0f} MB (target within 100 MB: "
        f"{verdict(abs(difference) < 100)}); what grows with the corpus is the epoch's order "
        f"of windows, 4 bytes a window"
    )


def first_files(files, limit):
    """Files from the start of `files` (the huge document left out) up to `limit` bytes."""
    chosen, size = [], 0
    for f in files[1:]:
        if size >= limit:
            break
        chosen.append(f)
        size += f.stat().st_size
    return chosen


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1000, help="Corpus size in MB.")
    parser.add_argument("--speed-mb", type=int, default=128, help="MB of it for the speed jobs.")
    parser.add_argument("--repeats", type=int, default=2, help="Runs of each speed job.")
    parser.add_argument("--dir", default="/tmp/npgpt-bench-prepare")
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.job:
        result = JOBS[args.job](**json.loads(Path(rest[0]).read_text()))
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return
    root = Path(args.dir)
    start = time.perf_counter()
    files = make_corpus(root / f"corpus-{args.size}mb", args.size * MB)
    size = sum(f.stat().st_size for f in files)
    print(
        f"corpus: {size / MB:.0f} MB in {len(files)} files (one document of "
        f"{files[0].stat().st_size / MB:.0f} MB), {root} ({time.perf_counter() - start:.0f} s)"
    )
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    work = root / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        same = speed_section(first_files(files, args.speed_mb * MB), work, args.repeats)
        memory_section(files, first_files(files, 10 * MB), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    if not same:
        raise SystemExit("the jobs disagree on the ids")


if __name__ == "__main__":
    main()
