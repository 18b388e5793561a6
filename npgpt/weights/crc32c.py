"""CRC-32C (Castagnoli), the checksum TensorFlow stores for every tensor and every index block.

A CRC is the remainder of the message, read as a polynomial over GF(2), divided by a fixed
polynomial (here 0x1EDC6F41; bit-reversed 0x82F63B78, since the register shifts right). The
classic table-driven form feeds one byte at a time through a 32-bit register:

    reg = TABLE[(reg ^ byte) & 0xFF] ^ (reg >> 8)     TABLE[b]: b pushed through 8 shift steps
    crc = reg ^ 0xFFFFFFFF after the last byte, starting from reg = 0xFFFFFFFF

A Python loop over bytes runs at ~10 MB/s; GPT-2 checkpoints are 0.5-6 GB. Three facts make
it fast in NumPy:

  1. Four bytes at a time: XOR a little-endian 32-bit word into the register, then look up its
     two 16-bit halves in two 65536-entry tables (each entry: those 16 bits pushed through the
     remaining 16 or 32 shift steps) -- `LOW[reg & 0xFFFF] ^ HIGH[reg >> 16]`.
  2. The update is linear over GF(2). Started from 0, the CRC of A followed by B is
     `advance(crc(A), len(B)) ^ crc(B)`, where `advance(r, n)` pushes n zero bytes through the
     register: a fixed 32x32 bit matrix for each n. Cut the data into rows of equal length,
     run the loop over all rows at once (one NumPy op per word column), then merge
     neighbouring rows pairwise, log2(rows) times.
  3. Zero bytes leave a zero register at zero, so padding at the front is free: that evens out
     the first row and makes the row count a power of two.
The starting value 0xFFFFFFFF contributes `advance(0xFFFFFFFF, len(data))`.

TensorFlow stores *masked* CRCs (rotated and offset, so that the CRC of data that contains CRCs
does not degenerate): `mask(crc) = ((crc >> 15) | (crc << 17)) + 0xA282EAD8`.

>>> hex(crc32c(b"123456789"))  # the standard check value of CRC-32C
'0xe3069283'
>>> data = bytes(range(256)) * 40 + b"tail"
>>> crc32c(data) == crc32c_bytewise(data)
True
>>> unmask(mask(0xE3069283)) == 0xE3069283
True
"""

import functools
import operator

import numpy as np

POLY = 0x82F63B78
MASK_DELTA = 0xA282EAD8
ROW_BYTES = 256  # length of each row the vectorised loop runs over (a multiple of 4)
BLOCK_ROWS = 4096  # rows per block: 1 MiB of data, so the word columns stay in cache


def byte_tables():
    """TABLES[k][b]: byte b followed by k zero bytes, pushed through the register."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ POLY, table >> 1).astype(np.uint32)
    tables = [table]
    for _ in range(3):
        tables.append((tables[-1] >> np.uint32(8)) ^ table[tables[-1] & 0xFF])
    return tables


TABLES = byte_tables()
TABLE = TABLES[0]
_HALF = np.arange(65536, dtype=np.uint32)
LOW = TABLES[3][_HALF & 0xFF] ^ TABLES[2][_HALF >> 8]  # bits 0-15 of the XORed word
HIGH = TABLES[1][_HALF & 0xFF] ^ TABLES[0][_HALF >> 8]  # bits 16-31


def crc32c_bytewise(data, crc=0):
    """The textbook loop, one byte at a time (slow; the reference the fast path is tested on)."""
    reg = crc ^ 0xFFFFFFFF
    table = TABLE.tolist()
    for byte in bytes(data):
        reg = table[(reg ^ byte) & 0xFF] ^ (reg >> 8)
    return reg ^ 0xFFFFFFFF


def apply(matrix, reg):
    """Multiply a 32x32 GF(2) matrix, stored as its 32 columns, by register value(s) `reg`."""
    reg = np.asarray(reg, dtype=np.uint32)
    out = np.zeros_like(reg)
    for bit in range(32):
        out ^= np.where((reg >> np.uint32(bit)) & np.uint32(1), matrix[bit], np.uint32(0))
    return out


@functools.cache
def zeros_power(k):
    """The matrix that pushes 2**k zero bytes through the register (cached: every CRC needs
    the same few, and building one costs 32 matrix-vector products)."""
    if k == 0:
        columns = np.array([1 << bit for bit in range(32)], dtype=np.uint32)
        return TABLE[columns & 0xFF] ^ (columns >> np.uint32(8))
    half = zeros_power(k - 1)
    return apply(half, half)


@functools.cache
def byte_position_tables(k):
    """zeros_power(k)'s effect on each byte position of the register: 4 tables of 256."""
    byte = np.arange(256, dtype=np.uint32)
    return [apply(zeros_power(k), byte << np.uint32(8 * pos)) for pos in range(4)]


