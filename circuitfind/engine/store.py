"""Sender differences D = out − abl, kept sender-major so mixing them is one matrix product.

A store holds segments, each a preallocated buffer `[K, capacity, W]` (W = b'·pos·d_model) filled
block by block. K is 1 while every mask of the batch agrees so far (the computation is shared) and k
afterwards; a sender computed once after that is written into every mask's copy, and remembered as
shared. Mixing receivers' mask rows `M [K_M, r, S]` with the stored D gives `[r, K, W]`:
for a K = 1 segment one GEMM `(r·k, S) @ (S, W)`; for a K = k segment one batched GEMM.

With gradients on (learned masks, attribution), buffers still hold the data — never modified once
written, only appended to — and `_SegmentMix` routes gradients to the blocks that filled them, so no
D is copied or saved twice.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class Workspace:
    """Named buffers that passes reuse, layer after layer and call after call.

    On the CPU a fresh page costs more than the arithmetic that fills it (here a fresh 236 MiB buffer
    took 47–417 ms to write, a warm one ~25 ms), so a sweep of masked forwards (a faithfulness
    curve, ACDC) hands one workspace to each of them. Whatever a buffer holds is dead once the pass
    that wrote it returns: two passes running at once must not share a workspace."""

    def __init__(self):
        self.buffers: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: Tensor, offset: int = 0) -> Tensor:
        """buffers[name] from element `offset` on as a view of this shape, (re)allocated when too small
        or of another kind."""
        n = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < offset + n or buf.dtype != like.dtype or buf.device != like.device:
            buf = self.buffers[name] = torch.empty(offset + n, dtype=like.dtype, device=like.device)
        return buf[offset: offset + n].view(shape)


class _Segment:
    def __init__(self, K: int, capacity: int, W: int, like: Tensor, buf: Tensor | None = None, place=None):
        self.K, self.n = K, 0
        if buf is None:
            buf = torch.empty(K, capacity, W, dtype=like.dtype, device=like.device) if place is None \
                else place.empty((K, capacity, W), like.dtype, like.device)
        self.buf = buf
        self.blocks: list[Tensor] = []  # the differentiable blocks, when gradients are tracked
        self.frozen = False  # a branch's copy of another store's segment: never appended to

    @property
    def data(self) -> Tensor:  # [K, n, W]
        return self.buf[:, : self.n]


def take(t: Tensor, idx: Tensor, dim: int) -> Tensor:
    """t indexed along dim by idx: a view when idx is a contiguous range, a gather otherwise."""
    ids = idx.tolist()  # one call: element-wise reads of a small tensor cost more than the gather
    if ids and ids == list(range(ids[0], ids[0] + len(ids))):
        return t.narrow(dim, ids[0], len(ids))
    return t.index_select(dim, idx.to(t.device))


def _mix(M: Tensor, D: Tensor, out: Tensor | None = None) -> Tensor:
    """M [K_M, r, n] with D [K_D, n, W] → [r, max(K_M, K_D), W], into out if given (K_D = 1 only)."""
    K_M, r, n = M.shape
    if D.shape[0] == 1:
        flat = None if out is None else out.view(r * K_M, -1)
        rows = M.transpose(0, 1).reshape(r * K_M, n)
        if D.device.type == "cpu" and not M.requires_grad:
            return _mix_rows(rows, D[0], flat).view(r, K_M, -1)
        return torch.mm(rows, D[0], out=flat).view(r, K_M, -1)
    return torch.bmm(M.expand(D.shape[0], r, n), D).transpose(0, 1)


def _mix_plan(M: Tensor, W: int) -> tuple[str, Tensor]:
    """How to compute M [R, n] @ D [n, W] on the CPU, and the rows of M that read anything.

    "gemm": one product; "rows": one product over the rows that read anything, the others zeroed
    (most receivers of a small circuit read no sender); "sparse": a row addition per nonzero entry,
    when few are left. Costs in row additions of W elements (memory-bound), measured on 2 cores at
    W ≈ 4·10⁵: a product over R' rows ≈ n·(0.5 + 0.06·R'), a row copy ≈ 0.6, and ~5 µs a call of
    Python and dispatch, which decides at small W."""
    R, n = M.shape
    nonzero = M != 0
    used = nonzero.any(1).nonzero()[:, 0]
    call = 5e-6 / (max(W, 1) * 2e-10)
    u = len(used)
    costs = {"gemm": n * (0.5 + 0.06 * R) + call,
             "rows": n * (0.5 + 0.06 * u) + call + (R - u + (u < R) * u) * (0.6 + call),
             "sparse": int(nonzero.sum()) * (1 + call) + (R - u) * (0.6 + call)}
    if u == R:
        del costs["rows"]
    return min(costs, key=costs.get), used


def _mix_rows(M: Tensor, D: Tensor, out: Tensor | None) -> Tensor:
    """M [R, n] @ D [n, W] on the CPU, by the cheapest plan for this mask (`_mix_plan`)."""
    R, W = M.shape[0], D.shape[1]
    plan, used = _mix_plan(M, W)
    if plan == "gemm":
        return torch.mm(M, D, out=out)
    out = torch.empty(R, W, dtype=D.dtype, device=D.device) if out is None else out
    used_list = used.tolist()
    if plan == "rows":
        torch.mm(M[used], D, out=out[:len(used_list)])
        for j, i in reversed(list(enumerate(used_list))):  # to their rows; row i ≥ j, so none is overwritten unread
            if i != j:
                out[i] = out[j]
    else:
        values, last = M.tolist(), -1
        for i, c in M.nonzero().tolist():  # in row order: a row's first entry writes it
            if i != last:
                torch.mul(D[c], values[i][c], out=out[i])
                last = i
            else:
                out[i].add_(D[c], alpha=values[i][c])
    for i in sorted(set(range(R)) - set(used_list)):
        out[i].zero_()
    return out


class _SegmentMix(torch.autograd.Function):
    """`_mix(M, segment data)` with gradients for M and for the blocks that filled the segment."""

    @staticmethod
    def forward(ctx, M, D, *blocks):
        ctx.save_for_backward(M)
        ctx.D, ctx.sizes = D, [b.shape[1] for b in blocks]
        return _mix(M, D)

    @staticmethod
    def backward(ctx, g):  # g [r, K, W]
        (M,) = ctx.saved_tensors
        D = ctx.D
        gk = g.transpose(0, 1)  # [K, r, W]
        grad_M = grad_blocks = None
        if ctx.needs_input_grad[0]:
            grad_M = torch.bmm(gk, D.expand(gk.shape[0], -1, -1).transpose(1, 2))  # [K, r, n]
            if M.shape[0] == 1:
                grad_M = grad_M.sum(0, keepdim=True)
        if any(ctx.needs_input_grad[2:]):
            gD = torch.bmm(M.expand(gk.shape[0], -1, -1).transpose(1, 2), gk)  # [K, n, W]
            if D.shape[0] == 1:
                gD = gD.sum(0, keepdim=True)
            grad_blocks = gD.split(ctx.sizes, dim=1)
        return (grad_M, None, *(grad_blocks or [None] * len(ctx.sizes)))


class DiffStore:
    def __init__(self, k: int, shape: tuple[int, int, int], capacity: int, grad: bool, buffer: Tensor | None = None,
                 workspace: Workspace | None = None, place=None):
        """k masks; shape (b', pos, d_model) of one sender's output; room for `capacity` senders.

        buffer: memory [1, capacity, b'·pos·d_model] for the first segment, which the caller gives
        up (attribution writes D over the ablated outputs it no longer needs). workspace: where new
        segments live, for a store that dies with its pass. place: an `offload.Place` new segments
        are allocated in (off the device, or in another dtype: a store only read back whole, by `dense`)."""
        self.k, self.shape, self.capacity, self.grad, self.buffer = k, shape, capacity, grad, buffer
        self.workspace, self.place = workspace, place
        self.W = shape[0] * shape[1] * shape[2]
        self.shape_full = (1, *shape)
        self.segments: list[_Segment] = []
        self._cols: list[int] = []
        self._shared: set[int] = set()  # senders in a per-mask segment whose D every mask shares
        self._cols_t: Tensor | None = None

    @property
    def cols(self) -> Tensor:
        """Sender ids of the stored columns, in store order (index mask columns with it)."""
        if self._cols_t is None:
            self._cols_t = torch.tensor(self._cols, dtype=torch.long)
        return self._cols_t

    def _segment(self, K: int, like: Tensor) -> _Segment:
        """The segment new blocks of K copies go to. Shared blocks (K = 1) that come after the masks
        diverged are written into the per-mask segment, once per mask (their ids in `_shared`): a
        K = 1 segment of their own would cost every later mix of a per-mask receiver one more pass."""
        seg = self.segments[-1] if self.segments else None
        if seg is not None and K == 1 and seg.K > 1 and not seg.frozen and not self.grad:
            return seg
        if seg is None or seg.K != K or seg.frozen:
            buf, self.buffer = (self.buffer, None) if K == 1 and not self.segments else (None, self.buffer)
            capacity = self.capacity - len(self._cols)
            if buf is None and self.workspace is not None:
                buf = self.workspace.get(f"segment {len(self.segments)}", (K, capacity, self.W), like)
            seg = _Segment(K, capacity, self.W, like, buf, None if buf is not None else self.place)
            self.segments.append(seg)
        return seg

    def reserve(self, senders: Tensor, like: Tensor) -> Tensor | None:
        """Buffer space [s, W] for these senders' D, to be written in place by the caller (K = 1,
        no gradients), or None where the caller must use `append`."""
        if self.grad:
            return None
        seg = self._segment(1, like)
        if seg.K > 1 or self.place is not None or seg.buf.device != like.device or seg.buf.dtype != like.dtype:
            return None  # written once per mask, or copied off the device (or to the store's dtype), by append_diff
        s = len(senders)
        view = seg.buf[0, seg.n: seg.n + s]
        seg.n += s
        self._cols += senders.tolist()
        self._cols_t = None
        return view

    def append(self, senders: Tensor, out: Tensor, abl: Tensor) -> Tensor:
        """Store D = out − abl for these senders (out [s, K, b', pos, d], abl broadcastable); return D."""
        K = out.shape[1]
        if K == 1 and not self.grad and out.shape[1:] == self.shape_full and not out.requires_grad:
            target = self.reserve(senders, out)
            if target is not None:
                diff = target.view(out.shape)  # D straight into the buffer
                torch.sub(out, abl, out=diff)
                return diff
        return self.append_diff(senders, out - abl)

    def append_diff(self, senders: Tensor, diff: Tensor) -> Tensor:
        """Store an already computed D [s, K, b', pos, d] for these senders; return it."""
        s, K = diff.shape[0], diff.shape[1]
        seg = self._segment(K, diff)
        block = diff.reshape(s, K, self.W).transpose(0, 1)  # [K, s, W]
        # (gradients of a clean run flow through diff itself; off the device, or in the store's dtype, a copy)
        seg.buf[:, seg.n: seg.n + s].copy_(block.detach(), non_blocking=seg.buf.is_pinned())
        if self.place is not None:  # (a store in a place: off the device, or in the store's dtype)
            self.place.written += block.numel() * seg.buf.element_size()
        if seg.K > K:  # the same D in every mask's copy
            self._shared.update(senders.tolist())
        if self.grad:
            seg.blocks.append(block)
        seg.n += s
        self._cols += senders.tolist()
        self._cols_t = None
        return diff

    @property
    def n(self) -> int:
        """Stored columns so far."""
        return len(self._cols)

    def varying(self) -> list[int]:
        """Sender ids whose D is held per mask (K > 1): a receiver reading none of them under the same
        mask row in every mask has one input for all masks."""
        out, c = [], 0
        for seg in self.segments:
            if seg.K > 1:
                out += [u for u in self._cols[c: c + seg.n] if u not in self._shared]
            c += seg.n
        return out

    def mix(self, M: Tensor, start: int = 0, out: Tensor | None = None) -> Tensor:
        """Mask rows M [K_M, r, S − start] for store columns start.. (in store order) times D → [r, K, W],
        written into `out` (a buffer of that shape, no gradients) where the first segment allows.
        Without gradients a segment the rows read nothing from is skipped: rows that read only K = 1
        segments give K = K_M. One row set for all masks (K_M = 1) must read only shared senders of a
        per-mask segment (not in `varying()`): it reads their first copy. The walk asks nothing else."""
        buffer, out, c, owned = out, None, 0, False
        for seg in self.segments:
            if c + seg.n > start:
                skip = max(start - c, 0)
                Ms = M[:, :, c + skip - start: c + seg.n - start]
                if self.grad:
                    data = seg.data[:, skip:]
                    part = _SegmentMix.apply(Ms, data, *_blocks_from(seg.blocks, skip))
                else:
                    data = _read(seg.data[:, skip:], Ms)
                    if data is None:
                        c += seg.n
                        continue
                    fits = out is None and buffer is not None and data.shape[0] == 1 and buffer.shape[1] == Ms.shape[0]
                    part = _mix(Ms, data, buffer if fits else None)
                    owned = owned or fits
                out = part if out is None else out.add_(part) if owned and out.shape == part.shape else out + part
            c += seg.n
        if out is None:  # nothing stored from start on, or only segments these rows do not read
            out = M.new_zeros(M.shape[1], M.shape[0], self.W) if buffer is None or buffer.shape[1] != M.shape[0] \
                else buffer.zero_()
        return out

    def mix_at(self, M: Tensor, pos: Tensor) -> Tensor:
        """Like `mix`, at one position per example: pos [K|1, b'] → [r, K, b', d]."""
        out, c = None, 0
        for seg in self.segments:
            data = None if self.grad else _read(seg.data, M[:, :, c: c + seg.n])
            if data is None and not self.grad:
                c += seg.n
                continue
            pieces = seg.blocks if self.grad else [data]
            D = torch.cat([_gather_pos(x, pos, self.shape) for x in pieces], dim=1)  # [K, n, b'·d]
            part = _mix(M[:, :, c: c + seg.n], D)
            out = part if out is None else out + part
            c += seg.n
        if out is None:
            return M.new_zeros(M.shape[1], M.shape[0], pos.shape[1], self.shape[2])
        return out.view(out.shape[0], out.shape[1], pos.shape[1], -1)

    def dense(self, n_src: int) -> Tensor:
        """All stored D of real senders (ids < n_src) as [src, K·W] in sender order; a view when it can be."""
        if len(self.segments) == 1 and self.segments[0].K == 1 and self._cols == list(range(n_src)):
            return self.segments[0].data[0]
        data = torch.cat([seg.data for seg in self.segments], dim=1)  # [K, S, W]
        out = data.new_zeros(n_src, data.shape[0] * self.W)
        real = self.cols < n_src
        out[self.cols[real]] = data.transpose(0, 1)[real].reshape(int(real.sum()), -1)
        return out

    def snapshot(self) -> "DiffStore":
        """This store as it is now, unchanged by later appends to this one (`branch` for its own k)."""
        return self.branch(self.k, self.workspace)

    def branch(self, k: int, workspace: Workspace | None = None) -> "DiffStore":
        """A store for k masks that starts from this one's contents as they are now: the segments'
        buffers are shared, each behind a frozen copy that keeps the count it had, so this store may
        go on appending (a recorded walk branched layer by layer keeps one segment) and the branch
        writes segments of its own. No gradients."""
        other = DiffStore(k, self.shape, self.capacity, grad=False, workspace=workspace)
        for seg in self.segments:
            copy = _Segment(seg.K, 0, self.W, seg.buf, seg.buf)
            copy.n, copy.frozen = seg.n, True
            other.segments.append(copy)
        other._cols, other._shared = list(self._cols), set(self._shared)
        return other


def _read(data: Tensor, M: Tensor) -> Tensor | None:
    """What mask rows M [K_M, r, n] read of a segment's data [K, n, W] (no gradients): None when they
    read nothing from a per-mask segment (skipped), its first copy when one row set serves every
    mask (it reads only shared senders there), else all of it."""
    if data.shape[0] == 1:
        return data
    if not bool(M.any()):
        return None
    return data[:1] if M.shape[0] == 1 else data


def _blocks_from(blocks: list[Tensor], skip: int) -> list[Tensor]:
    """The blocks (each [K, s, W]) that hold columns skip.., the first one cut to start there."""
    out = []
    for b in blocks:
        s = b.shape[1]
        if skip >= s:
            skip -= s
            continue
        out.append(b[:, skip:] if skip else b)
        skip = 0
    return out


def _gather_pos(x: Tensor, pos: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """x [K, n, b'·pos·d] at one position per example pos [K|1, b'] → [K, n, b'·d]."""
    K, n = x.shape[:2]
    bp, p, d = shape
    x = x.reshape(K, n, bp, p, d)
    idx = pos.expand(K, bp)[:, None, :, None, None].expand(K, n, bp, 1, d)
    return x.gather(3, idx).reshape(K, n, bp * d)
