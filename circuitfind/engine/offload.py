"""Where the big buffers of a run live, and how their pieces reach the device that computes with them.

    with Place("disk", dtype=None, directory=run_dir) as place:     # "device" | "cpu" | "disk"
        abl = place.empty((src, batch, pos, d_model), like)           # the ablated outputs, off the device
        x = place.fetch(abl[senders], device, model.dtype)            # a layer's columns, on the device

A `Place` holds a run's ablated-output store (the ablated outputs `[src, batch, pos, d_model]`, over which
attribution writes the sender differences D) and its per-example scores:

    "device"  on the compute device (the default: nothing moves);
    "cpu"     in CPU memory, page-locked ("pinned") when the compute device is a CUDA device, so that the
              copies to it are asynchronous DMA;
    "disk"    in memory-mapped files in a temporary directory that the place removes when it closes (each
              file unlinked as soon as it is mapped: the mapping holds it until the tensor is freed, and an
              interrupted run leaves no file behind).

Off the device, every read goes through `fetch`, which copies the piece into a fresh tensor on the compute
device (on the CPU too, so that the copies a GPU needs run, and are counted, in every test): the walks read a
layer's senders at a time (`walk.Walk._abl`), attribution a chunk of senders of D at a time
(`attribution._Scorer`). `moved` counts the bytes read from the place and `written` those written to it.

dtype: the store's element type (`store_dtype`), e.g. torch.bfloat16 for a store of half the bytes; a fetch
widens it back to the model's dtype, and every difference and score is computed in float32 (`attribution`).

`move` (from `models.placement`) is the other transfer: a residual-stream tensor taken to the next layer's
device, where the model's layers are spread over several (`CircuitModel.place`, `device_map`).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import torch
from torch import Tensor

from circuitfind.errors import ConfigError
from circuitfind.models.placement import move

__all__ = ["Place", "STORES", "STORE_DTYPES", "STREAM_CHUNK_BYTES", "fetch", "move", "store_dtype_of"]

STORES = ("device", "cpu", "disk")
STORE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# attribution reads D this many bytes at a time from a store off the device (and in the same chunks on it)
STREAM_CHUNK_BYTES = 64 << 20


def store_dtype_of(value) -> torch.dtype | None:
    """None (the model's dtype), a name in STORE_DTYPES or one of its torch dtypes; a ConfigError otherwise."""
    if value is None:
        return None
    if isinstance(value, torch.dtype) and value in STORE_DTYPES.values():
        return value
    if isinstance(value, str) and value in STORE_DTYPES:
        return STORE_DTYPES[value]
    raise ConfigError(f"store_dtype must be None (the model's dtype) or one of {', '.join(map(repr, STORE_DTYPES))}; "
                      f"got {value!r}")


class Place:
    """Where a run's store and per-example scores live: "device", "cpu" or "disk" (module docstring)."""

    def __init__(self, where: str = "device", dtype: torch.dtype | None = None, directory: str | os.PathLike | None = None):
        if where not in STORES:
            raise ConfigError(f"store_on must be one of {', '.join(map(repr, STORES))}; got {where!r}")
        self.where, self.dtype, self.directory = where, dtype, directory
        self.moved = self.written = 0  # bytes read from the place into the device, and written to it
        self._folder: str | None = None
        self._storages: set[int] = set()  # the memory of the tensors the place made (`holds`)

    @property
    def remote(self) -> bool:
        """Is the store off the compute device (its reads then go through `fetch`)?"""
        return self.where != "device"

    def __enter__(self) -> "Place":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove the disk store's directory (its files were unlinked when mapped; what is mapped stays valid)."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def dtype_for(self, like_dtype: torch.dtype) -> torch.dtype:
        return self.dtype or like_dtype

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, device) -> Tensor:
        """An uninitialised tensor of this shape in the place, in the store's dtype (or `dtype`): on `device`,
        in (pinned, for a CUDA device) CPU memory, or in a memory-mapped file."""
        dtype = self.dtype_for(dtype)
        device = torch.device(device)
        if self.where == "device":
            out = torch.empty(shape, dtype=dtype, device=device)
        elif self.where == "cpu":
            out = torch.empty(shape, dtype=dtype, pin_memory=device.type == "cuda")
        else:
            out = self._mapped(shape, dtype)
        self._storages.add(out.untyped_storage().data_ptr())
        return out

    def holds(self, t: Tensor) -> bool:
        """Is t (a view of) a tensor this place made? Only those are fetched through it (and counted)."""
        return t.untyped_storage().data_ptr() in self._storages

    def zeros(self, shape: tuple[int, ...], dtype: torch.dtype, device) -> Tensor:
        """Zeros in the place (per-example scores: float32 whatever the store's dtype)."""
        if self.where == "device":
            return torch.zeros(shape, dtype=dtype, device=device)
        if self.where == "cpu":
            return torch.zeros(shape, dtype=dtype, pin_memory=torch.device(device).type == "cuda")
        return self._mapped(shape, dtype)  # (a new file reads as zeros)

    def _mapped(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        if self._folder is None:
            self._folder = tempfile.mkdtemp(prefix=".circuitfind-store-", dir=self.directory)
        elements = 1
        for n in shape:
            elements *= n
        size = elements * torch.empty(0, dtype=dtype).element_size()
        fd, name = tempfile.mkstemp(dir=self._folder, suffix=".bin")
        try:
            os.ftruncate(fd, max(size, 1))
            return torch.from_file(name, shared=True, size=elements, dtype=dtype).view(shape)
        finally:
            os.close(fd)
            os.unlink(name)

    def put(self, t: Tensor, copy: bool = False) -> Tensor:
        """t copied into the place (in the store's dtype); t itself on the device when nothing changes (unless
        `copy`)."""
        if not copy and not self.remote and (self.dtype is None or t.dtype == self.dtype):
            return t
        out = self.empty(tuple(t.shape), t.dtype, t.device)
        out.copy_(t)
        self.written += out.numel() * out.element_size()
        return out

    def fetch(self, t: Tensor, device, dtype: torch.dtype) -> Tensor:
        """A piece of the store on the compute device in the model's dtype: t itself where it is there already
        (a store on the device, of the model's dtype), else a fresh copy (counted in `moved`)."""
        device = torch.device(device)
        if not self.remote and t.device == device and t.dtype == dtype:
            return t
        out = torch.empty(t.shape, dtype=dtype, device=device)
        out.copy_(t, non_blocking=t.is_pinned())
        self.moved += t.numel() * t.element_size()
        return out


def fetch(place: Place | None, t: Tensor, device, dtype: torch.dtype) -> Tensor:
    """`place.fetch` for a tensor the place holds; otherwise t on `device` in `dtype` (a copy only where it is not
    there)."""
    if place is not None and place.holds(t):
        return place.fetch(t, device, dtype)
    return t if t.device == torch.device(device) and t.dtype == dtype else t.to(device, dtype)
