"""Sender differences D = out − abl, kept sender-major so mixing them is one matrix product.

A store holds segments, each a preallocated buffer `[K, capacity, W]` (W = b'·pos·d_model) filled
block by block. K is 1 while every mask of the batch agrees so far (the computation is shared) and k
afterwards. Mixing receivers' mask rows `M [K_M, r, S]` with the stored D gives `[r, K, W]`:
for a K = 1 segment one GEMM `(r·k, S) @ (S, W)`; for a K = k segment one batched GEMM.

With gradients on (learned masks, attribution), buffers still hold the data — never modified once
written, only appended to — and `_SegmentMix` routes gradients to the blocks that filled them, so no
D is copied or saved twice.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _Segment:
    def __init__(self, K: int, capacity: int, W: int, like: Tensor):
        self.K, self.n = K, 0
        self.buf = torch.empty(K, capacity, W, dtype=like.dtype, device=like.device)
        self.blocks: list[Tensor] = []  # the differentiable blocks, when gradients are tracked
        self.frozen = False  # shared with a branch: never appended to again

    @property
    def data(self) -> Tensor:  # [K, n, W]
        return self.buf[:, : self.n]


def _mix(M: Tensor, D: Tensor) -> Tensor:
    """M [K_M, r, n] with D [K_D, n, W] → [r, max(K_M, K_D), W]."""
    K_M, r, n = M.shape
    if D.shape[0] == 1:
        return (M.transpose(0, 1).reshape(r * K_M, n) @ D[0]).view(r, K_M, -1)
    return torch.bmm(M.expand(D.shape[0], r, n), D).transpose(0, 1)


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
    def __init__(self, k: int, shape: tuple[int, int, int], capacity: int, grad: bool):
        """k masks; shape (b', pos, d_model) of one sender's output; room for `capacity` senders."""
        self.k, self.shape, self.capacity, self.grad = k, shape, capacity, grad
        self.W = shape[0] * shape[1] * shape[2]
        self.segments: list[_Segment] = []
        self._cols: list[int] = []
        self._cols_t: Tensor | None = None

    @property
    def K(self) -> int:
        return self.segments[-1].K if self.segments else 1

    @property
    def cols(self) -> Tensor:
        """Sender ids of the stored columns, in store order (index mask columns with it)."""
        if self._cols_t is None:
            self._cols_t = torch.tensor(self._cols, dtype=torch.long)
        return self._cols_t

    def append(self, senders: Tensor, diff: Tensor) -> None:
        """Store D of these senders: diff [s, K, b', pos, d]."""
        s, K = diff.shape[0], diff.shape[1]
        seg = self.segments[-1] if self.segments else None
        if seg is None or seg.K != K or seg.frozen:
            seg = _Segment(K, self.capacity - len(self._cols), self.W, diff)
            self.segments.append(seg)
        block = diff.reshape(s, K, self.W).transpose(0, 1)  # [K, s, W]
        seg.buf[:, seg.n: seg.n + s] = block.detach()
        seg.n += s
        if self.grad:
            seg.blocks.append(block)
        self._cols += senders.tolist()
        self._cols_t = None

    def mix(self, M: Tensor) -> Tensor:
        """Mask rows M [K_M, r, S] (columns in store order) → Σ_s M·D as [r, K, W]."""
        out, c = None, 0
        for seg in self.segments:
            Ms = M[:, :, c: c + seg.n]
            part = _SegmentMix.apply(Ms, seg.data, *seg.blocks) if self.grad else _mix(Ms, seg.data)
            out = part if out is None else out + part
            c += seg.n
        return out

    def mix_at(self, M: Tensor, pos: Tensor) -> Tensor:
        """Like `mix`, at one position per example: pos [K|1, b'] → [r, K, b', d]."""
        out, c = None, 0
        for seg in self.segments:
            pieces = seg.blocks if self.grad else [seg.data]
            D = torch.cat([_gather_pos(x, pos, self.shape) for x in pieces], dim=1)  # [K, n, b'·d]
            part = _mix(M[:, :, c: c + seg.n], D)
            out = part if out is None else out + part
            c += seg.n
        return out.view(out.shape[0], out.shape[1], pos.shape[1], -1)

    def dense(self, n_src: int) -> Tensor:
        """All stored D as [src, K·W] in sender order (unstored senders are zero); a view when it can be."""
        if len(self.segments) == 1 and self.segments[0].K == 1 and self._cols == list(range(n_src)):
            return self.segments[0].data[0]
        data = torch.cat([seg.data for seg in self.segments], dim=1)  # [K, S, W]
        out = data.new_zeros(n_src, data.shape[0] * self.W)
        out[self.cols] = data.transpose(0, 1).reshape(len(self._cols), -1)
        return out

    def branch(self, k: int) -> "DiffStore":
        """A store for k masks that starts from this one's contents (shared, never modified)."""
        other = DiffStore(k, self.shape, self.capacity, grad=False)
        for seg in self.segments:
            seg.frozen = True
        other.segments, other._cols = list(self.segments), list(self._cols)
        return other


def _gather_pos(x: Tensor, pos: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """x [K, n, b'·pos·d] at one position per example pos [K|1, b'] → [K, n, b'·d]."""
    K, n = x.shape[:2]
    bp, p, d = shape
    x = x.reshape(K, n, bp, p, d)
    idx = pos.expand(K, bp)[:, None, :, None, None].expand(K, n, bp, 1, d)
    return x.gather(3, idx).reshape(K, n, bp * d)
