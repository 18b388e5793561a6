"""What the fuzz tests share: their Hypothesis settings, ways to damage a valid file, and the
contract every reader keeps with a damaged one.

The contract, for every file npgpt reads: a damaged file is either read (and then the test
says what must still hold) or refused with the reader's one error type, whose message names
the file; never another exception, never a hang (each example runs under DEADLINE), and never
an allocation larger than the file warrants: the peak of what Python and NumPy allocate while
reading (tracemalloc sees both) stays within MEMORY_FACTOR times the files' size plus
MEMORY_SLACK.

    fuzz_settings(n)      n examples under the ci profile, 20x under thorough; DEADLINE each
    tried(fmt)            count an example against the format it damages: the session ends
                          with the counts per format (tests/conftest.py prints CASES)
    attempt(read, ...)    run a reader once: (result, None) or (None, the error); memory checked
    damaged_bytes(data)   a strategy: data truncated, bit-flipped, overwritten or spliced
    mutated_json(doc)     a strategy: a JSON document with one field removed or given a
                          hostile value (wrong type, zero, negative, 10**9, NaN, ...)
    damaged_safetensors_header(path)   a strategy: a safetensors file with a hostile header
"""

import collections
import datetime
import json
import struct
import tracemalloc

from hypothesis import currently_in_test_context, event, settings
from hypothesis import strategies as st

DEADLINE = datetime.timedelta(seconds=1)  # reading a file of a few kB takes milliseconds
MEMORY_FACTOR = 4  # the file read once, its arrays, and a copy: reading never needs more
# ...but a file parsed into Python objects, one per few bytes (a table of 3-byte entries, a JSON
# list of empty lists), costs some 50 bytes of objects per byte of file, however it is read
OBJECTS_FACTOR = 64
MEMORY_SLACK = 256 * 1024  # messages, parsed JSON, the readers' own small tables

CI_EXAMPLES = settings.get_profile("ci").max_examples
CASES = collections.Counter()  # examples run this session, per format damaged


def tried(fmt):
    """Count one example against `fmt` (every run of the test body, shrinking's included)."""
    CASES[fmt] += 1


def fuzz_settings(ci_examples):
    """`ci_examples` examples under the ci profile, as many times more under the loaded profile
    as it has over ci (thorough: 20x); every example under DEADLINE."""
    scale = settings.default.max_examples / CI_EXAMPLES
    return settings(max_examples=round(ci_examples * scale), deadline=DEADLINE)


def attempt(read, error_type, file_bytes, factor=MEMORY_FACTOR, buffer=0):
    """Run `read()`: (its result, None), or (None, the `error_type` it raised); any other
    exception propagates, failing the test. Asserts that the peak allocation stays within
    `factor` times `file_bytes` plus MEMORY_SLACK, plus `buffer` (a reader's fixed-size
    buffer, whatever the file's size). A read over the bound is measured once more:
    the first read to take a path may import a module there (torch's legacy loader imports
    tarfile: 350 kB), which is no cost of the file's."""
    result, error, peak = measured(read, error_type)
    limit = factor * file_bytes + MEMORY_SLACK + buffer
    if peak > limit:
        result, error, peak = measured(read, error_type)
    assert peak <= limit, f"reading {file_bytes} bytes allocated {peak} bytes (limit {limit})"
    if currently_in_test_context():  # a property's example, counted in its statistics
        event("refused" if error else "read")
    return result, error


def measured(read, error_type):
    """(result, error, the peak of what Python and NumPy allocated meanwhile). tracemalloc
    runs for the read alone: left on, it slows every import and draw several times over."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    try:
        result, error = read(), None
    except error_type as err:
        result, error = None, err
    finally:
        peak = tracemalloc.get_traced_memory()[1] - before
        if started:
            tracemalloc.stop()
    return result, error, peak


def assert_names(error, *paths):
    """The error's message names one of `paths` (the damaged file, or the file it contradicts)."""
    message = str(error)
    assert any(str(path) in message for path in paths), (message, paths)


# --- damage -----------------------------------------------------------------------------------


def rewrite(path, data):
    """`path` holds `data` now (None: it is gone). Unlinked first: ext4 flushes a file to disk
    when it is truncated or renamed over, which costs milliseconds an example."""
    path.unlink(missing_ok=True)
    if data is not None:
        path.write_bytes(data)


class damaged:
    """Within the block: `path` holds `data` (or is absent, for None); afterwards its own bytes."""

    def __init__(self, path, data):
        self.path, self.data, self.original = path, data, path.read_bytes()

    def __enter__(self):
        rewrite(self.path, self.data)

    def __exit__(self, *exc):
        rewrite(self.path, self.original)


