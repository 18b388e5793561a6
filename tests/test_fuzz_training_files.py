"""The files training reads back, fuzzed: what `train --resume` reads of a checkpoint
(trainer_state.json, optimizer.safetensors, the RNG states inside the trainer state), and the
token-id cache. Each starts as a valid file written by the real writer (`run_directory.save`,
`torchgpt.rng.rng_states`, `corpus.token_ids`), is damaged, then read.

The contract (tests/fuzzing.py): resume reads the damaged checkpoint or raises TrainError
naming the file, nothing else, within the deadline and the memory bound; `train --resume`
prints that one line and exits 1. A damaged token cache is re-made (or, where the damage
cannot be told from ids, holds GPT-2 ids of the right count): never an exception, never
used when it is not whole.

The fixed examples at the end are the bugs the fuzzing found, each kept as a regression test.

A prepared corpus (`prepare`'s manifest.json and token shards) is opened the same way: read,
or refused with DataError naming the file.
"""

import io
import json
import random
import struct
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from fuzzing import (
    assert_names,
    attempt,
    damaged,
    damaged_bytes,
    damaged_safetensors_header,
    fuzz_settings,
    json_paths,
    json_text,
    mutated_json,
    rewrite,
    tried,
)
from hypothesis import event, given
from hypothesis import strategies as st
from safetensors.numpy import load_file, save

import cli
from npgpt import optim
from npgpt.config import GPTConfig
from npgpt.model import init_params
from npgpt.tokenizer import EOT_ID
from npgpt.training import corpus, run_directory, shards
from npgpt.training.backend import BackendState, dropout_rng
from npgpt.training.corpus import DataError, builtin_documents
from npgpt.training.prepare import prepare
from npgpt.training.run_directory import OPTIMIZER_FILE, STATE_FILE, RunState
from npgpt.training.settings import TrainError, resolve_settings
from npgpt.training.windows import Position
from npgpt.weights import digest

CFG = GPTConfig(vocab_size=11, context_length=4, emb_dim=8, n_heads=2, n_layers=1)
NUM_WINDOWS = 8  # the training windows the resumed run has; the saved position lies inside