def advance_many(regs, k):
    """Many registers each pushed through 2**k zero bytes: split each into bytes and look up
    the matrix's effect on each byte position (4 lookups, not 32 masked XORs)."""
    out = np.zeros_like(regs)
    for pos, table in enumerate(byte_position_tables(k)):
        out ^= np.take(table, (regs >> np.uint32(8 * pos)) & np.uint32(0xFF))
    return out


def advance(reg, n):
    """One register value pushed through n zero bytes (plain ints: cheaper than a matrix)."""
    for k in range(n.bit_length()):
        if n >> k & 1:
            columns = zeros_power(k).tolist()
            reg = functools.reduce(
                operator.xor, (columns[bit] for bit in range(32) if reg >> bit & 1), 0
            )
    return reg


def raw_crc_rows(rows):
    """Register-from-zero CRC of each row of a (K, L) uint8 array, all rows at once."""
    words = np.ascontiguousarray(rows.view("<u4").T)  # word j of every row, contiguous
    reg = np.zeros(rows.shape[0], dtype=np.uint32)
    for word in words:
        reg ^= word
        halves = reg.view(np.uint16)  # little-endian: [low, high, low, high, ...]
        reg = np.take(LOW, halves[0::2]) ^ np.take(HIGH, halves[1::2])
    return reg


def raw_crc(data):
    """Register-from-zero CRC of a flat uint8 array."""
    head_len = len(data) % ROW_BYTES
    head = np.zeros((1, ROW_BYTES), dtype=np.uint8)
    head[0, ROW_BYTES - head_len :] = data[:head_len]
    body = data[head_len:].reshape(-1, ROW_BYTES)
    regs = [raw_crc_rows(head)]
    for start in range(0, len(body), BLOCK_ROWS):
        regs.append(raw_crc_rows(body[start : start + BLOCK_ROWS]))
    regs = np.concatenate(regs)
    count = 1 << (len(regs) - 1).bit_length()
    regs = np.concatenate([np.zeros(count - len(regs), dtype=np.uint32), regs])
    k = ROW_BYTES.bit_length() - 1  # rows are 2**k bytes long, and double at each merge
    while len(regs) > 1:
        regs = advance_many(regs[0::2], k) ^ regs[1::2]
        k += 1
    return regs[0]


def as_bytes(data):
    if isinstance(data, bytes | bytearray | memoryview):
        return np.frombuffer(data, dtype=np.uint8)
    return np.ascontiguousarray(data).reshape(-1).view(np.uint8)


def crc32c(data):
    """CRC-32C of bytes, or of a NumPy array's raw bytes in C order."""
    data = as_bytes(data)
    return advance(0xFFFFFFFF, len(data)) ^ int(raw_crc(data)) ^ 0xFFFFFFFF


def mask(crc):
    """TensorFlow's masked CRC, the form checkpoints store."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + MASK_DELTA) & 0xFFFFFFFF


def unmask(masked):
    rotated = (masked - MASK_DELTA) & 0xFFFFFFFF
    return ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF
