"""Every weights format `npgpt.load` reads, fuzzed: a valid checkpoint of each, written in the
exact real format (npgpt.save; Hugging Face's prefixed safetensors; pytorch_model.bin through
torch.save, as a zip archive and as the bare pickle of torch before 1.6; OpenAI's TensorFlow
release through save_openai), damaged, then loaded.

The contract (tests/fuzzing.py): the damaged checkpoint loads, or `npgpt.load` raises
CheckpointError naming the file; nothing else, within the deadline and the memory bound. A
checkpoint that still loads has the original's names, shapes and dtypes; OpenAI's checks a
CRC-32C of every block and tensor, so there it must be bit for bit the original. The command
line turns every refusal into one line and exit status 1.

The fixed examples below the properties are the bugs the fuzzing found, each kept as a plain
regression test.
"""

import io
import json
import re
import shutil
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fuzzing import (
    HOSTILE_NUMBERS,
    OBJECTS_FACTOR,
    assert_names,
    attempt,
    damaged,
    damaged_bytes,
    damaged_safetensors_header,
    fuzz_settings,
    json_text,
    mutated_json,
    safetensors_file,
    safetensors_parts,
    tried,
)
from hf_files import write_hf_directory
from hypothesis import event, given
from hypothesis import strategies as st

import cli
import npgpt
from npgpt.config import GPTConfig
from npgpt.model import init_params
from npgpt.names import param_shapes
from npgpt.weights import tf_bundle
from npgpt.weights.check import CheckpointError
from npgpt.weights.crc32c import crc32c, mask
from npgpt.weights.formats import write_config
from npgpt.weights.openai import save_openai

torch = pytest.importorskip("torch")

CFG = GPTConfig(vocab_size=11, context_length=4, emb_dim=8, n_heads=2, n_layers=1)
INDEX = "model.ckpt.index"
DATA = "model.ckpt.data-00000-of-00001"
FORMATS = ("npgpt", "hf", "pytorch", "pytorch-legacy", "openai")


