"""TensorFlow's checkpoint format, the "tensor bundle", read and written with NumPy alone.

OpenAI released GPT-2 as a TensorFlow 1 checkpoint. Reading it normally means installing
TensorFlow (hundreds of MB) for one function call. The format is small enough to read by hand.
A checkpoint `PREFIX` (e.g. `model.ckpt`) is two or more files:

  PREFIX.data-00000-of-00001   the tensors' raw bytes, back to back (one file per shard)
  PREFIX.index                 a sorted key -> value table saying where each tensor lives

The index is a LevelDB "SSTable" (the same layout TensorFlow's `tensorflow/core/lib/io/table`
writes), read from the end:

  footer (last 48 bytes)   two block handles -- metaindex, then index -- zero padding to 40
                           bytes, then the magic number 0xdb4775248b80fb57 (8 bytes, LE)
  block handle             varint offset, varint size: where a block sits in the file
  index block              one entry per data block: key >= that block's last key, value = the
                           data block's handle
  data block               the key -> value entries, sorted by key
  block trailer            after every block, 5 bytes: compression type (0 = none; bundles are
                           never compressed) and the masked CRC-32C of the block + type byte

Inside a block, keys are prefix-compressed against the previous key:

  entry      varint shared, varint non_shared, varint value_len,
             key[shared:] (non_shared bytes), value (value_len bytes)
  restarts   every 16th entry stores its whole key (shared = 0); the block ends with the
             offsets of those entries (uint32 LE each) and their count (uint32 LE)

A varint is 7 bits per byte, least significant group first, high bit set on all but the last.

The values are protocol buffers, decoded here by hand. Each field is a varint tag
`(number << 3) | wire_type` and then a varint (type 0), 8 bytes (1), a varint length and that many
bytes (2), or 4 bytes (5). The key "" holds the BundleHeaderProto:

  1 num_shards (int32)   2 endianness (0 little, 1 big)   3 version (VersionDef)

and every other key is a tensor's name with its BundleEntryProto:

  1 dtype (DataType enum: 1 float32, 2 float64, 3 int32, 19 float16, 14 bfloat16, ...)
  2 shape (TensorShapeProto: repeated field 2 `dim`, each with field 1 `size`)
  3 shard_id   4 offset   5 size      where the bytes are in PREFIX.data-{shard_id}-of-{N}
  6 crc32c (fixed32)                  masked CRC-32C of those bytes (see `npgpt.weights.crc32c`)
  7 slices                            set only for partitioned variables (not supported here)

`read_bundle` checks every CRC, bound and size, so a truncated or corrupt checkpoint is a
`BundleError` naming the file and the tensor, not a wrong array. `write_bundle` writes the same
format; TensorFlow's own reader accepts it (tests/test_weights_tf.py checks both directions).

>>> import tempfile, numpy as np
>>> prefix = tempfile.mkdtemp() + "/model.ckpt"
>>> write_bundle(prefix, {"model/wpe": np.arange(6, dtype=np.float32).reshape(2, 3)})
>>> list_tensors(prefix)
{'model/wpe': (2, 3)}
>>> read_bundle(prefix)["model/wpe"]
array([[0., 1., 2.],
       [3., 4., 5.]], dtype=float32)
"""

import glob
import itertools
import math
import struct
from pathlib import Path

import numpy as np

from npgpt.weights.atomic import atomic_write
from npgpt.weights.check import CheckpointError
from npgpt.weights.crc32c import crc32c, mask, unmask

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48
BLOCK_TRAILER_BYTES = 5
RESTART_INTERVAL = 16
HEADER_KEY = b""
BUNDLE_VERSION = 1  # the producer version TensorFlow writes
DTYPES = {  # TensorFlow DataType enum -> NumPy dtype (little-endian)
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<i4"),
    4: np.dtype("u1"),
    5: np.dtype("<i2"),
    6: np.dtype("i1"),
    9: np.dtype("<i8"),
    10: np.dtype("?"),
    14: np.dtype("<u2"),  # bfloat16: the top 16 bits of a float32; widened on read
    17: np.dtype("<u2"),
    19: np.dtype("<f2"),
    22: np.dtype("<u4"),
    23: np.dtype("<u8"),
}
BFLOAT16 = 14
DTYPE_CODES = {dtype: code for code, dtype in DTYPES.items() if code != BFLOAT16}