@st.composite
def damaged_bytes(draw, data):
    """`data` truncated at any byte, with bits flipped, bytes overwritten, or bytes spliced in."""
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "splice"]))
    event(f"damage: {kind}")
    out = bytearray(data)
    if kind == "truncate":
        return bytes(out[: draw(st.integers(0, len(data) - 1))])
    if kind == "splice":
        at = draw(st.integers(0, len(data)))
        return bytes(out[:at] + draw(st.binary(min_size=1, max_size=16)) + out[at:])
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            out[at] ^= 1 << draw(st.integers(0, 7))
        else:
            out[at] = draw(st.integers(0, 255))
    return bytes(out)


# values a hand-edited or damaged JSON file may hold where a small positive integer belongs
HOSTILE_NUMBERS = [0, -1, 1, 3, 10**9, 10**30, 2**31, 2**63, 2**64, -(2**63), 0.5, 1e308]
HOSTILE_VALUES = st.one_of(
    st.sampled_from(HOSTILE_NUMBERS),
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and the infinities included: Python's json writes and reads them
    st.text(max_size=8),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(-3, 3), max_size=2),
)


def json_paths(node, path=()):
    """Every place in a parsed JSON document: a tuple of keys and list indices."""
    yield path
    if isinstance(node, dict | list):
        for key, child in node.items() if isinstance(node, dict) else enumerate(node):
            yield from json_paths(child, (*path, key))


@st.composite
def mutated_json(draw, document, paths=None):
    """`document` with the value at one of `paths` (default: anywhere) removed or replaced by a
    hostile value; at the root, the whole document replaced."""
    path = draw(st.sampled_from(paths if paths is not None else list(json_paths(document))))
    copy = json.loads(json.dumps(document))
    if not path:
        event("json: root replaced")
        return draw(HOSTILE_VALUES)
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.booleans()):
        event("json: field removed")
        del parent[path[-1]]
    else:
        event("json: field replaced")
        parent[path[-1]] = draw(HOSTILE_VALUES)
    return copy


def json_text(document):
    """Written as Python's json writes it (NaN and Infinity included)."""
    return json.dumps(document, indent=1)


# --- safetensors, whose header is JSON ------------------------------------------------------


def safetensors_parts(path):
    """(header as a dict, the data after it) of a safetensors file."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def safetensors_file(header, data, length=None):
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


SAFETENSORS_DTYPES = "BOOL U8 I8 F8_E5M2 F8_E4M3 I16 U16 F16 BF16 I32 U32 F32 F64 I64 U64 C64"


@st.composite
def damaged_safetensors_header(draw, path):
    """The file with its header made hostile: a length of 2**60 or past the end, a header that
    is not a JSON object, offsets outside the data or onto another tensor's, a dtype or shape
    that does not match the bytes, a shape whose product overflows, or any field mutated."""
    header, data = safetensors_parts(path)
    names = sorted(name for name in header if name != "__metadata__")
    name, other = draw(st.sampled_from(names)), draw(st.sampled_from(names))
    entry = header[name]
    kind = draw(
        st.sampled_from(
            ["length", "not an object", "offsets", "overlap", "dtype", "shape", "any field"]
        )
    )
    event(f"safetensors header: {kind}")
    if kind == "length":
        hostile = st.sampled_from([2**60, 2**64 - 1, len(data) + 10**6, 0, 7])
        length = draw(hostile | st.integers(0, 2 * len(data)))
        return safetensors_file(header, data, length)
    if kind == "not an object":
        return safetensors_file(draw(st.sampled_from([[], [1, 2], "text", 3, None])), data)
    if kind == "offsets":
        bounds = st.integers(-1, len(data) + 8) | st.sampled_from([2**63, 2**64 - 1])
        entry["data_offsets"] = [draw(bounds), draw(bounds)]
    elif kind == "overlap":
        entry["data_offsets"] = header[other]["data_offsets"]
    elif kind == "dtype":
        entry["dtype"] = draw(st.sampled_from(SAFETENSORS_DTYPES.split()) | st.text(max_size=4))
    elif kind == "shape":
        huge = [2**31, 2**32, 2**62, 2**63, 2**64 - 1]  # products past 2**64 among them
        dims = st.sampled_from([0, 1, 2, *huge]) | st.integers(-1, 9)
        entry["shape"] = draw(st.lists(dims, max_size=4))
    else:
        header = draw(mutated_json(header, paths=list(json_paths(header))[1:]))
    return safetensors_file(header, data)
