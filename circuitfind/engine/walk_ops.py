"""Tensor helpers of the walk (`walk.py`): answer positions gathered, copies along the mask axis,
per-head projections and output differences. Layouts as in `walk.py`."""

from __future__ import annotations

import torch
from torch import Tensor

from circuitfind.engine.store import take


def gather_at(x: Tensor, pos: Tensor) -> Tensor:
    """x [K|1, b'|1, pos|1, d] at the answer positions pos [K|1, b'] → [K, b', d]."""
    if x.shape[2] == 1:
        return x[:, :, 0].expand(max(x.shape[0], pos.shape[0]), pos.shape[1], -1)
    K, bp = max(x.shape[0], pos.shape[0]), pos.shape[1]
    x = x.expand(K, bp, -1, -1)
    idx = pos.expand(K, bp)[:, :, None, None].expand(K, bp, 1, x.shape[-1])
    return x.gather(2, idx)[:, :, 0]


def copies(t: Tensor, n: int) -> Tensor:
    """t [K·b', ...] as n copies along the mask axis, [n·K·b', ...] (t itself when n = 1)."""
    return t if n == 1 else t.repeat(n, *([1] * (t.ndim - 1)))


def out_minus(abl: Tensor, z: Tensor, W_O: Tensor, target: Tensor | None) -> Tensor:
    """D = z @ W_O − abl per head ([a, m, d_head] @ [a, d_head, d] − [a, m|1, d]), into target if
    given; target may be abl's own memory (the ablated outputs overwritten in place)."""
    if target is not None and target.data_ptr() == abl.data_ptr() and target.shape == abl.shape:
        return target.baddbmm_(z, W_O, beta=-1)
    return torch.baddbmm(abl, z, W_O, beta=-1, out=target)


def spread(g: Tensor, pos: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """A gradient at the answer positions [1, b', d] → [1, b'·pos·d] for shape (b', pos, d), zero elsewhere."""
    full = g.new_zeros(shape)
    full[torch.arange(shape[0]), pos[0]] = g[0]
    return full.reshape(1, -1)


def transposed(w: Tensor, dh: int, heads: Tensor) -> Tensor:
    """A fused projection weight w [d, n·d_head] as per-head transposes [len(heads), d_head, d] (a view
    when heads is every head in order)."""
    return take(w.t().reshape(-1, dh, w.shape[0]), heads, 0)


def proj(xn: Tensor, w: Tensor, bias: Tensor | None, dh: int) -> Tensor:
    """Shared normed input xn [B, pos, d] through a fused weight w [d, heads·d_head] → [B, heads, pos, d_head]."""
    y = xn @ w if bias is None else torch.addmm(bias, xn.flatten(0, 1), w).view(*xn.shape[:2], -1)
    return y.view(*xn.shape[:2], -1, dh).transpose(1, 2)


def proj_each(ln, x: Tensor, W: Tensor, bias: Tensor | None, idx: Tensor, dh: int, B: int, p: int) -> Tensor:
    """Per-head pre-norm inputs x [a, B·pos, d] through the norm and W [a, d, d_head] → [B, a, pos, d_head]."""
    y = ln.project(x, W, None if bias is None else bias.view(-1, dh)[idx])
    return y.view(len(idx), B, p, dh).transpose(0, 1)