class BundleError(CheckpointError):
    """A TensorFlow checkpoint that is truncated, corrupt, or uses a feature not read here."""


# --- varints and protocol buffers -------------------------------------------------------------


def read_varint(buf, pos, where):
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise BundleError(f"{where}: malformed varint (the index is truncated or corrupt)")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def encode_varint(value):
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def parse_proto(buf, where):
    """A message's fields: {number: [values]}; varints and fixed ints as int, others as bytes."""
    fields, pos = {}, 0
    while pos < len(buf):
        tag, pos = read_varint(buf, pos, where)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, pos = read_varint(buf, pos, where)
        elif wire_type in (1, 5):
            width = 8 if wire_type == 1 else 4
            if pos + width > len(buf):
                raise BundleError(f"{where}: protobuf field {number} runs past its message")
            value, pos = int.from_bytes(buf[pos : pos + width], "little"), pos + width
        elif wire_type == 2:
            length, pos = read_varint(buf, pos, where)
            if pos + length > len(buf):
                raise BundleError(f"{where}: protobuf field {number} runs past its message")
            value, pos = bytes(buf[pos : pos + length]), pos + length
        else:
            raise BundleError(f"{where}: protobuf wire type {wire_type} is not valid here")
        fields.setdefault(number, []).append(value)
    return fields


def proto_field(number, value):
    """Encode one field: int -> varint, bytes -> length-delimited."""
    if isinstance(value, bytes):
        return encode_varint(number << 3 | 2) + encode_varint(len(value)) + value
    return encode_varint(number << 3) + encode_varint(value)


def number(fields, field, default, where):
    """A numeric field's value; a damaged message can carry bytes where a number belongs."""
    value = fields.get(field, [default])[0]
    if isinstance(value, bytes):
        raise BundleError(f"{where}: protobuf field {field} holds bytes where a number belongs")
    return value


def messages(fields, field, where):
    """A message field's values (each the bytes of a message), however many there are."""
    values = fields.get(field, [])
    if not all(isinstance(value, bytes) for value in values):
        raise BundleError(f"{where}: protobuf field {field} holds a number where a message belongs")
    return values


def parse_entry(buf, name, index_path):
    where = f"{index_path}: entry {name!r}"
    fields = parse_proto(buf, where)
    if 7 in fields:
        raise BundleError(f"{where} is a partitioned (sliced) variable; not supported")
    shape = parse_proto(b"".join(messages(fields, 2, where)), f"{where}, shape")
    dims = messages(shape, 2, f"{where}, shape")
    return {
        "dtype": number(fields, 1, 0, where),
        "shape": tuple(number(parse_proto(dim, where), 1, 0, where) for dim in dims),
        "shard_id": number(fields, 3, 0, where),
        "offset": number(fields, 4, 0, where),
        "size": number(fields, 5, 0, where),
        "crc32c": number(fields, 6, None, where),
    }


def encode_entry(array, offset):
    dtype_code = DTYPE_CODES[array.dtype.newbyteorder("<")]
    shape = b"".join(proto_field(2, proto_field(1, dim)) for dim in array.shape)
    crc = struct.pack("<I", mask(crc32c(array)))
    return (
        proto_field(1, dtype_code)
        + proto_field(2, shape)
        + (proto_field(4, offset) if offset else b"")
        + proto_field(5, array.nbytes)
        + encode_varint(6 << 3 | 5)
        + crc
    )


# --- the SSTable ------------------------------------------------------------------------------


def read_block(data, offset, size, where):
    """One block's contents, after checking its trailer's compression type and CRC."""
    end = offset + size + BLOCK_TRAILER_BYTES
    if end > len(data):
        raise BundleError(f"{where}: a block runs past the end of the file (truncated?)")
    contents, trailer = data[offset : offset + size], data[offset + size : end]
    if trailer[0] != 0:
        raise BundleError(
            f"{where}: block compression type {trailer[0]}; bundles are not compressed"
        )
    stored = struct.unpack("<I", trailer[1:5])[0]
    if crc32c(data[offset : offset + size + 1]) != unmask(stored):
        raise BundleError(f"{where}: block at byte {offset} fails its CRC-32C check (corrupt)")
    return contents


