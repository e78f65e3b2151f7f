"""Frame-set buffers: the ingest copies each camera payload once, into a slot from here.

A slot is one ``(P, H, W)`` array in the cameras' dtype (uint16 or float32), allocated by
the active engine (:meth:`engines.inference.base.Engine.host_buffer`: pinned host memory
where the engine is on CUDA, so its copy to the device is DMA). A frame set keeps its
slot until it is published or dropped, then gives it back; free slots are reused, at most
``keep`` per dtype, so memory stays flat at the working set's size.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

Allocate = Callable[[tuple[int, ...], np.dtype], np.ndarray]


def _numpy(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return np.empty(shape, dtype)


class SlotPool:
    def __init__(
        self, *, planes: int, height: int, width: int, keep: int = 128, allocate: Allocate = _numpy
    ) -> None:
        self.shape = (planes, height, width)
        self.keep = keep
        self._allocate = allocate
        self._free: dict[np.dtype, list[np.ndarray]] = {}
        self._free_ids: set[int] = set()  # id() of every free slot: a second give is a no-op
        self._lock = threading.Lock()
        self.allocated = 0

    def set_allocator(self, allocate: Allocate) -> None:
        """Allocate new slots with ``allocate`` from now on (free ones are let go)."""
        with self._lock:
            self._allocate = allocate
            self._free.clear()
            self._free_ids.clear()

    def take(self, dtype: np.dtype | str) -> np.ndarray:
        dtype = np.dtype(dtype)
        with self._lock:
            free = self._free.get(dtype)
            if free:
                slot = free.pop()
                self._free_ids.discard(id(slot))
                return slot
            self.allocated += 1
            allocate = self._allocate
        return allocate(self.shape, dtype)

    def give(self, slot: np.ndarray) -> None:
        if slot.shape != self.shape:
            return
        with self._lock:
            free = self._free.setdefault(slot.dtype, [])
            if len(free) < self.keep and id(slot) not in self._free_ids:
                free.append(slot)  # a free slot is alive, so its id() names it alone
                self._free_ids.add(id(slot))

    @property
    def free(self) -> int:
        return sum(len(v) for v in self._free.values())
