"""The layers of the canonical transformer: norms, attention with per-head weights, MLP, rotary.

Each accepts tensors with extra leading dimensions, so the engine (`circuitfind.engine`) reuses them
on per-receiver inputs ([receivers, batch·pos, d_model]) as the plain forward does on [batch, pos, d_model].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from circuitfind.models.canonical import CanonicalConfig

_GELU_C = 2 * math.sqrt(2 / math.pi)


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU, tanh approximation (GPT-2's gelu_new): 0.5·x·(1 + tanh(u)) = x·sigmoid(2u),
    u = √(2/π)(x + 0.044715x³).

    On the CPU in fp32/fp64 the sigmoid form, in place on one new tensor: torch's tanh-GELU kernel there
    took 590 µs on [16, 38, 512] floats where this takes 320 (2 cores); a layer-0 ACDC forward of 17
    masks on toy-lm spent 2.1 of its 15.7 ms in it. Elsewhere (GPU, half precision, autograd), torch's kernel."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) \
            or (x.requires_grad and torch.is_grad_enabled()):  # (its backward beats the composite's: 7.7 vs 13.8 ms)
        return F.gelu(x, approximate="tanh")
    y = x * x
    return y.mul_(0.044715 * _GELU_C).add_(_GELU_C).mul_(x).sigmoid_().mul_(x)


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_fast": gelu_tanh,
    "relu": F.relu,
    "relu2": lambda x: F.relu(x).square(),  # Persimmon, Nemotron
    "silu": F.silu,
    "identity": lambda x: x,  # linear MLPs (toy and test models)
}


class Norm(nn.Module):
    """LayerNorm, RMSNorm (optionally `(offset + w)`-scaled) or identity, over the last dimension."""

    def __init__(self, kind: str, d: int, eps: float, offset: float = 0.0, bias: bool = True):
        super().__init__()
        self.kind, self.eps, self.offset = kind, eps, offset
        self.w = nn.Parameter(torch.ones(d)) if kind != "none" else None
        self.b = nn.Parameter(torch.zeros(d)) if kind == "layernorm" and bias else None

    def forward(self, x: Tensor, detach_scale: bool = False) -> Tensor:
        """detach_scale: the normalisation factor (1/σ, 1/rms) a constant of the backward, the norm linear in x
        (LRP's LN-rule, Ali et al. 2022, as RelP uses it); the value is the same."""
        if self.kind == "none":
            return x
        if detach_scale:
            return self._linear_in_scale(x)
        if self.kind == "layernorm":  # (weights cast to x: a half-precision model's final norm on float32 rows)
            w, b = self.w.to(x.dtype), None if self.b is None else self.b.to(x.dtype)
            return F.layer_norm(x, x.shape[-1:], w, b, self.eps)
        wide = torch.promote_types(x.dtype, torch.float32)  # at least fp32, as Hugging Face does
        x32 = x.to(wide)
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * (self.offset + self.w.to(wide))).to(x.dtype)

    def _linear_in_scale(self, x: Tensor) -> Tensor:
        """forward(x) with the scale detached (`forward`'s detach_scale)."""
        wide = torch.promote_types(x.dtype, torch.float32)
        x32 = x.to(wide)
        if self.kind == "layernorm":
            x32 = x32 - x32.mean(-1, keepdim=True)
            w = self.w.to(wide)
        else:
            w = self.offset + self.w.to(wide)
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps).detach() * w
        return (y if self.b is None else y + self.b.to(wide)).to(x.dtype)

    def project(self, x: Tensor, W: Tensor, bias: Tensor | None = None) -> Tensor:
        """forward(x) @ W (+ bias) without materialising forward(x): x [n, m, d], W [n, d, e] → [n, m, e].

        The norm is affine per row once its statistics are known, so it folds into the weights:
        LayerNorm: ((x @ w⊙W) − μ · Σ_d w⊙W) / σ + b @ W;  RMSNorm: (x @ (o + w)⊙W) / rms(x).
        The engine projects a separate input per receiver; this saves a normalised copy of each.
        """
        if self.kind == "none":
            y = torch.bmm(x, W)
        elif self.kind == "layernorm":
            # E[x²] − μ² from two fast reductions (torch.var_mean is ~40x slower on CPU)
            mean = x.mean(-1, keepdim=True)
            var = (torch.linalg.vector_norm(x, dim=-1, keepdim=True).square() / x.shape[-1] - mean.square()).clamp(min=0)
            Ww = W * self.w[:, None]
            y = (torch.bmm(x, Ww) - mean * Ww.sum(1, keepdim=True)) * torch.rsqrt(var + self.eps)
            if self.b is not None:
                y = y + (self.b @ W)[:, None]
        else:
            ms = torch.linalg.vector_norm(x.to(torch.promote_types(x.dtype, torch.float32)), dim=-1, keepdim=True).square() / x.shape[-1]
            inv = torch.rsqrt(ms + self.eps)
            y = torch.bmm(x, W * (self.offset + self.w)[:, None]) * inv.to(x.dtype)
        return y if bias is None else y + bias[:, None]

    def input_grads(self, x: Tensor, g: Tensor, WT: Tensor, *, projected: Tensor | None = None, chunk: int = 0,
                    buffer: Tensor | None = None, detach_scale: bool = False) -> Iterator[tuple[slice, Tensor]]:
        """Gradients w.r.t. x [m, d] of y[a] = forward(x) @ W[a], given g [a, m, e] w.r.t. each y[a]
        and the weights transposed, WT [a, e, d] (a scratch copy: it is scaled in place by the norm's
        weight). One gradient per head a. Yields (rows, grad [a, len(rows), d]) for `chunk` rows of x
        at a time (0: all at once), each written into `buffer` (≥ a·chunk·d elements) if given and
        valid until the next one is asked for.

        The norm's VJP is affine in g per position: with x̂ the normalised x, inv = 1/σ and
        gh = (inv·g) @ (w⊙W)ᵀ,  grad = gh − mean_d(gh) − mean_d(gh ⊙ x̂)·x̂  (RMSNorm: no mean term).
        Both means are computed at width e, so the only full-width product is gh. `projected`, the
        forward's forward(x) @ W[a] [a, m, e] if the caller kept it, saves recomputing x̂ @ (w⊙W).
        Chunks keep gh small enough to be consumed from cache. detach_scale: the VJP of `forward(x,
        detach_scale=True)` (1/σ a constant): grad = gh − mean_d(gh) (RMSNorm: gh).
        """
        m, d = x.shape
        chunk = chunk or m
        wide = torch.promote_types(x.dtype, torch.float32)
        if projected is not None and self.b is not None:  # forward(x) = x̂ ⊙ w + b: x̂ @ (w⊙W) = forward(x) @ W − b @ W
            projected = projected - (WT @ self.b.to(WT.dtype))[:, None]
        if self.kind != "none":
            WT.mul_((self.w if self.kind == "layernorm" else self.offset + self.w).to(WT.dtype))  # (w⊙W)ᵀ
        w_mean = WT.mean(-1, keepdim=True).to(g.dtype) if self.kind == "layernorm" else None  # [a, e, 1]
        for start in range(0, m, chunk):
            rows = slice(start, min(start + chunk, m))
            n = rows.stop - rows.start
            out = None if buffer is None else buffer[: len(WT) * n * d].view(len(WT), n, d)
            if self.kind == "none":
                yield rows, torch.bmm(g[:, rows], WT, out=out)
                continue
            xs = x[rows].to(wide)
            if self.kind == "layernorm":
                xs = xs - xs.mean(-1, keepdim=True)
            inv = torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + self.eps)  # [n, 1]
            xhat = (xs * inv).to(g.dtype)
            xhat_W = None if detach_scale else torch.matmul(xhat, WT.transpose(1, 2)) if projected is None \
                else projected[:, rows]  # [a, n, e]
            gi = g[:, rows] * inv.to(g.dtype)  # [a, n, e]
            grad = torch.bmm(gi, WT, out=out)  # gh [a, n, d]
            if not detach_scale:
                grad.addcmul_((gi * xhat_W).sum(-1, keepdim=True), xhat, value=-1 / d)
            if w_mean is not None:
                grad.sub_(gi @ w_mean)
            yield rows, grad

    def shares(self, parts: Tensor, dim: int) -> Tensor:
        """Each part's share of the RMS-normed sum: Σ_dim shares == forward(parts.sum(dim)).

        Post-norms (Gemma 2) normalise the sum of all heads; the scale is the sum's, so the shares
        add up exactly and each head remains its own sender.
        """
        if self.kind != "rmsnorm":
            raise NotImplementedError("only RMSNorm post-norms split into shares")
        wide = torch.promote_types(parts.dtype, torch.float32)
        total = parts.to(wide).sum(dim, keepdim=True)
        scale = torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + self.eps) * (self.offset + self.w.to(wide))
        return (parts.to(wide) * scale).to(parts.dtype)