def block_entries(block, where):
    """Every (key, value) in a block, undoing the prefix compression."""
    if len(block) < 4:
        raise BundleError(f"{where}: block too short to hold its restart count")
    n_restarts = struct.unpack("<I", block[-4:])[0]
    entries_end = len(block) - 4 - 4 * n_restarts
    if entries_end < 0:
        raise BundleError(f"{where}: block's restart array is larger than the block")
    entries, key, pos, key_bytes = [], b"", 0, 0
    while pos < entries_end:
        shared, pos = read_varint(block, pos, where)
        non_shared, pos = read_varint(block, pos, where)
        value_len, pos = read_varint(block, pos, where)
        if shared > len(key) or pos + non_shared + value_len > entries_end:
            raise BundleError(f"{where}: malformed block entry at byte {pos}")
        key = key[:shared] + bytes(block[pos : pos + non_shared])
        pos += non_shared
        entries.append((key, bytes(block[pos : pos + value_len])))
        pos += value_len
        # Prefix compression lets n entries of a few bytes spell n keys as long as the block,
        # n^2 bytes in all. A writer stores a whole key every RESTART_INTERVAL entries, which
        # bounds a block's keys to RESTART_INTERVAL times its size; more is corruption.
        key_bytes += len(key)
        if key_bytes > RESTART_INTERVAL * len(block):
            raise BundleError(f"{where}: a block's keys add up to more than it can encode")
    return entries


def read_table(path):
    """The whole index file as {key: value}."""
    data = Path(path).read_bytes()
    where = str(path)
    if len(data) < FOOTER_BYTES:
        raise BundleError(f"{where}: {len(data)} bytes is too short for a TensorFlow index file")
    footer = data[-FOOTER_BYTES:]
    if struct.unpack("<Q", footer[-8:])[0] != TABLE_MAGIC:
        raise BundleError(f"{where}: no table magic number at the end (not a checkpoint index?)")
    _, pos = read_varint(footer, 0, where)  # the metaindex handle: bundles keep nothing there
    _, pos = read_varint(footer, pos, where)
    index_offset, pos = read_varint(footer, pos, where)
    index_size, _ = read_varint(footer, pos, where)
    table, free = {}, 0
    index = read_block(data, index_offset, index_size, where)
    for _, handle in block_entries(index, where):
        offset, pos = read_varint(handle, 0, where)
        size, _ = read_varint(handle, pos, where)
        if offset < free:  # one block listed many times would be read many times over
            raise BundleError(f"{where}: the index lists data blocks out of order or overlapping")
        free = offset + size + BLOCK_TRAILER_BYTES
        table |= dict(block_entries(read_block(data, offset, size, where), where))
    return table


def write_block(out, entries):
    """Append a block of sorted (key, value) entries and its trailer; return its handle."""
    block, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % RESTART_INTERVAL:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        else:
            restarts.append(len(block))
        block += encode_varint(shared) + encode_varint(len(key) - shared)
        block += encode_varint(len(value)) + key[shared:] + value
        previous = key
    restarts = restarts or [0]
    block += struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))
    handle = encode_varint(len(out)) + encode_varint(len(block))
    block += b"\x00"  # compression type: none
    out += block + struct.pack("<I", mask(crc32c(bytes(block))))
    return handle


def table_bytes(entries):
    """A complete SSTable holding `entries` (sorted by key) in one data block."""
    out = bytearray()
    data_handle = write_block(out, entries)
    metaindex_handle = write_block(out, [])
    index_handle = write_block(out, [(entries[-1][0], data_handle)])
    footer = (metaindex_handle + index_handle).ljust(FOOTER_BYTES - 8, b"\x00")
    return bytes(out + footer + struct.pack("<Q", TABLE_MAGIC))


# --- the bundle -------------------------------------------------------------------------------


def data_path(prefix, shard, num_shards):
    return Path(f"{prefix}.data-{shard:05d}-of-{num_shards:05d}")


def data_bytes(prefix):
    """The size of the checkpoint's data shards, all together."""
    prefix = Path(prefix)
    shards = prefix.parent.glob(glob.escape(prefix.name) + ".data-*")
    return sum(shard.stat().st_size for shard in shards if shard.is_file())


