"""Shared-memory blocks that a DataLoader worker reuses for the batches it sends to the main process.

A worker's batch travels to the main process in shared memory. Allocating a fresh block per batch (what
``default_collate`` does) means a page fault on every 4 KiB the worker writes; on virtual machines that
hand freed memory back to the host that costs ~5 µs per page and caps a worker at a few thousand 224²
images/s. A worker's :class:`BlockPool` instead keeps up to ``capacity`` blocks and writes a batch into
one the main process has released.

Release is exact, with no protocol beyond object lifetime: each block ends in a flag word. The worker
sets it before filling the block; the main process rebuilds the batch's tensors over a ``_BlockLease``
(via :class:`PooledBatch`'s pickling) whose finaliser clears the flag when the last tensor or view of
that batch is garbage-collected. A worker that finds no free block allocates an unpooled one, as
torch would, so a consumer that keeps batches (a list of them, pinned copies in flight) never waits.
The flag is a plain word, not an atomic: only the worker sets it and only the main process clears it,
after its last read of the batch and a garbage collection's worth of instructions. That is safe in
practice on x86 (stores are not reordered before earlier loads); a weakly ordered CPU (ARM) is not
formally excluded from letting the clear overtake a read, though no window of that size is known.
That, and the private storage API, are why the pool is opt-in (``data.batch_pool``, off by default): it is
worth it only where fresh shared pages are expensive, which a GPU node's own measurement has to show.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
import torch

FLAG_BYTES = 8
_FREE = 0
_ALIGN_BYTES = 64


def _flag(block: torch.UntypedStorage) -> torch.Tensor:
    """The int64 flag word at the end of `block`, as a tensor view."""
    return torch.empty(0, dtype=torch.int64).set_(block, block.nbytes() // FLAG_BYTES - 1, (1,))


class BlockPool:
    """One process's reusable shared-memory blocks (at most ``capacity``), for batches of varying size."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._blocks: dict[int, torch.UntypedStorage] = {}
        self._uses = 0
        self.reused = 0
        self.allocated = 0

    def allocate(self, nbytes: int) -> torch.UntypedStorage:
        """A shared block with at least `nbytes` usable bytes (from 0), marked busy until the main process
        releases it; an unpooled block when all ``capacity`` blocks are busy or too small."""
        for block in self._blocks.values():
            if block.nbytes() - FLAG_BYTES >= nbytes and _flag(block).item() == _FREE:
                self.reused += 1
                return self._mark_busy(block)
        self.allocated += 1
        if len(self._blocks) >= self.capacity:
            return torch.UntypedStorage._new_shared(max(nbytes, 1))
        block = torch.UntypedStorage._new_shared(-(-nbytes // _ALIGN_BYTES) * _ALIGN_BYTES + FLAG_BYTES)
        self._blocks[block.data_ptr()] = block
        return self._mark_busy(block)

    def _mark_busy(self, block: torch.UntypedStorage) -> torch.UntypedStorage:
        """Write this use's token (never ``_FREE``) into the flag: only the lease of this use may clear it."""
        self._uses += 1
        _flag(block).fill_(self._uses)
        return block

    def owns(self, storage: torch.UntypedStorage) -> bool:
        """True when `storage` is one of this pool's blocks."""
        return storage.data_ptr() in self._blocks


_pool: BlockPool | None = None
_pool_pid: int | None = None


def worker_pool(capacity: int) -> BlockPool:
    """This process's pool (created on first use, forgotten in a forked child)."""
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():
        _pool, _pool_pid = BlockPool(capacity), os.getpid()
    return _pool


class _BlockLease:
    """Holds a pooled block in the main process; its finaliser hands the block back to the worker.

    Only in the process that made it, and only while the block still carries this use's token: a forked
    child that collects an inherited lease, or a lease outliving its use, never frees a block in use.
    """

    def __init__(self, block: torch.UntypedStorage) -> None:
        self._flag = _flag(block)
        self._token = self._flag.item()
        self._pid = os.getpid()
        self.__array_interface__ = {
            "shape": (block.nbytes() - FLAG_BYTES,),
            "typestr": "|u1",
            "data": (block.data_ptr(), False),
            "version": 3,
        }

    def __del__(self) -> None:
        if os.getpid() == self._pid and self._flag.item() == self._token:
            self._flag.fill_(_FREE)


_mapped_blocks: dict[tuple[int, int], torch.UntypedStorage] = {}
_mapped_lock = threading.Lock()


def _keep_mapped(block: torch.UntypedStorage, worker_pid: int, worker_ptr: int) -> None:
    """Keep the main process's mapping of a pooled block while its worker lives.

    Mapping a block afresh for every batch would fault in every page again when the batch is read; torch
    returns the still-alive mapping when the block arrives again. Mappings of exited workers are dropped when
    a block of a new worker arrives, so at most one pool per worker of the last loader outlives its workers.
    """
    with _mapped_lock:
        cached = _mapped_blocks.get((worker_pid, worker_ptr))
        if cached is not None and cached.data_ptr() == block.data_ptr():
            return
        for key in [key for key in _mapped_blocks if not _process_alive(key[0])]:
            del _mapped_blocks[key]
        _mapped_blocks[worker_pid, worker_ptr] = block


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _rebuild_leased(
    block: torch.UntypedStorage,
    layouts: dict[str, tuple],
    values: dict[str, Any],
    order: list,
    worker: tuple[int, int],
) -> dict[str, Any]:
    """Main-process side of :class:`PooledBatch`: a plain dict whose tensors keep one lease on `block`."""
    _keep_mapped(block, *worker)
    leased = torch.from_numpy(np.asarray(_BlockLease(block))).untyped_storage()
    tensors = {
        key: torch.empty(0, dtype=dtype).set_(leased, offset, shape, stride)
        for key, (dtype, offset, shape, stride) in layouts.items()
    }
    return {key: tensors[key] if key in tensors else values[key] for key in order}


def forget_mappings() -> None:
    """Drop the main process's kept block mappings (batches still held keep theirs); call when loaders end."""
    with _mapped_lock:
        _mapped_blocks.clear()


def _copy_pooled(value: Any, pool: BlockPool) -> Any:
    """`value` with every tensor on a pooled block (inside lists, tuples and dicts too) replaced by a copy."""
    if isinstance(value, torch.Tensor):
        return value.clone() if pool.owns(value.untyped_storage()) else value
    if isinstance(value, (list, tuple)):
        return type(value)(_copy_pooled(item, pool) for item in value)
    if isinstance(value, dict):
        return {key: _copy_pooled(item, pool) for key, item in value.items()}
    return value


class PooledBatch(dict):
    """A worker's batch dict whose contiguous tensors live in one pooled block.

    Pickled to the main process, it arrives as a plain ``dict`` whose tensors are views of that block;
    the block is released when the last of them is garbage-collected.
    """

    def __reduce__(self) -> tuple:
        pool = _pool if _pool_pid == os.getpid() else None
        if pool is None:
            return (dict, (dict(self),))
        block, layouts, values = None, {}, {}
        for key, value in self.items():
            storage = value.untyped_storage() if isinstance(value, torch.Tensor) else None
            if storage is not None and pool.owns(storage) and (block is None or storage.data_ptr() == block.data_ptr()):
                block = storage
                layouts[key] = (value.dtype, value.storage_offset(), tuple(value.shape), value.stride())
            else:
                values[key] = _copy_pooled(value, pool)
        if block is None:
            return (dict, (values,))
        return (_rebuild_leased, (block, layouts, values, list(self), (os.getpid(), block.data_ptr())))