def records(steps):
    """Metrics records as the loop logs them: an evaluation at step 0, then training steps."""
    first = {"step": 0, "tokens": 0, "loss": None, "lr": None, "tokens_per_s": None}
    evaluated = first | {"train_loss": 2.4, "val_loss": 2.5}
    return [evaluated] + [
        {"step": s, "tokens": 8 * s, "loss": 2.3, "lr": 1e-3, "tokens_per_s": 900.0}
        for s in range(1, steps + 1)
    ]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory holding a checkpoint at step 3, written by `run_directory.save`."""
    out = tmp_path_factory.mktemp("run")
    settings = resolve_settings({"max_steps": 10, "seed": 3, "out": str(out)})
    params = init_params(CFG, seed=3)
    rng = np.random.default_rng(5)
    moments = {
        name: rng.normal(size=w.shape).astype(w.dtype)
        for name, w in optim.init_state(params).items()
    }
    state = BackendState(params, moments, np.random.default_rng(7).bit_generator.state)
    run = RunState(step=3, tokens=24, position=Position(1, 2), records=records(3))
    run_directory.save(out, CFG, settings, 10, run, state)
    resume(out)  # before the deadlines: first imports and reads
    return out


def resume(out):
    """What `train --resume` reads, in its order: the saved settings, then the checkpoint with
    its moments and position, then the RNG state (as the numpy backend reads it)."""
    settings = resolve_settings(resumed=run_directory.resumed_settings(out))
    ckpt = run_directory.find_checkpoint(out)
    run, state = run_directory.load(ckpt, CFG, np.float32, NUM_WINDOWS)
    dropout_rng(settings.seed, state.rng, run.step)
    return run, state


def checkpoint_bytes(out):
    return sum(path.stat().st_size for path in (out / "checkpoint").iterdir())


def resume_damaged(out, path):
    """Resume under the contract; a refusal names `path`. What resumes is what the file says."""
    resumed, error = attempt(lambda: resume(out), TrainError, checkpoint_bytes(out))
    if error is not None:
        assert_names(error, path, f"rng ({path.name})")  # the backend knows the field, not where
        return
    run, _ = resumed
    saved = json.loads((out / "checkpoint" / STATE_FILE).read_text())
    assert (run.step, run.tokens, list(run.position.__dict__.values())) == (
        saved["step"],
        saved["tokens"],
        saved["position"],
    )


# --- trainer_state.json ----------------------------------------------------------------------


def state_paths(document):
    """Every place in a trainer state, but only the first two metrics records' insides (the
    rest repeat them): the fields, the settings, the RNG state, the records."""
    return [
        path
        for path in json_paths(document)
        if not (len(path) > 2 and path[0] == "metrics" and path[1] >= 2)
    ]


@fuzz_settings(ci_examples=100)
@given(data=st.data())
def test_trainer_state_hostile(run_dir, data):
    """Every field missing, of the wrong type or out of range; the JSON truncated or damaged."""
    tried("trainer_state.json")
    path = run_dir / "checkpoint" / STATE_FILE
    document = json.loads(path.read_text())
    text = st.one_of(
        mutated_json(document, state_paths(document)).map(lambda doc: json_text(doc).encode()),
        damaged_bytes(path.read_bytes()),
    )
    with damaged(path, data.draw(text)):
        resume_damaged(run_dir, path)


# --- optimizer.safetensors -------------------------------------------------------------------


@st.composite
def damaged_moments(draw, path):
    """A valid safetensors file of moments one of which has another shape or dtype, is missing
    or is joined by a stranger; or a hostile header; or damaged bytes."""
    kind = draw(st.sampled_from(["moment", "header", "bytes"]))
    if kind == "header":
        return draw(damaged_safetensors_header(path))
    if kind == "bytes":
        return draw(damaged_bytes(path.read_bytes()))
    moments = load_file(path)
    name = draw(st.sampled_from(sorted(moments)))
    change = draw(st.sampled_from(["dtype", "shape", "missing", "stranger"]))
    event(f"moment: {change}")
    if change == "dtype":
        dtype = draw(st.sampled_from(["int32", "uint8", "bool", "float16", "float64", "complex64"]))
        moments[name] = moments[name].astype(dtype)
    elif change == "shape":
        moments[name] = np.zeros(draw(st.lists(st.integers(0, 5), max_size=3)), np.float32)
    elif change == "missing":
        del moments[name]
    else:
        moments["exp_avg.h.9.ln_1.weight"] = moments[name]
    return save(moments)


@fuzz_settings(ci_examples=60)
@given(data=st.data())
def test_optimizer_moments_damaged(run_dir, data):
    tried("optimizer.safetensors")
    path = run_dir / "checkpoint" / OPTIMIZER_FILE
    with damaged(path, data.draw(damaged_moments(path))):
        resume_damaged(run_dir, path)


# --- the torch backend's RNG states -----------------------------------------------------------


@pytest.fixture(scope="module")
def torch_rng():
    """(the `rng` a torch run saves, what restoring it needs): one process, on the CPU."""
    torch = pytest.importorskip("torch")
    from torchgpt.distributed import Ranks
    from torchgpt.rng import restore_rng_states, rng_states

    where = Ranks(), torch.device("cpu"), torch.amp.GradScaler("cpu", enabled=False)
    states = rng_states(*where)
    for warm_up in (states, None):  # before the deadlines: the first calls of either path
        restore_rng_states(warm_up, *where, seed=0, step=3)
    return states, where


@fuzz_settings(ci_examples=50)
@given(data=st.data())
def test_torch_rng_state_hostile(torch_rng, data):
    """The torch backend restores the saved states, or says the trainer state is damaged. (No
    memory bound: torch's first seeding reads its own source into linecache, 400 kB.)"""
    tried("RNG states (torch backend)")
    import torch

    from torchgpt.rng import restore_rng_states

    states, where = torch_rng
    hostile = data.draw(mutated_json(states))
    saved = torch.get_rng_state(), np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        restore_rng_states(hostile, *where, seed=0, step=3)
        event("read")
    except TrainError as error:
        event("refused")
        assert "trainer_state.json" in str(error)
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])  # noqa: NPY002
        random.setstate(saved[2])


# --- the token-id cache ----------------------------------------------------------------------

DOCUMENTS = ["A first document, of a few words. " * 8, "And a second one, shorter."]


