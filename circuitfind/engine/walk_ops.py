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


def proj(xn: Tensor, w: Tensor, bias: Tensor | None, dh: int, norm=None) -> Tensor:
    """Shared normed input xn [B, pos, d] through a fused weight w [d, heads·d_head] → [B, heads, pos, d_head]
    (then through `norm` over every head together, if given: OLMo 2's q/k norms)."""
    y = xn @ w if bias is None else torch.addmm(bias, xn.flatten(0, 1), w).view(*xn.shape[:2], -1)
    if norm is not None:
        y = norm(y)
    return y.view(*xn.shape[:2], -1, dh).transpose(1, 2)


def proj_each_all(ln, x: Tensor, w: Tensor, bias: Tensor | None, norm, idx: Tensor, dh: int, B: int, p: int) -> Tensor:
    """Like `proj_each`, where each head's query or key is normed over every head's projection of its input
    together (OLMo 2): x [a, B·pos, d] through the fused w [d, n·d_head] and `norm`, head idx[i] of row i
    kept → [B, a, pos, d_head]. Each receiver's input is projected through every head: n times the work."""
    a = len(idx)
    y = norm(ln.project(x, w.expand(a, *w.shape), None if bias is None else bias.expand(a, -1)))  # [a, B·pos, n·dh]
    y = y.view(a, B * p, -1, dh)[torch.arange(a, device=idx.device), :, idx]  # [a, B·pos, d_head]
    return y.view(a, B, p, dh).transpose(0, 1)


def proj_each(ln, x: Tensor, W: Tensor, bias: Tensor | None, idx: Tensor, dh: int, B: int, p: int) -> Tensor:
    """Per-head pre-norm inputs x [a, B·pos, d] through the norm and W [a, d, d_head] → [B, a, pos, d_head]."""
    y = ln.project(x, W, None if bias is None else bias.view(-1, dh)[idx])
    return y.view(len(idx), B, p, dh).transpose(0, 1)


def norm_over_heads(attn, kind: str):
    """The norm over every query (or key) head's projection together, where the family has one (OLMo 2), else None."""
    if attn.cfg.qk_norm_width != "all" or attn.q_norm is None:
        return None
    return attn.q_norm if kind == "q" else attn.k_norm


def proj_receivers(ln, attn, kind: str, x: Tensor, W: Tensor, bias: Tensor | None, idx: Tensor, dh: int,
                   B: int, p: int) -> Tensor:
    """Per-receiver inputs x [a, B·pos, d] of these heads' q, k or v → [B, a, pos, d_head] (`proj_each`, or
    through every head and the norm over all of them, `proj_each_all`)."""
    norm = norm_over_heads(attn, kind) if kind != "v" else None
    if norm is not None:
        return proj_each_all(ln, x, attn.w_q if kind == "q" else attn.w_k, attn.b_q if kind == "q" else attn.b_k,
                             norm, idx, dh, B, p)
    return proj_each(ln, x, take(W, idx, 0), bias, idx, dh, B, p)