class HeadNorm(Norm):
    """A q/k norm over d_head: RMSNorm or LayerNorm, one weight for all heads or one per head
    (StableLM, Command-R: w [head, d_head]), applied to q or k [..., head, pos, d_head]."""

    def __init__(self, kind: str, n_heads: int, d_head: int, eps: float, offset: float, per_head: bool, bias: bool):
        super().__init__(kind, d_head, eps, offset, bias)
        if per_head:
            self.w = nn.Parameter(torch.ones(n_heads, d_head))
            self.b = nn.Parameter(torch.zeros(n_heads, d_head)) if self.b is not None else None
        self.per_head = per_head

    def forward(self, x: Tensor, heads: Tensor | None = None) -> Tensor:
        """x [..., a, pos, d_head] of the heads `heads` ([a] long; None: every head, in order)."""
        if not self.per_head:
            return super().forward(x)
        w = (self.w if heads is None else self.w[heads])[:, None]  # [a, 1, d_head]
        b = None if self.b is None else (self.b if heads is None else self.b[heads])[:, None]
        wide = torch.promote_types(x.dtype, torch.float32)
        x32 = x.to(wide)
        if self.kind == "layernorm":
            x32 = x32 - x32.mean(-1, keepdim=True)
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * (self.offset + w.to(wide))
        return (normed if b is None else normed + b.to(wide)).to(x.dtype)


def _linear(d_in: int, d_out: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(d_in, d_out).normal_(std=0.02))


def _maybe_bias(d: int, present: bool) -> nn.Parameter | None:
    return nn.Parameter(torch.zeros(d)) if present else None


class Attention(nn.Module):
    """Multi-head (optionally grouped-query) attention with per-head weights.

    Stored: w_q [d_model, head*d_head], w_k/w_v [d_model, kv_head*d_head], w_o [head*d_head, d_model].
    """

    def __init__(self, cfg: CanonicalConfig, layer: int, qkv_bias: bool, out_bias: bool):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        d, h, kv, dh = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        self.w_q, self.w_k, self.w_v = _linear(d, h * dh), _linear(d, kv * dh), _linear(d, kv * dh)
        self.b_q, self.b_k, self.b_v = (_maybe_bias(n * dh, qkv_bias) for n in (h, kv, kv))
        self.w_o, self.b_o = _linear(h * dh, d), _maybe_bias(d, out_bias)
        def qk(n):
            return HeadNorm(cfg.qk_norm_kind, n, dh, cfg.norm_eps, cfg.norm_offset, cfg.qk_norm_per_head,
                            cfg.qk_norm_bias)
        if cfg.qk_norm and cfg.qk_norm_width == "all":  # over every head's projection together: [n·d_head]
            self.q_norm, self.k_norm = (Norm("rmsnorm", n * dh, cfg.norm_eps, cfg.norm_offset) for n in (h, kv))
        else:
            self.q_norm = qk(h) if cfg.qk_norm else None
            self.k_norm = qk(kv) if cfg.qk_norm else None
        self.post_norm = Norm("rmsnorm", d, cfg.norm_eps, cfg.norm_offset) if cfg.post_norms else None
        self.sliding = layer in cfg.sliding_layers
        # ALiBi (BLOOM, Falcon): each head's slope; its score bias is slope · key position
        self.register_buffer("alibi", torch.zeros(h) if cfg.positional == "alibi" else None)
        # attention sinks (gpt-oss): each head's logit of attending to nothing; a position term, not a sender
        self.sinks = nn.Parameter(torch.zeros(h)) if cfg.attn_sinks else None

    # Per-head views with TransformerLens names and shapes.
    @property
    def W_Q(self) -> Tensor:  # [head, d_model, d_head]
        return self.w_q.view(self.cfg.d_model, -1, self.cfg.d_head).permute(1, 0, 2)

    @property
    def W_K(self) -> Tensor:  # [kv_head, d_model, d_head]
        return self.w_k.view(self.cfg.d_model, -1, self.cfg.d_head).permute(1, 0, 2)

    @property
    def W_V(self) -> Tensor:  # [kv_head, d_model, d_head]
        return self.w_v.view(self.cfg.d_model, -1, self.cfg.d_head).permute(1, 0, 2)

    @property
    def W_O(self) -> Tensor:  # [head, d_head, d_model]
        return self.w_o.view(self.cfg.n_heads, self.cfg.d_head, self.cfg.d_model)

    def full_norm(self, kind: str, y: Tensor) -> Tensor:
        """y [..., n·d_head], the projections of every query (kind "q") or key ("k") head, normed over all of
        them together where the family does so (qk_norm_width "all"; per-head norms belong to `attend`)."""
        if self.cfg.qk_norm_width != "all" or self.q_norm is None or kind == "v":
            return y
        return (self.q_norm if kind == "q" else self.k_norm)(y)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, rope: tuple[Tensor, Tensor] | None,
               allowed: Tensor, want_pattern: bool = False,
               q_rope: tuple[Tensor, Tensor] | None = None,
               heads: Tensor | None = None, detach_pattern: bool = False) -> tuple[Tensor, Tensor | None]:
        """Attention from projected queries/keys/values to per-head mixed values.

        q: [..., head, q_pos, d_head]; k, v: [..., head or kv_head, pos, d_head] (biases added).
        rope: (cos, sin) broadcastable to [..., pos, rotary_dim], or under ALiBi (key positions,)
        broadcastable to [..., pos, 1]; q_rope: the queries' own, where they are at other positions
        than the keys (queries at the answer positions alone); allowed: bool, broadcastable to
        [..., head, q_pos, k_pos]; heads: which heads q holds ([a] long; None: all, in order), for
        per-head q/k norms and ALiBi slopes (k then holds one head per query head, or every kv head).
        detach_pattern: the pattern a constant of the backward (LRP's AH-rule, Ali et al. 2022): no gradient
        reaches q or k. Returns z [..., head, q_pos, d_head] and, if asked, the pattern.
        """
        cfg = self.cfg
        if self.q_norm is not None and cfg.qk_norm_width == "head":
            kv_heads = None if heads is None or k.shape[-3] != len(heads) else heads // cfg.group_size
            q, k = self.q_norm(q, heads), self.k_norm(k, kv_heads)
        bias = None
        if cfg.positional == "alibi":  # slope · key position ([..., a, 1, k_pos]); the query's own cancels in softmax
            slopes = self.alibi if heads is None else self.alibi[heads]
            bias = slopes[:, None, None].to(q.dtype) * rope[0].transpose(-1, -2).to(q.dtype)
            if cfg.alibi_dtype is not None:  # (exact products of small integers, rounded as the source model rounds)
                bias = bias.to(getattr(torch, cfg.alibi_dtype)).to(q.dtype)
            if cfg.alibi_scale != 1.0:
                bias = bias * cfg.alibi_scale
            allowed = torch.where(allowed, bias, float("-inf"))  # an additive mask [..., a, q_pos, k_pos]
        elif rope is not None:
            q, k = apply_rotary(q, rope if q_rope is None else q_rope), apply_rotary(k, rope)
        if k.shape[-3] != q.shape[-3]:
            k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
            v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
        if not want_pattern and not detach_pattern and cfg.attn_softcap is None and self.sinks is None:
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=cfg.scale)
            return z, None
        scores = (q @ k.transpose(-1, -2)) * cfg.scale
        if cfg.attn_softcap is not None:
            scores = torch.tanh(scores / cfg.attn_softcap) * cfg.attn_softcap
        scores = scores + allowed if bias is not None else scores.masked_fill(~allowed, float("-inf"))
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
        if self.sinks is None:
            pattern = torch.softmax(scores, dim=-1).to(q.dtype)
            pattern = pattern.detach() if detach_pattern else pattern
            return pattern @ v, pattern
        sink = (self.sinks if heads is None else self.sinks[heads]).to(scores.dtype)  # [a]
        sink = sink[:, None, None].expand(*scores.shape[:-1], 1)  # a column in every row of the pattern
        pattern = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1].to(q.dtype)  # (rows sum < 1)
        pattern = pattern.detach() if detach_pattern else pattern
        return pattern @ v, pattern