@pytest.fixture(scope="module")
def token_cache(tmp_path_factory):
    """(cache directory, the cache file, the ids it holds), written by `corpus.token_ids`."""
    cache_dir = tmp_path_factory.mktemp("token_cache")
    ids = corpus.token_ids(DOCUMENTS, cache_dir)
    (path,) = cache_dir.glob("tokens-*.npy")
    return cache_dir, path, ids


def npy_bytes(header, data):
    """A .npy file (format 1.0) of the header dict's text as given, and `data` after it."""
    text = header.encode("latin1")
    pad = -(10 + len(text) + 1) % 64
    return (
        b"\x93NUMPY\x01\x00"
        + struct.pack("<H", len(text) + pad + 1)
        + text
        + b" " * pad
        + b"\n"
        + data
    )


def npy_of(array):
    """`array` as np.save writes it; objects pickled (what the cache's reader must refuse)."""
    out = io.BytesIO()
    np.save(out, array, allow_pickle=True)
    return out.getvalue()


@st.composite
def damaged_token_cache(draw, path, ids):
    """The cache truncated or bit-flipped; its header lying about dtype, order or shape (2**40
    ids in a file of a few hundred bytes); or a valid .npy of the wrong dtype, of objects
    (pickled), of two dimensions, or of numbers that are no GPT-2 ids."""
    kind = draw(st.sampled_from(["bytes", "header", "valid file"]))
    if kind == "bytes":
        return draw(damaged_bytes(path.read_bytes()))
    n = len(ids)
    if kind == "header":
        descr = draw(st.sampled_from(["<u2", ">u2", "<i8", "<f4", "|u1", "|O", "<U3", "|b1", "V2"]))
        shape = draw(st.sampled_from([(n,), (n // 2, 2), (), (2**40,), (n + 1,), (n - 1,), (0,)]))
        fortran = draw(st.booleans())
        event(f"npy header: {descr} {'F' if fortran else 'C'} {len(shape)}-d")
        header = repr({"descr": descr, "fortran_order": fortran, "shape": shape})
        return npy_bytes(header, ids.tobytes())
    array = draw(
        st.sampled_from(
            [
                ids.astype(np.int64),
                ids.astype(np.float32),
                ids.reshape(-1, 1),
                np.array([f"id{i}" for i in ids[:4]], dtype=object),
                np.full(n, EOT_ID + 1, dtype=np.uint16),
            ]
        )
    )
    event(f"npy file: {array.dtype} {array.ndim}-d")
    return npy_of(array)


@fuzz_settings(ci_examples=60)
@given(data=st.data())
def test_token_cache_damaged(token_cache, data):
    """A damaged cache is re-made: the ids come out as if there were no cache, and the cache
    file is whole again. Damage that leaves a whole .npy of GPT-2 ids (bytes flipped inside
    the ids, say, or a space in the header made a tab) cannot be told from a true cache: then
    the ids are exactly the file's."""
    tried("token cache (.npy)")
    cache_dir, path, ids = token_cache
    original = path.read_bytes()
    damage = data.draw(damaged_token_cache(path, ids))
    rewrite(path, damage)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a warning is a line on the terminal: none here
            got, _ = attempt(
                lambda: corpus.token_ids(DOCUMENTS, cache_dir), (), len(damage) + ids.nbytes
            )
        assert got.dtype == np.uint16 and got.ndim == 1
        if not np.array_equal(got, ids):
            event("token cache: damage that spells other ids")
            stored = np.load(io.BytesIO(damage), allow_pickle=False)
            assert np.array_equal(stored, got) and got.max() <= EOT_ID
        assert np.array_equal(corpus.read_token_cache(path), got)  # what is cached is whole
    finally:
        rewrite(path, original)


# --- a prepared corpus: manifest.json and its shards ------------------------------------------


@pytest.fixture(scope="module")
def prepared_corpus(tmp_path_factory):
    """(a directory `prepare` wrote: 3 shards of 40 ids and a manifest, the ids it holds)."""
    folder = tmp_path_factory.mktemp("prepared")
    for i, text in enumerate(DOCUMENTS + ["A third, to fill a third shard. " * 3]):
        (folder / f"{i}.txt").write_text(text)
    prepare([str(folder / "*.txt")], folder / "out", shard_tokens=40, progress=False)
    opened = shards.open_prepared(folder / "out")  # before the deadlines: the first open
    return folder / "out", opened.tokens[np.arange(len(opened.tokens))]


def prepared_bytes(directory):
    return sum(path.stat().st_size for path in directory.iterdir())


@st.composite
def damaged_prepared(draw, directory):
    """(the file to damage, its new bytes or None): the manifest's JSON mutated anywhere or its
    bytes damaged; a shard's bytes damaged, or the shard missing."""
    kind = draw(st.sampled_from(["manifest json", "manifest bytes", "shard"]))
    event(f"prepared corpus: {kind}")
    if kind == "shard":
        path = draw(st.sampled_from(sorted(directory.glob("shard-*.bin"))))
        return path, draw(st.none() | damaged_bytes(path.read_bytes()))
    path = directory / shards.MANIFEST_FILE
    if kind == "manifest bytes":
        return path, draw(damaged_bytes(path.read_bytes()))
    document = json.loads(path.read_text())
    return path, json_text(draw(mutated_json(document))).encode()


@fuzz_settings(ci_examples=80)
@given(data=st.data())
def test_prepared_corpus_damaged(prepared_corpus, data):
    """Opened (every shard's sha256 checked), or a DataError naming the damaged file (or, for
    a damaged manifest, the shard it no longer describes); what opens holds the original ids,
    in a split that is a fraction."""
    tried("prepared corpus (manifest.json, shards)")
    directory, ids = prepared_corpus
    path, damage = data.draw(damaged_prepared(directory))
    described = [path] if path.suffix == ".bin" else [path, *directory.glob("shard-*.bin")]
    with damaged(path, damage):
        read = lambda: shards.open_prepared(directory)  # noqa: E731
        # the sha256 check reads a shard BLOCK_BYTES at a time, into one buffer
        opened, error = attempt(
            read, DataError, prepared_bytes(directory), buffer=digest.BLOCK_BYTES
        )
        if error is not None:
            assert_names(error, *described)
            return
        assert np.array_equal(opened.tokens[np.arange(len(opened.tokens))], ids)
        assert 0 < opened.val_fraction < 1


# --- the command line ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real run of `train` (two steps of the tiny preset) to resume."""
    root = tmp_path_factory.mktemp("cli_run")
    (root / "corpus.txt").write_text("\n\n".join(builtin_documents()[:3])[:8_000])
    args = [
        "train", "--preset", "tiny", "--data", root / "corpus.txt", "--context-length", 16,
        "--batch-size", 2, "--max-steps", 2, "--eval-every", 2, "--eval-batches", 1,
        "--sample-tokens", 0, "--out", root / "run", "--cache-dir", root / "cache",
        "--no-progress",
    ]  # fmt: skip
    result = CliRunner().invoke(cli.main, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return root / "run"


STATE_DAMAGE = {
    "position past the windows (a hang, before)": lambda s: s | {"position": [0, 10**6]},
    "step missing": lambda s: {k: v for k, v in s.items() if k != "step"},
    "step a string": lambda s: s | {"step": "2"},
    "metrics a number": lambda s: s | {"metrics": 3},
    "a record without a step": lambda s: s | {"metrics": [{"loss": 1.0}]},
    "rng of another generator": lambda s: s | {"rng": {"bit_generator": "MT19937"}},
    "rng out of range": lambda s: s | {"rng": s["rng"] | {"state": {"state": -1, "inc": 1}}},
    "settings not an object": lambda s: s | {"settings": []},
    "a setting out of range": lambda s: s | {"settings": s["settings"] | {"batch_size": -2}},
    "a negative seed (NumPy's ValueError, before)": lambda s: (
        s | {"settings": s["settings"] | {"seed": -1}}
    ),
    "not an object": lambda s: [s],
}


@pytest.mark.parametrize("damage", STATE_DAMAGE.values(), ids=STATE_DAMAGE.keys())
def test_resume_of_a_damaged_trainer_state_says_one_line(trained, damage):
    """Each case made `train --resume` raise KeyError, TypeError, ValueError, OverflowError or
    an error of NumPy's generator, hang (a position past the windows: the stream of batches
    never reached it), or blame a flag nobody typed; now one line names the file."""
    path = trained / "checkpoint" / STATE_FILE
    document = json.loads(path.read_text())
    with damaged(path, json_text(damage(document)).encode()):
        args = ["train", "--resume", str(trained), "--max-steps", "3", "--no-progress"]
        result = CliRunner().invoke(cli.main, args)  # a step to take: the position is used
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert str(path) in lines[0] or "--resume" in lines[0], lines[0]


# --- the bugs the fuzzing found, one fixed example each (the CLI cases above are more) ---------


def test_moments_of_an_integer_dtype_are_refused(run_dir):
    """Integer moments were cast to the parameters' dtype and trained on."""
    path = run_dir / "checkpoint" / OPTIMIZER_FILE
    moments = load_file(path)
    moments["exp_avg.ln_f.bias"] = moments["exp_avg.ln_f.bias"].astype(np.int32)
    with damaged(path, save(moments)):
        expected = r"of the wrong shape or dtype: exp_avg.ln_f.bias: \(8,\) int32"
        with pytest.raises(TrainError, match=expected):
            resume(run_dir)


def test_torch_rng_state_that_is_not_an_object_is_refused(torch_rng):
    """A number where the RNG states belong raised AttributeError ('int' has no 'get')."""
    from torchgpt.rng import restore_rng_states

    _, where = torch_rng
    with pytest.raises(TrainError, match=r"rng \(trainer_state.json\) is not an object"):
        restore_rng_states(3, *where, seed=0, step=3)


HUGE = "{'descr': '<u2', 'fortran_order': False, 'shape': (1099511627776,), }"
UNPARSABLE = "{'descr': '<u2', 'fortran_order': False, 'shape': (81,), |"
PYTHON_2 = "{'descr': '<u2', 'fortran_order': False, 'shape': (81L,), }"


@pytest.mark.parametrize(
    "damage",
    [
        lambda ids: npy_bytes(HUGE, ids.tobytes()),  # was: MemoryError (at 2**32 ids: 8 GiB)
        lambda ids: npy_bytes(UNPARSABLE, ids.tobytes()),  # was: tokenize.TokenError
        lambda ids: npy_bytes(PYTHON_2, ids.tobytes()),  # was: used, after NumPy's UserWarning
        lambda ids: npy_of(ids.astype(np.int64)),  # was: used, as int64
        lambda ids: npy_of(ids.reshape(-1, 1)),  # was: used, its windows wrong
        lambda ids: npy_of(np.full_like(ids, EOT_ID + 1)),  # was: used, an IndexError mid-run
    ],
    ids=[
        "2**40-ids",
        "header-numpy-cannot-tokenize",
        "header-of-python-2",
        "int64",
        "two-dimensional",
        "not-ids",
    ],
)
def test_damaged_token_cache_is_remade(token_cache, damage):
    """np.load allocated what the header claimed, let tokenize.TokenError out of a damaged
    header, and its result was used whatever its dtype, shape and values."""
    cache_dir, path, ids = token_cache
    original = path.read_bytes()
    damaged_file = damage(ids)
    rewrite(path, damaged_file)
    try:
        read = lambda: corpus.token_ids(DOCUMENTS, cache_dir)  # noqa: E731
        got, _ = attempt(read, (), len(damaged_file) + ids.nbytes)
        assert np.array_equal(got, ids) and got.dtype == np.uint16
        assert path.read_bytes() == original  # re-made
    finally:
        rewrite(path, original)


MANIFEST_DAMAGE = {
    "shards a number (TypeError, before)": lambda m: m | {"shards": 3},
    "split missing (KeyError, before)": lambda m: {k: v for k, v in m.items() if k != "split"},
    "a shard's tokens a string ('lists 4040', before)": lambda m: (
        m | {"shards": [m["shards"][0] | {"tokens": "40"}, *m["shards"][1:]]}
    ),
    "a path out of the directory (followed, before)": lambda m: (
        m | {"shards": [m["shards"][0] | {"file": "../0.txt"}, *m["shards"][1:]]}
    ),
    "the last shard's entry lost (its ids dropped, before)": lambda m: (
        m | {"shards": m["shards"][:-1]}
    ),
}


@pytest.mark.parametrize("damage", MANIFEST_DAMAGE.values(), ids=MANIFEST_DAMAGE.keys())
def test_damaged_manifest_is_refused(prepared_corpus, damage):
    directory, _ = prepared_corpus
    path = directory / shards.MANIFEST_FILE
    with damaged(path, json_text(damage(json.loads(path.read_text()))).encode()):
        with pytest.raises(DataError, match=f"{path}: .*the manifest is damaged"):
            shards.open_prepared(directory)