class Pristine:
    """One valid checkpoint of every format, and the params they hold."""

    def __init__(self, params, dirs):
        self.params, self.dirs = params, dirs  # dirs: {format: directory}
        self.table = tf_bundle.read_table(dirs["openai"] / INDEX)  # the index's {key: entry}

    def __repr__(self):  # Hypothesis shows a failing example's arguments: keep this one short
        return "Pristine(...)"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A test damages one file of a checkpoint and puts the original back (`damaged`)."""
    params = init_params(CFG, seed=3)
    root = tmp_path_factory.mktemp("checkpoints")
    npgpt.save(root / "npgpt", CFG, params)
    write_hf_directory(root / "hf", CFG, params, lm_head=True)
    tensors = {f"transformer.{name}": torch.from_numpy(value) for name, value in params.items()}
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"]  # tied: one storage, as HF's
    for fmt, zipped in (("pytorch", True), ("pytorch-legacy", False)):  # legacy: torch < 1.6
        (root / fmt).mkdir()
        torch.save(tensors, root / fmt / "pytorch_model.bin", _use_new_zipfile_serialization=zipped)
        write_config(root / fmt / "config.json", CFG)
    save_openai(root / "openai", CFG, params)
    dirs = {fmt: root / fmt for fmt in FORMATS}
    for directory in dirs.values():  # before the deadlines: imports, CRC tables, first loads
        npgpt.load(directory, dtype=None, tf_reader="numpy")
    npgpt.load(dirs["openai"])  # TensorFlow's reader, if installed: what the CLI uses
    return Pristine(params, dirs)


def checkpoint_bytes(directory):
    return sum(path.stat().st_size for path in directory.iterdir() if path.is_file())


def load_damaged(pristine, fmt, *names, exact=False, reader="numpy", config_damaged=False):
    """Load the (damaged) checkpoint of `fmt` under the contract; a refusal must name one of
    `names`; a success must give the original names, shapes, dtypes (and bytes, if `exact`),
    and the original config; but where the config file is the damaged one, a config of the
    original's shapes: it can still spell a valid number of heads, dropout rate or LayerNorm
    epsilon, which no reader can tell from the true one."""
    directory, params = pristine.dirs[fmt], pristine.params
    read = lambda: npgpt.load(directory, dtype=None, tf_reader=reader)  # noqa: E731
    loaded, error = attempt(read, CheckpointError, checkpoint_bytes(directory))
    if error is not None:
        assert_names(error, *names)
        return
    config, loaded_params = loaded
    assert param_shapes(config) == param_shapes(CFG) if config_damaged else config == CFG
    assert list(loaded_params) == list(params)
    for name, value in params.items():
        assert (loaded_params[name].shape, loaded_params[name].dtype) == (value.shape, value.dtype)
        if exact:
            assert loaded_params[name].tobytes() == value.tobytes(), name


# --- safetensors: npgpt's checkpoint and Hugging Face's ---------------------------------------


@fuzz_settings(ci_examples=100)
@given(fmt=st.sampled_from(["npgpt", "hf"]), data=st.data())
def test_safetensors_damaged_anywhere(pristine, fmt, data):
    tried("model.safetensors (npgpt, Hugging Face)")
    path = pristine.dirs[fmt] / "model.safetensors"
    with damaged(path, data.draw(damaged_bytes(path.read_bytes()))):
        load_damaged(pristine, fmt, path)


@fuzz_settings(ci_examples=100)
@given(fmt=st.sampled_from(["npgpt", "hf"]), data=st.data())
def test_safetensors_hostile_header(pristine, fmt, data):
    tried("model.safetensors (npgpt, Hugging Face)")
    path = pristine.dirs[fmt] / "model.safetensors"
    with damaged(path, data.draw(damaged_safetensors_header(path))):
        load_damaged(pristine, fmt, path)


# --- config.json --------------------------------------------------------------------------------


CONFIG_SIZES = ["n_layer", "n_embd", "n_head", "n_positions", "vocab_size", "n_inner"]


@st.composite
def damaged_config(draw, path):
    """config.json with a field missing or of a hostile type or size (n_layer = 10**9: a model
    of terabytes), or its bytes damaged."""
    document = json.loads(path.read_text())
    kind = draw(st.sampled_from(["huge", "field", "bytes"]))
    if kind == "huge":
        event("config: a size of 10**9 or more")
        document[draw(st.sampled_from(CONFIG_SIZES))] = draw(st.sampled_from([10**9, 10**12]))
        return json_text(document).encode()
    if kind == "field":
        return json_text(draw(mutated_json(document))).encode()
    return draw(damaged_bytes(path.read_bytes()))


@fuzz_settings(ci_examples=100)
@given(fmt=st.sampled_from(["npgpt", "pytorch"]), data=st.data())
def test_config_json_hostile(pristine, fmt, data):
    tried("config.json")
    directory = pristine.dirs[fmt]
    path = directory / "config.json"
    weights = "model.safetensors" if fmt == "npgpt" else "pytorch_model.bin"
    with damaged(path, data.draw(damaged_config(path))):
        load_damaged(pristine, fmt, path, directory / weights, config_damaged=True)


# --- pytorch_model.bin ---------------------------------------------------------------------------


@fuzz_settings(ci_examples=50)
@given(fmt=st.sampled_from(["pytorch", "pytorch-legacy"]), data=st.data())
def test_pytorch_bin_damaged_anywhere(pristine, fmt, data):
    """torch's zip archive, or the bare pickle that torch before 1.6 saved."""
    tried("pytorch_model.bin")
    path = pristine.dirs[fmt] / "pytorch_model.bin"
    with damaged(path, data.draw(damaged_bytes(path.read_bytes()))):
        load_damaged(pristine, fmt, path)


def with_pickle(path, damage):
    """The .bin (a zip archive) with its data.pkl replaced by `damage(data.pkl)`, the archive
    itself intact: what reaches the weights-only unpickler is the damaged pickle."""
    out = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            content = src.read(info.filename)
            dst.writestr(
                info.filename, damage(content) if info.filename.endswith("data.pkl") else content
            )
    return out.getvalue()


@fuzz_settings(ci_examples=50)
@given(data=st.data())
def test_pytorch_bin_damaged_pickle(pristine, data):
    tried("pytorch_model.bin")
    path = pristine.dirs["pytorch"] / "pytorch_model.bin"
    with damaged(path, with_pickle(path, lambda pickled: data.draw(damaged_bytes(pickled)))):
        load_damaged(pristine, "pytorch", path)


# --- OpenAI's TensorFlow checkpoint -----------------------------------------------------------