class MLP(nn.Module):
    """Dense or gated MLP: out = act(x W_gate) * (x W_in) W_out (gated) or act(x W_in) W_out."""

    def __init__(self, cfg: CanonicalConfig, bias: bool):
        super().__init__()
        self.cfg = cfg
        self.w_in, self.b_in = _linear(cfg.d_model, cfg.d_mlp), _maybe_bias(cfg.d_mlp, bias)
        self.w_gate = _linear(cfg.d_model, cfg.d_mlp) if cfg.gated_mlp else None
        self.w_out, self.b_out = _linear(cfg.d_mlp, cfg.d_model), _maybe_bias(cfg.d_model, bias)
        self.post_norm = Norm("rmsnorm", cfg.d_model, cfg.norm_eps, cfg.norm_offset) if cfg.post_norms else None
        self.act = ACTIVATIONS[cfg.act_fn]

    def hidden(self, x: Tensor, relevance: bool = False) -> tuple[Tensor, Tensor]:
        """x [..., d_model] (normed) → (pre-activation, post-activation), each [..., d_mlp].

        relevance: the same values, with RelP's backward (Jafari et al. 2025): the activation by LRP's
        identity rule (`identity_rule`), a gate's product by the half rule (`half_rule`)."""
        up = x @ self.w_in if self.b_in is None else torch.addmm(self.b_in, x.flatten(0, -2), self.w_in).view(*x.shape[:-1], -1)
        act = (lambda t: identity_rule(self.act, t)) if relevance and self.act is not F.relu else self.act
        if self.w_gate is None:
            return up, act(up)
        gate = x @ self.w_gate
        post = act(gate) * up
        return gate, half_rule(post) if relevance else post

    def output(self, post: Tensor) -> Tensor:
        """post [..., d_mlp] → block output [..., d_model] (bias excluded, post-norm included).

        The bias is a constant of the residual stream and belongs to no sender; see `block_bias`.
        """
        out = post @ self.w_out
        return out if self.post_norm is None else self.post_norm(out)

    def forward(self, x: Tensor, relevance: bool = False) -> Tensor:
        """x [..., d_model] (normed) → block output [..., d_model] (bias excluded, as `output`); relevance as
        `hidden`."""
        return self.output(self.hidden(x, relevance)[1])


