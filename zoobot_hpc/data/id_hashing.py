"""64-bit hashes of id columns, whole columns at a time: the split hash (sha256, as every build has used) and a
fast vectorised hash for duplicate checks (8 bytes per id instead of the id itself).

Both take Arrow string/binary arrays (or anything `pyarrow.array` accepts) and return one uint64 per row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from operator import methodcaller
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

HASH_SPLITS = ("train", "val", "test")
_DIGEST = methodcaller("digest")
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_MIX = np.uint64(0xBF58476D1CE4E5B9)
_CHUNK_ROWS = 1 << 18


def as_binary(ids: Iterable | pa.Array | pa.ChunkedArray) -> pa.Array:
    """The ids as one Arrow binary array (their UTF-8 bytes)."""
    import pyarrow as pa

    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if isinstance(ids, np.ndarray) and ids.dtype.kind in "OSU":
        ids = pa.array(ids if ids.dtype.kind == "O" else ids.astype(object))
    elif not isinstance(ids, pa.Array):
        ids = pa.array([str(i) for i in ids], type=pa.string())
    if pa.types.is_large_string(ids.type) or pa.types.is_large_binary(ids.type):
        ids = ids.cast(pa.large_binary())
    elif not pa.types.is_binary(ids.type):
        ids = ids.cast(pa.string()).cast(pa.binary())
    return ids


def sha256_hash64(ids: Iterable | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The first 8 bytes (big-endian) of each id's sha256: the split hash of `hash_split` (unchanged since the
    first release, so rebuilding a catalog keeps every galaxy in its split). One C-level hash call per id."""
    values = as_binary(ids).to_numpy(zero_copy_only=False)
    if not len(values):
        return np.zeros(0, dtype=np.uint64)
    digests = b"".join(map(_DIGEST, map(hashlib.sha256, values)))
    return np.frombuffer(digests, dtype=np.uint8).reshape(-1, 32)[:, :8].copy().view(">u8").ravel().astype(np.uint64)


def splits_from_hash(hashes: np.ndarray, fractions=(0.8, 0.1, 0.1)) -> np.ndarray:
    """Index into HASH_SPLITS (0 train, 1 val, 2 test) of each split hash, for train/val/test `fractions`."""
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.shape != (3,) or (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"split_fractions must be three non-negative numbers summing to 1, got {fractions.tolist()}")
    position = hashes.astype(np.float64) / 2**64
    return np.searchsorted(np.cumsum(fractions)[:2], position, side="right").astype(np.uint8)


def fast_hash64(ids: Iterable | np.ndarray | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of each id's bytes, vectorised over the column (no Python call per id): ids are laid out
    8 bytes to a word in a zero-padded matrix, and each row's words (up to its length) and its length are mixed
    multiplicatively. A numpy bytes array ('S', as h5py reads fixed or variable-length ids with `.astype`) is
    hashed without Arrow. For duplicate checks; not stable across versions and not the split hash."""
    if isinstance(ids, np.ndarray) and ids.dtype.kind == "S":
        out = np.empty(len(ids), dtype=np.uint64)
        for start in range(0, len(ids), _CHUNK_ROWS):
            chunk = np.ascontiguousarray(ids[start : start + _CHUNK_ROWS])
            width = max(8, -(-chunk.dtype.itemsize // 8) * 8)
            matrix = np.zeros((len(chunk), width), dtype=np.uint8)
            matrix[:, : chunk.dtype.itemsize] = chunk.view(np.uint8).reshape(len(chunk), chunk.dtype.itemsize)
            out[start : start + _CHUNK_ROWS] = _hash_matrix(matrix, np.char.str_len(chunk).astype(np.int64))
        return out
    if isinstance(ids, np.ndarray) and ids.dtype.kind == "O" and len(ids) and isinstance(ids[0], bytes):
        return fast_hash64(ids.astype(bytes))
    array = as_binary(ids)
    out = np.empty(len(array), dtype=np.uint64)
    for start in range(0, len(array), _CHUNK_ROWS):
        out[start : start + _CHUNK_ROWS] = _fast_hash_chunk(array.slice(start, _CHUNK_ROWS))
    return out


def _fast_hash_chunk(array: pa.Array) -> np.ndarray:
    import pyarrow as pa

    n = len(array)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    array = pa.concat_arrays([array])  # a fresh array whose offsets start at its own data
    offset_type = np.int64 if pa.types.is_large_binary(array.type) else np.int32
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], dtype=offset_type)[: n + 1].astype(np.int64)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    if array.null_count:
        lengths = np.where(array.is_null().to_numpy(zero_copy_only=False), 0, lengths)
    width = max(8, int(-(-int(lengths.max(initial=0)) // 8) * 8))
    matrix = np.zeros((n, width), dtype=np.uint8)
    total = int(lengths.sum())
    if total:
        rows = np.repeat(np.arange(n), lengths)
        columns = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        matrix[rows, columns] = data[np.repeat(offsets[:-1], lengths) + columns]
    return _hash_matrix(matrix, lengths)


def _hash_matrix(matrix: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Mix each row's first ceil(length / 8) words: the hash does not depend on how wide the matrix is."""
    words = matrix.view(np.uint64)
    with np.errstate(over="ignore"):
        state = lengths.astype(np.uint64) * _MIX + np.uint64(0x243F6A8885A308D3)
        for column in range(words.shape[1]):
            mixed = (state ^ words[:, column]) * _MULTIPLIER
            mixed ^= mixed >> np.uint64(29)
            state = np.where(lengths > 8 * column, mixed, state)
        state = (state ^ (state >> np.uint64(32))) * _MIX
        state ^= state >> np.uint64(31)
    return state


def repeated_hashes(hashes: np.ndarray) -> np.ndarray:
    """The hash values that occur more than once (sorted); 8 bytes per row of working memory."""
    ordered = np.sort(hashes)
    return np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