def block_handles(index):
    """[(offset, size)] of the index file's metaindex, index and data blocks."""
    footer = index[-tf_bundle.FOOTER_BYTES :]
    handles, pos = [], 0
    for _ in range(2):
        offset, pos = tf_bundle.read_varint(footer, pos, "footer")
        size, pos = tf_bundle.read_varint(footer, pos, "footer")
        handles.append((offset, size))
    index_offset, index_size = handles[1]
    block = index[index_offset : index_offset + index_size]
    for _, handle in tf_bundle.block_entries(block, "index block"):
        offset, pos = tf_bundle.read_varint(handle, 0, "handle")
        handles.append((offset, tf_bundle.read_varint(handle, pos, "handle")[0]))
    return handles


@st.composite
def damaged_block(draw, index):
    """The index file with one block's contents (or compression byte) damaged and its CRC-32C
    made to match again, so the damage reaches the parser: varints, entry lengths, restarts."""
    offset, size = draw(st.sampled_from(block_handles(index)))
    out = bytearray(index)
    for _ in range(draw(st.integers(1, 3))):
        at = offset + draw(st.integers(0, size))  # size: the trailer's compression-type byte
        if draw(st.booleans()):
            out[at] ^= 1 << draw(st.integers(0, 7))
        else:
            out[at] = draw(st.integers(0, 255))
    crc_at = offset + size + 1
    out[crc_at : crc_at + 4] = struct.pack("<I", mask(crc32c(bytes(out[offset:crc_at]))))
    return bytes(out)


def encode_message(fields):
    """A protobuf message from {number: [values]}: ints as varints (a negative one as its 64
    bits, as protobuf writes an int64; field 6, the CRC, as fixed32 where it fits), bytes
    length-delimited."""
    out = b""
    for number, values in fields.items():
        for value in values:
            if number == 6 and isinstance(value, int) and 0 <= value < 2**32:
                out += tf_bundle.encode_varint(number << 3 | 5) + struct.pack("<I", value)
            else:
                out += tf_bundle.proto_field(
                    number, value % 2**64 if isinstance(value, int) else value
                )
    return out


HOSTILE_FIELD_VALUES = (
    st.sampled_from([0, 1, 2, 3, 7, 14, 19, 2**31, 2**32, 2**63, 2**64 - 1] + HOSTILE_NUMBERS[:3])
    | st.integers(0, 2**64 - 1)
    | st.binary(max_size=6)  # bytes where a number belongs: the wire type a damaged file may carry
)


@st.composite
def damaged_entry(draw, table):
    """A valid index file (every CRC right) whose entries lie: a field of the header or of a
    tensor's entry removed or replaced (dtype, shape, shard, offset, size, CRC; a shape whose
    product overflows; a tensor moved outside its shard or onto another; a partitioned-variable
    field), or a key replaced by bytes that are not UTF-8."""
    table = dict(table)
    key = draw(st.sampled_from(sorted(table)))
    fields = tf_bundle.parse_proto(table[key], "entry")
    kind = draw(st.sampled_from(["field", "remove", "shape", "move", "slices", "key"]))
    event(f"index entry: {kind}")
    if kind == "field":
        fields[draw(st.integers(1, 8))] = [draw(HOSTILE_FIELD_VALUES)]
    elif kind == "remove" and fields:
        del fields[draw(st.sampled_from(sorted(fields)))]
    elif kind == "shape":
        dims = st.sampled_from([0, 1, 8, 2**32, 2**62, 2**63, 2**64 - 1]) | st.integers(0, 40)
        shape = [draw(dims) for _ in range(draw(st.integers(0, 4)))]
        dim_messages = [tf_bundle.proto_field(1, dim) for dim in shape]
        fields[2] = [b"".join(tf_bundle.proto_field(2, dim) for dim in dim_messages)]
    elif kind == "move":
        other = tf_bundle.parse_proto(table[draw(st.sampled_from(sorted(table)))], "entry")
        fields[4] = [draw(st.sampled_from([other.get(4, [0])[0], 2**40]) | st.integers(0, 4096))]
    elif kind == "slices":
        fields[7] = [b""]
    elif kind == "key" and key:
        del table[key]
        key = draw(st.binary(min_size=1, max_size=6))
    table[key] = encode_message(fields)
    entries = sorted(table.items())
    return tf_bundle.table_bytes(entries)


@fuzz_settings(ci_examples=50)
@given(data=st.data())
def test_openai_index_damaged_anywhere(pristine, data):
    tried("tensor bundle .index")
    path = pristine.dirs["openai"] / INDEX
    with damaged(path, data.draw(damaged_bytes(path.read_bytes()))):
        load_damaged(pristine, "openai", pristine.dirs["openai"], exact=True)


@fuzz_settings(ci_examples=50)
@given(data=st.data())
def test_openai_index_damaged_block(pristine, data):
    tried("tensor bundle .index")
    path = pristine.dirs["openai"] / INDEX
    with damaged(path, data.draw(damaged_block(path.read_bytes()))):
        load_damaged(pristine, "openai", pristine.dirs["openai"], exact=True)


@fuzz_settings(ci_examples=60)
@given(data=st.data())
def test_openai_index_lying_entries(pristine, data):
    tried("tensor bundle .index")
    path = pristine.dirs["openai"] / INDEX
    with damaged(path, data.draw(damaged_entry(pristine.table))):
        load_damaged(pristine, "openai", pristine.dirs["openai"], exact=True)


@fuzz_settings(ci_examples=40)
@given(data=st.data())
def test_openai_data_damaged(pristine, data):
    tried("tensor bundle .data (damaged or missing)")
    path = pristine.dirs["openai"] / DATA
    damage = data.draw(st.none() | damaged_bytes(path.read_bytes()))  # None: the shard is missing
    with damaged(path, damage):
        load_damaged(pristine, "openai", pristine.dirs["openai"], exact=True)


@fuzz_settings(ci_examples=60)
@given(name=st.sampled_from(["hparams.json", "checkpoint"]), data=st.data())
def test_openai_hparams_and_checkpoint_file_damaged(pristine, name, data):
    tried(f"{name} (OpenAI)")
    path = pristine.dirs["openai"] / name
    kinds = [damaged_bytes(path.read_bytes())]
    if name == "hparams.json":
        document = json.loads(path.read_text())
        kinds.append(mutated_json(document).map(lambda doc: json_text(doc).encode()))
        huge = {**document, "n_layer": 10**9}
        kinds.append(st.just(json_text(huge).encode()))
    with damaged(path, data.draw(st.one_of(kinds))):
        hparams = name == "hparams.json"
        load_damaged(
            pristine, "openai", pristine.dirs["openai"], exact=True, config_damaged=hparams
        )


@fuzz_settings(ci_examples=15)
@given(name=st.sampled_from([INDEX, DATA]), data=st.data())
def test_tensorflow_reader_damaged(pristine, name, data):
    """TensorFlow's own reader (what `npgpt.load` uses when TensorFlow is installed) keeps the
    same contract; its C++ allocations are outside tracemalloc's view, so the memory bound
    says little here, the rest of the contract all."""
    pytest.importorskip("tensorflow")  # imported already, by `pristine`, when installed
    tried("tensor bundle, through TensorFlow's reader")
    path = pristine.dirs["openai"] / name
    with damaged(path, data.draw(damaged_bytes(path.read_bytes()))):
        load_damaged(pristine, "openai", pristine.dirs["openai"], reader="tensorflow")


# --- the command line ---------------------------------------------------------------------------

FILES = {
    "npgpt": ["model.safetensors", "config.json"],
    "hf": ["model.safetensors"],
    "pytorch": ["pytorch_model.bin"],
    "pytorch-legacy": ["pytorch_model.bin"],
    "openai": [INDEX, DATA, "hparams.json"],
}


@fuzz_settings(ci_examples=40)
@given(fmt=st.sampled_from(FORMATS), data=st.data())
def test_cli_says_one_line(pristine, fmt, data):
    """`info` on a damaged checkpoint: its description (exit 0), or one line and exit 1."""
    tried("command line: info on a damaged checkpoint")
    path = pristine.dirs[fmt] / data.draw(st.sampled_from(FILES[fmt]))
    with damaged(path, data.draw(damaged_bytes(path.read_bytes()))):
        with warnings.catch_warnings(record=True) as caught:  # a warning is a line too
            warnings.simplefilter("always")
            result = CliRunner().invoke(cli.main, ["info", str(pristine.dirs[fmt])])
    assert not caught, [str(warning.message) for warning in caught]
    if result.exit_code == 0:
        assert result.stdout.startswith("format"), result.output
        return
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert str(pristine.dirs[fmt]) in lines[0]


