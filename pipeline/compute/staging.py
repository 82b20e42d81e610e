"""Host rows to the device (``Backend.upload`` on a GPU): two pinned host buffers on their own copy stream, the
next block read on a thread meanwhile, so reading, copying and computing overlap."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def read_ahead(blocks: Iterable[T], depth: int = 1) -> Iterator[T]:
    """The items of ``blocks`` in order, the next ``depth`` produced on a thread of their own meanwhile (a file
    read or a faiss ``reconstruct_n`` overlaps the caller's work on the current one). An error in the producer
    is raised here, at its place in the order; closing this generator stops the producer after its current item."""
    import queue
    import threading

    items: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in blocks:
                if stop.is_set():
                    return
                items.put((item, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            items.put((None, exc))
            return
        items.put((done, None))

    thread = threading.Thread(target=produce, name="rvc-index-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = items.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                items.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()


def stage_pinned(cupy: ModuleType, blocks: Iterable[np.ndarray], out: Any | None) -> Iterator[Any]:
    """``Backend.upload`` on a GPU: two pinned buffers, grown to the largest block, one copy stream."""
    import cupyx

    copy_stream = cupy.cuda.Stream(non_blocking=True)
    pinned: list[np.ndarray | None] = [None, None]
    copied: list[Any] = [None, None]  # the event of each buffer's last copy
    used: list[Any] = [None, None]  # the event of the compute that read each device buffer last
    targets: list[Any] = [None, None]  # device buffers when there is no ``out``
    offset = 0
    for i, block in enumerate(read_ahead(blocks)):
        slot = i % 2
        rows, dim = block.shape
        if copied[slot] is not None:
            copied[slot].synchronize()  # this buffer's previous copy has left the host
        if pinned[slot] is None or pinned[slot].size < block.size:
            pinned[slot] = cupyx.empty_pinned(block.size, dtype=np.float32)
        host = pinned[slot][:block.size].reshape(rows, dim)
        np.copyto(host, block, casting="same_kind")
        if out is not None:
            target = out[offset:offset + rows]
            offset += rows
        else:
            if targets[slot] is None or targets[slot].size < block.size:
                targets[slot] = cupy.empty(block.size, dtype=cupy.float32)
            target = targets[slot][:block.size].reshape(rows, dim)
        if used[slot] is not None:
            copy_stream.wait_event(used[slot])  # the compute on this buffer's last block is done
        target.set(host, stream=copy_stream)
        copied[slot] = copy_stream.record()
        cupy.cuda.get_current_stream().wait_event(copied[slot])  # compute waits on the device, not the host
        yield target
        used[slot] = cupy.cuda.get_current_stream().record()
    copy_stream.synchronize()