def read_index(prefix):
    """(num_shards, {name: entry}) from PREFIX.index."""
    index_path = Path(f"{prefix}.index")
    if not index_path.exists():
        raise BundleError(f"{index_path}: no such file")
    table = read_table(index_path)
    if HEADER_KEY not in table:
        raise BundleError(f"{index_path}: no bundle header (key '') in the index")
    where = f"{index_path} header"
    header = parse_proto(table.pop(HEADER_KEY), where)
    if number(header, 2, 0, where) != 0:
        raise BundleError(f"{index_path}: big-endian checkpoints are not supported")
    num_shards = number(header, 1, 1, where)
    try:
        names = {key.decode(): value for key, value in table.items()}
    except UnicodeDecodeError as err:
        raise BundleError(f"{index_path}: a tensor name is not UTF-8 text ({err})") from None
    return num_shards, {name: parse_entry(value, name, index_path) for name, value in names.items()}


def list_tensors(prefix):
    """{name: shape} of every tensor in the checkpoint, like `tf.train.list_variables`."""
    return {name: entry["shape"] for name, entry in read_index(prefix)[1].items()}


def check_disjoint(prefix, entries):
    """Tensors lie side by side in their shards: were two to overlap, one stored byte could be
    read (and copied) once for every entry of a crafted index."""
    spans = sorted((entry["shard_id"], entry["offset"], entry["size"]) for entry in entries)
    for (shard, start, size), (next_shard, next_start, _) in itertools.pairwise(spans):
        if shard == next_shard and next_start < start + size:
            raise BundleError(
                f"{prefix}.index: two tensors overlap at byte {next_start} of shard {shard}: "
                f"the index is corrupt"
            )


def read_bundle(prefix, names=None, verify=True):
    """{name: array} for `names` (default: all), each checked against its size and CRC-32C."""
    num_shards, entries = read_index(prefix)
    names = list(entries) if names is None else names
    unknown = [name for name in names if name not in entries]
    if unknown:
        raise BundleError(f"{prefix}.index has no tensors named {unknown}")
    check_disjoint(prefix, [entries[name] for name in names])
    shards = {}
    tensors = {}
    for name in names:
        entry = entries[name]
        if entry["dtype"] not in DTYPES:
            raise BundleError(f"{prefix}: tensor {name!r} has dtype code {entry['dtype']}")
        dtype = DTYPES[entry["dtype"]]
        shard = entry["shard_id"]
        path = data_path(prefix, shard, num_shards)
        if shard not in shards:
            if not path.exists():
                raise BundleError(f"{path}: missing; the checkpoint's data file is needed")
            shards[shard] = (
                np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else b""
            )
        data = shards[shard]
        start, size = entry["offset"], entry["size"]
        expected = math.prod(entry["shape"]) * dtype.itemsize  # exact: no int64 to overflow
        if size != expected:
            raise BundleError(f"{prefix}: {name!r} has {size} bytes, its shape needs {expected}")
        if start + size > len(data):
            raise BundleError(
                f"{path}: {name!r} lies at bytes {start}..{start + size} but the file has "
                f"{len(data)} bytes (truncated; download it again)"
            )
        raw = np.array(data[start : start + size])  # copy out of the memory map
        if verify and entry["crc32c"] is not None and crc32c(raw) != unmask(entry["crc32c"]):
            raise BundleError(f"{path}: tensor {name!r} fails its CRC-32C check (corrupt file)")
        array = raw.view(dtype).reshape(entry["shape"])
        if entry["dtype"] == BFLOAT16:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = array
    return tensors


def write_bundle(prefix, tensors):
    """Write {name: array} as a one-shard TensorFlow checkpoint PREFIX.index + PREFIX.data-*."""
    names = sorted(tensors)
    arrays = {name: np.ascontiguousarray(tensors[name]) for name in names}
    for name, array in arrays.items():
        if array.dtype.newbyteorder("<") not in DTYPE_CODES:
            raise BundleError(f"cannot write {name!r}: dtype {array.dtype} has no code here")
        arrays[name] = array.astype(array.dtype.newbyteorder("<"), copy=False)
    entries, offset = [], 0
    for name in names:
        entries.append((name.encode(), encode_entry(arrays[name], offset)))
        offset += arrays[name].nbytes
    header = proto_field(1, 1) + proto_field(3, proto_field(1, BUNDLE_VERSION))

    def write_data(tmp):
        with open(tmp, "wb") as f:
            for name in names:
                f.write(arrays[name].tobytes())

    atomic_write(data_path(prefix, 0, 1), write_data)
    index = table_bytes([(HEADER_KEY, header)] + entries)
    atomic_write(Path(f"{prefix}.index"), lambda tmp: Path(tmp).write_bytes(index))