# --- the bugs the fuzzing found, one fixed example each -------------------------------------------


def test_safetensors_float8_is_refused_not_an_attribute_error(pristine, tmp_path):
    """safetensors looks up np.float8_e4m3fn, which NumPy lacks: AttributeError, before."""
    shutil.copytree(pristine.dirs["npgpt"], tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    header, data = safetensors_parts(path)
    entry = header["ln_f.bias"]
    entry["dtype"], entry["shape"] = "F8_E4M3", [entry["shape"][0] * 4]
    path.write_bytes(safetensors_file(header, data))
    with pytest.raises(CheckpointError, match=r"dtype NumPy cannot represent \(ln_f.bias: float8"):
        npgpt.load(tmp_path / "ckpt")


def copy_of(pristine, fmt, tmp_path):
    return Path(shutil.copytree(pristine.dirs[fmt], tmp_path / fmt))


def with_bin(directory, tensors, **save_options):
    """`directory` (a copy of the pytorch checkpoint) with `tensors` as its pytorch_model.bin."""
    torch.save(tensors, directory / "pytorch_model.bin", **save_options)
    return directory


def test_pytorch_bin_of_parameters_loads(pristine, tmp_path):
    """A dict of nn.Parameter (requires_grad) made .numpy() raise RuntimeError."""
    tensors = {name: torch.nn.Parameter(torch.from_numpy(v)) for name, v in pristine.params.items()}
    directory = with_bin(copy_of(pristine, "pytorch", tmp_path), tensors)
    _, params = npgpt.load(directory)
    assert all(np.array_equal(params[name], v) for name, v in pristine.params.items())


def test_pytorch_bin_pickled_with_another_protocol_loads_without_a_warning(pristine, tmp_path):
    """torch.load warned (a second line on stderr, before the CLI's one) of any pickle protocol
    but its own."""
    tensors = {name: torch.from_numpy(value) for name, value in pristine.params.items()}
    directory = with_bin(copy_of(pristine, "pytorch", tmp_path), tensors, pickle_protocol=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        npgpt.load(directory)


@pytest.mark.parametrize(
    "tensor, phrase",
    [
        (torch.ones(8).to(torch.float8_e4m3fn), "Float8_e4m3fn"),  # was: TypeError
        (torch.ones(8).to_sparse(), "Sparse"),  # was: TypeError
        (torch.empty(8, device="meta"), "meta"),  # was: TypeError
    ],
    ids=["float8", "sparse", "meta"],
)
def test_pytorch_bin_tensor_numpy_cannot_hold_is_refused(pristine, tmp_path, tensor, phrase):
    tensors = {name: torch.from_numpy(value) for name, value in pristine.params.items()}
    directory = with_bin(copy_of(pristine, "pytorch", tmp_path), tensors | {"ln_f.bias": tensor})
    with pytest.raises(
        CheckpointError, match=f"tensor 'ln_f.bias' cannot be read into NumPy.*{phrase}"
    ):
        npgpt.load(directory)


def test_pytorch_bin_with_a_key_that_is_not_a_name_is_refused(pristine, tmp_path):
    """A key of 3 reached str.removeprefix: AttributeError."""
    directory = with_bin(copy_of(pristine, "pytorch", tmp_path), {3: torch.ones(2)})
    with pytest.raises(CheckpointError, match="tensors under keys that are not names: 3"):
        npgpt.load(directory)


def test_pytorch_bin_one_number_spread_over_2_36_elements_is_refused(pristine, tmp_path):
    """A pickle can make a tensor of 2**36 bfloat16 elements out of one stored number (stride
    0); widening it to float32 asked for 256 GiB."""
    huge = torch.ones(1, dtype=torch.bfloat16).expand(2**36)
    directory = with_bin(copy_of(pristine, "pytorch", tmp_path), {"wte.weight": huge})
    with pytest.raises(CheckpointError, match="its tensors claim 137,438,953,472 bytes"):
        npgpt.load(directory)


def test_config_of_a_billion_layers_is_refused_before_anything_is_built(pristine, tmp_path):
    """n_layer = 10**9 made `param_shapes` build a name and a shape for each of 1.2e10
    tensors (hours, and gigabytes) before `check_params` could say the file is too small."""
    directory = copy_of(pristine, "npgpt", tmp_path)
    write_config(directory / "config.json", CFG.replace(n_layers=10**9))
    _, error = attempt(lambda: npgpt.load(directory), CheckpointError, checkpoint_bytes(directory))
    assert re.search(r"config.json: describes a model of [\d,]+ parameters", str(error))


@pytest.mark.parametrize(
    "text, phrase",
    [
        ("[" * 100_000, "maximum recursion depth"),  # was: RecursionError
        ('{"n_layer": 1' + "0" * 5000 + "}", "Exceeds the limit"),  # was: ValueError
    ],
    ids=["nested-100000-deep", "a-5001-digit-number"],
)
@pytest.mark.parametrize("fmt, name", [("npgpt", "config.json"), ("openai", "hparams.json")])
def test_json_beyond_what_python_parses_is_refused(pristine, tmp_path, fmt, name, text, phrase):
    directory = copy_of(pristine, fmt, tmp_path)
    (directory / name).write_text(text)
    with pytest.raises(CheckpointError, match=f"{name}: not valid JSON .*{phrase}"):
        npgpt.load(directory, tf_reader="numpy")


def test_openai_checkpoint_file_that_is_not_text(pristine, tmp_path):
    """Bytes that are not UTF-8 in `checkpoint` raised UnicodeDecodeError."""
    directory = copy_of(pristine, "openai", tmp_path)
    (directory / "checkpoint").write_bytes(b'model_checkpoint_path: "model\xff.ckpt"\n')
    with pytest.raises(CheckpointError, match="checkpoint: cannot be read as text"):
        npgpt.load(directory, tf_reader="numpy")


def with_index(pristine, tmp_path, change):
    """A copy of the OpenAI checkpoint whose index is `change(table)`, written as a valid table
    (every CRC right)."""
    directory = copy_of(pristine, "openai", tmp_path)
    table = {key: tf_bundle.parse_proto(value, "entry") for key, value in pristine.table.items()}
    entries = change(table)
    index = tf_bundle.table_bytes(sorted((key, encode_message(f)) for key, f in entries.items()))
    (directory / INDEX).write_bytes(index)
    return directory


def changed(table, key, fields, without=None):
    """`table` with the entry at `key` given `fields` (protobuf field number: [values]), and
    the field `without` removed."""
    entry = {number: values for number, values in table[key].items() if number != without}
    return table | {key: entry | fields}


@pytest.mark.parametrize(
    "change, phrase",
    [
        (lambda t: changed(t, b"model/wte", {3: [b"\x01"]}), "holds bytes where a number"),
        (lambda t: t | {b"model/\xffwte": t.pop(b"model/wte")}, "a tensor name is not UTF-8"),
        (
            lambda t: changed(t, b"model/wte", {2: [shape_message([2**32, 2**32])], 5: [0]}, 6),
            "has 0 bytes, its shape needs 73786976294838206464",
        ),
    ],
    ids=["shard-as-bytes", "name-not-utf8", "shape-product-overflows-int64"],
)
def test_openai_index_entries_that_lie(pristine, tmp_path, change, phrase):
    """Was: TypeError (bytes where a number belongs); UnicodeDecodeError; a (2**32, 2**32)
    shape of 0 bytes (and no CRC), whose element count overflows int64 to 0, passed the size
    check and failed in reshape with ValueError."""
    directory = with_index(pristine, tmp_path, change)
    with pytest.raises(CheckpointError, match=phrase) as err:
        npgpt.load(directory, tf_reader="numpy")
    assert str(directory) in str(err.value)


def test_openai_index_of_overlapping_tensors_is_refused(pristine, tmp_path):
    """Tensors were copied out one by one, overlapping or not: an index of 1,000 entries all
    naming the whole data file (each with the right CRC) read it 1,000 times over. What is
    left is the objects of the entries themselves."""
    data = (pristine.dirs["openai"] / DATA).read_bytes()
    whole = {1: [4], 2: [shape_message([len(data)])], 5: [len(data)], 6: [mask(crc32c(data))]}
    copies = {b"copy/%04d" % i: whole for i in range(1000)}
    directory = with_index(pristine, tmp_path, lambda table: table | copies)
    read = lambda: npgpt.load(directory, tf_reader="numpy")  # noqa: E731
    _, error = attempt(read, CheckpointError, checkpoint_bytes(directory), OBJECTS_FACTOR)
    assert "two tensors overlap at byte 0 of shard 0" in str(error)


def shape_message(dims):
    return b"".join(tf_bundle.proto_field(2, tf_bundle.proto_field(1, dim)) for dim in dims)


def test_openai_index_listing_one_block_many_times_is_refused(pristine, tmp_path):
    """An index block listing the same data block n times made the reader parse it n times:
    time quadratic in the file's size."""
    directory = copy_of(pristine, "openai", tmp_path)
    index = (directory / INDEX).read_bytes()
    metaindex, index_block, data_block = block_handles(index)
    out = bytearray(index[: data_block[0] + data_block[1] + tf_bundle.BLOCK_TRAILER_BYTES])
    handle = tf_bundle.encode_varint(data_block[0]) + tf_bundle.encode_varint(data_block[1])
    entries = [(b"k%06d" % i, handle) for i in range(20_000)]
    index_handle = tf_bundle.write_block(out, entries)
    metaindex_handle = tf_bundle.encode_varint(metaindex[0]) + tf_bundle.encode_varint(metaindex[1])
    footer = (metaindex_handle + index_handle).ljust(tf_bundle.FOOTER_BYTES - 8, b"\x00")
    (directory / INDEX).write_bytes(bytes(out) + footer + struct.pack("<Q", tf_bundle.TABLE_MAGIC))
    with pytest.raises(CheckpointError, match="lists data blocks out of order or overlapping"):
        npgpt.load(directory, tf_reader="numpy")


def test_openai_index_keys_cannot_spell_more_than_the_block_holds(pristine, tmp_path):
    """Prefix compression let 4,000 entries of 4 bytes spell 4,000 keys of up to 4,000 bytes
    each: 8 MB from a 16 kB block (n^2 / 2 bytes from n entries). Now the keys are refused
    once they add up to 16 times the block, and what is left is the entries' objects."""
    directory = copy_of(pristine, "openai", tmp_path)
    block = bytearray()
    for length in range(4000):  # shares the whole previous key, adds one byte, no value
        block += tf_bundle.encode_varint(length) + b"\x01\x00" + b"k"
    block += struct.pack("<II", 0, 1)  # one restart, at the first entry
    out = bytearray()
    handle = encode_raw_block(out, bytes(block))
    index_handle = tf_bundle.write_block(out, [(b"k" * 4000, handle)])
    empty = tf_bundle.write_block(out, [])
    footer = (empty + index_handle).ljust(tf_bundle.FOOTER_BYTES - 8, b"\x00")
    (directory / INDEX).write_bytes(bytes(out) + footer + struct.pack("<Q", tf_bundle.TABLE_MAGIC))
    read = lambda: npgpt.load(directory, tf_reader="numpy")  # noqa: E731
    _, error = attempt(read, CheckpointError, checkpoint_bytes(directory), OBJECTS_FACTOR)
    assert "a block's keys add up to more than it can encode" in str(error)


def encode_raw_block(out, block):
    """Append `block` (contents as given) and its trailer to `out`; return its handle."""
    handle = tf_bundle.encode_varint(len(out)) + tf_bundle.encode_varint(len(block))
    out += block + b"\x00" + struct.pack("<I", mask(crc32c(block + b"\x00")))
    return handle


def test_pytorch_bin_legacy_pickle_claiming_a_4_gib_string_is_refused(pristine, tmp_path):
    """A .bin that is not a zip archive went to torch's legacy loader, which unpickled straight
    from the file: a string's 4-byte length of 4 GiB made read(n) allocate 4 GiB (a byte of
    the zip magic damaged: 263 kB, from a 10 kB file)."""
    directory = copy_of(pristine, "pytorch", tmp_path)
    path = directory / "pytorch_model.bin"
    path.write_bytes(b"X" + struct.pack("<I", 2**32 - 1) + b"a few bytes")
    read = lambda: npgpt.load(directory)  # noqa: E731
    _, error = attempt(read, CheckpointError, checkpoint_bytes(directory))
    assert f"{path}: not a readable PyTorch weights file" in str(error)