def identity_rule(act: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """act(x), whose backward passes act(x)/x (LRP's identity rule for an element-wise activation, Jafari et al.
    2024, as in RelP: relevance passes through unchanged, R_in = R_out). x is stabilised away from 0 by 1e-6 as
    the RelP code does (lrp_utils.stabilize), which leaves ReLU to its gradient (already relu(x)/x): so does `MLP`."""
    z = act(x.detach())
    xs = x.detach()
    xs = xs + ((xs == 0).to(xs) + xs.sign()) * 1e-6
    return z + (x - x.detach()) * (z / xs)


def half_rule(y: Tensor) -> Tensor:
    """y (a product of two factors, both depending on the input), whose backward is halved: each factor gets
    half the relevance (LRP's half rule for multiplicative gates, Jafari et al. 2024; Arras et al. 2019)."""
    return 0.5 * y + 0.5 * y.detach()


class MoE(nn.Module):
    """A mixture-of-experts MLP (Mixtral, Qwen-MoE, OLMoE), one node of the graph, router included.

    The router's softmax over experts, its exact top-k (renormalised where the family does), each
    chosen expert a gated MLP weighted by its router probability, summed; Qwen-MoE adds a shared expert
    under a sigmoid gate. Stored: w_router [d_model, expert], w_up [expert, d_model, 2·d_mlp] (gate, then
    in: one product per expert; `w_gate` and `w_in` are its halves), w_out [expert, d_mlp, d_model];
    shared_{gate,in,out} and shared_router [d_model, 1]; gpt-oss's biases b_router [expert], b_up
    [expert, 2·d_mlp] and b_expert_out [expert, d_model] (an expert's, so weighted by its gate).
    """

    b_out = post_norm = None

    def __init__(self, cfg: CanonicalConfig):
        super().__init__()
        self.cfg, e, d, m = cfg, cfg.n_experts, cfg.d_model, cfg.d_mlp
        self.w_router = _linear(d, e)
        self.w_up = nn.Parameter(torch.empty(e, d, 2 * m).normal_(std=0.02))
        self.w_out = nn.Parameter(torch.empty(e, m, d).normal_(std=0.02))
        self.b_router, self.b_up, self.b_expert_out = (  # gpt-oss: the router's and each expert's biases
            (nn.Parameter(torch.zeros(*shape)) for shape in ((e,), (e, 2 * m), (e, d))) if cfg.moe_bias
            else (None, None, None))
        s = cfg.d_mlp_shared
        self.shared_gate, self.shared_in = (_linear(d, s) if s else None for _ in range(2))
        self.shared_out, self.shared_router = (_linear(s, d), _linear(d, 1)) if s else (None, None)
        self.act = ACTIVATIONS[cfg.act_fn]

    @property
    def w_gate(self) -> Tensor:  # [expert, d_model, d_mlp]
        return self.w_up[..., : self.cfg.d_mlp]

    @property
    def w_in(self) -> Tensor:  # [expert, d_model, d_mlp]
        return self.w_up[..., self.cfg.d_mlp:]

    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [n, d_model] → (weights [n, top_k] in x's dtype, experts [n, top_k] long)."""
        logits = x @ self.w_router if self.b_router is None else torch.addmm(self.b_router, x, self.w_router)
        probs = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)  # (at least fp32)
        weights, experts = torch.topk(probs, self.cfg.top_k, dim=-1)
        if self.cfg.norm_topk:
            weights = weights / weights.sum(-1, keepdim=True)
        return weights.to(x.dtype), experts

    def gates(self, x: Tensor) -> Tensor:
        """x [n, d_model] (normed) → each expert's gate [n, expert]: its router weight where it is in the
        token's top-k, else 0 (the expert-level graph routes each expert from an input of its own)."""
        weights, experts = self.route(x)
        return weights.new_zeros(x.shape[0], self.cfg.n_experts).scatter(1, experts, weights)

    def expert(self, e: int, x: Tensor) -> Tensor:
        """x [n, d_model] (normed) → expert e's output [n, d_model], before its gate."""
        up = x @ self.w_up[e] if self.b_up is None else torch.addmm(self.b_up[e], x, self.w_up[e])  # [n, gate | in]
        m, limit = self.cfg.d_mlp, self.cfg.swiglu_limit
        gate, up = up[:, :m], up[:, m:]
        if limit is None:
            hidden = self.act(gate) * up
        else:  # gpt-oss
            gate, up = gate.clamp(max=limit), up.clamp(-limit, limit)
            hidden = gate * torch.sigmoid(self.cfg.swiglu_alpha * gate) * (up + 1)
        out = hidden @ self.w_out[e]
        return out if self.b_expert_out is None else out + self.b_expert_out[e]

    def shared(self, x: Tensor) -> Tensor:
        """x [n, d_model] (normed) → the shared expert's output under its sigmoid gate [n, d_model]."""
        hidden = self.act(x @ self.shared_gate) * (x @ self.shared_in)
        return torch.sigmoid(x @ self.shared_router) * (hidden @ self.shared_out)

    def forward(self, x: Tensor) -> Tensor:
        """x [..., d_model] (normed) → block output [..., d_model]: each token through its top-k experts alone."""
        flat = x.reshape(-1, x.shape[-1])
        weights, experts = self.route(flat)
        out = torch.zeros_like(flat)
        in_place = not (torch.is_grad_enabled() and (flat.requires_grad or self.w_up.requires_grad))
        order = experts.flatten().argsort(stable=True)  # (token, slot) pairs grouped by expert, in token order
        counts = torch.bincount(experts.flatten(), minlength=self.cfg.n_experts).tolist()
        for e, pairs in enumerate(order.split(counts)):
            if not len(pairs):
                continue
            token = pairs // self.cfg.top_k
            y = self.expert(e, flat[token]) * weights.flatten()[pairs, None]
            out = out.index_add_(0, token, y) if in_place else out.index_add(0, token, y)
        if self.shared_out is not None:
            out = out + self.shared(flat)
        return out.view(x.shape)


class Block(nn.Module):
    def __init__(self, cfg: CanonicalConfig, layer: int, qkv_bias: bool, out_bias: bool, mlp_bias: bool):
        super().__init__()
        kind = cfg.norm if cfg.pre_norms else "none"
        ln = lambda: Norm(kind, cfg.d_model, cfg.norm_eps, cfg.norm_offset)  # noqa: E731
        self.ln1, self.attn = ln(), Attention(cfg, layer, qkv_bias, out_bias)
        self.ln2, self.mlp = ln(), MoE(cfg) if cfg.n_experts else MLP(cfg, mlp_bias)


def apply_rotary(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate the first rotary_dim features of x [..., pos, d_head] (rotate-half convention)."""
    cos, sin = rope
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x1, x2 = x_rot[..., : rot // 2], x_rot[..., rot // 2:]
    rotated = x_rot * cos + torch.cat((-x2, x1), dim=-1) * sin
    return torch.cat((rotated, x_pass), dim=-1) if x_pass.shape[-1] else rotated


