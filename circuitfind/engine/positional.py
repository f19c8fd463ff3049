"""The position-aware masked forward: every edge patched at some spans of the prompt and kept at others.

Spans (`circuitfind.spans`) label each position; masks are `M [k, dst, src, T, T]` over (query span t,
key span s). For receiver v reading at position j (span s(j)):

    q, MLP and logits receivers:  in_v[j] = base_v[j] + Σ_u M[v, u, s(j), s(j)] · D_u[j]
    k and v receivers:            the head's queries at span t read keys and values made from
                                  in_v⁽ᵗ⁾[j] = base_v[j] + Σ_u M[v, u, t, s(j)] · D_u[j]

with D_u = out_u − abl_u and base_v = biases + Σ_u abl_u, as in `patching.py`. So (u → v, s) is sender u's
output at span s in v's input at span s, and for keys and values (u → v, t, s) is u at the key span s read by
the head's queries at span t: the cross-position edge of PEAP (Haklay et al. 2025, arXiv:2502.04577), taken
through the sender that writes it. Summed over (t, s) a unit's first-order effect is the edge's.

A head's keys and values are made once per query span (T copies, one where the mask rows agree), so a pass
costs about T attention computations per layer; the mixing is per position, one product per span (`_mix`), and
the clean run (every mask one) reads the residual stream instead. This is the plain engine for position-aware
circuits: it keeps every D [src, k, b, pos, d] and none of `walk.py`'s other shortcuts. Tests: the full-span mask
equals `masked_forward` (tests/test_positions.py), per-span exact patching equals a slow loop with the spans
patched by hand, and per-span EAP summed over spans equals EAP.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuitfind.errors import ConfigError
from circuitfind.types import Inputs

__all__ = ["span_forward", "span_attribution"]


def _check(model, inputs: Inputs, ablated: Tensor, spans: Tensor, masks: Tensor, T: int):
    g = model.graph
    if g.n_experts:
        raise ConfigError("position-aware circuits are over the node graph; load the model without experts=True")
    if tuple(spans.shape) != tuple(inputs.tokens.shape):
        raise ConfigError(f"spans must be [batch, pos] = {tuple(inputs.tokens.shape)}; got {tuple(spans.shape)}")
    if masks.ndim != 5 or tuple(masks.shape[1:]) != (g.n_receivers, g.n_senders, T, T):
        raise ConfigError(f"position-aware masks are [k, dst={g.n_receivers}, src={g.n_senders}, T={T}, T={T}]; got "
                          f"{tuple(masks.shape)}")
    if ablated.ndim != 4 or ablated.shape[0] != g.n_senders:
        raise ConfigError(f"ablated outputs must be [src={g.n_senders}, batch|1, pos|1, d_model]; got "
                          f"{tuple(ablated.shape)}")


class _SpanWalk:
    """One position-aware pass over k masks."""

    def __init__(self, model, inputs: Inputs, ablated: Tensor, spans: Tensor, masks: Tensor, T: int,
                 input_alpha: float = 1.0, track: bool = False):
        """Where every mask is all ones (the clean run) each receiver reads the residual stream itself and nothing
        is mixed. track: that run with gradients, for attribution: one copy of the stream per read, kept
        (`received`) for its own gradient."""
        _check(model, inputs, ablated, spans, masks, T)
        self.clean = bool((masks == 1).all())
        if track and not self.clean:
            raise ConfigError("receiver gradients of the position-aware walk are taken in the clean run (masks of ones)")
        self.model, self.cfg, self.g = model, model.cfg, model.graph
        self.inputs, self.T, self.track = inputs, T, track
        b, p = inputs.tokens.shape
        self.k, self.b, self.p, self.d = masks.shape[0], b, p, self.cfg.d_model
        # a padding position reads the span T (a zero column): only its base, which nothing real reads
        self.span = torch.where(spans < 0, T, spans).to(masks.device)  # [b, p]
        pad = torch.zeros(*masks.shape[:3], T + 1, T + 1, dtype=model.dtype, device=masks.device)
        pad[..., :T, :T] = masks.to(model.dtype) * self.g.edge_mask.to(masks.device, model.dtype)[..., None, None]
        self.M = pad  # [k, dst, src, T+1, T+1]
        self.abl = ablated.expand(self.g.n_senders, b, p, self.d)
        self.input_alpha = input_alpha
        self.resid: Tensor | None = None  # the stream so far [k, b, p, d] (read in the clean run)
        self.D: list[Tensor] = []  # per sender [k, b, p, d]
        self.bias = torch.zeros(self.d, dtype=model.dtype, device=model.device)
        self.received: dict[int, list] = {}  # receiver → [(query span or None, its inputs [r, k, b, p, d], row)]
        flat = self.span.flatten()
        self.positions_of = [(flat == s).nonzero()[:, 0] for s in range(T)]  # [n_s] flat positions of each span
        order = torch.cat(self.positions_of)  # the positions span by span; padding (span T) last, as one zero row
        self.unsort = torch.full((flat.numel(),), len(order), dtype=torch.long, device=flat.device)
        self.unsort[order] = torch.arange(len(order), device=flat.device)
        self.abl_flat = self.abl.reshape(self.g.n_senders, -1)  # [src, b·p·d]
        self._base_cache: tuple = (None, None)
        self._span_cache: tuple = (None, None)  # (senders then, per span (idx, D there))
        self._copies: dict = {}  # key/value rows → (senders then, their mask rows at the first query span, input)

    def _base(self, rows: Tensor) -> Tensor:
        """biases + Σ_u abl_u over each receiver's senders: [r, b·p, d]."""
        S, key = len(self.D), (tuple(rows.tolist()), len(self.D))
        if self._base_cache[0] != key:  # (a head's keys and values read it once per query span)
            em = self.g.edge_mask[rows, :S].to(self.abl.device, self.model.dtype)  # [r, S]
            base = self.bias + (em @ self.abl_flat[:S]).view(len(rows), self.b * self.p, self.d)
            self._base_cache = (key, base)
        return self._base_cache[1]

    def _by_span(self) -> list[tuple[Tensor, Tensor]]:
        """Per span s: its flat positions idx [n_s] (of b·p) and every stored D there as [k, S, n_s·d], made
        once per layer (D grows between layers only)."""
        if self._span_cache[0] != len(self.D):
            D = torch.stack(self.D).flatten(2, 3)  # [S, k, b·p, d]
            parts = [(idx, D[:, :, idx].permute(1, 0, 2, 3).flatten(2)) for idx in self.positions_of]
            self._span_cache = (len(self.D), parts)
        return self._span_cache[1]

    def _mix(self, rows: Tensor, query_span: int | None) -> Tensor:
        """Inputs [r, k, b, p, d] of these receivers; query_span t: the copy keys and values of the queries at
        span t are made from (None: each position's own span, t = s(j)). One product per span over the
        positions it holds: M[k, r, :, t, s] @ D at those positions."""
        S, r = len(self.D), len(rows)
        pieces = []
        for s, (idx, D) in enumerate(self._by_span()):
            t = s if query_span is None else query_span
            pieces.append(torch.bmm(self.M[:, rows, :S, t, s], D).view(self.k, r, len(idx), self.d))  # [k, r, n_s, d]
        pieces.append(pieces[0].new_zeros(self.k, r, 1, self.d))  # what a padding position reads
        mixed = torch.cat(pieces, 2)[:, :, self.unsort]  # [k, r, b·p, d] in position order
        x = self._base(rows)[:, None] + mixed.transpose(0, 1)
        return x.reshape(r, self.k, self.b, self.p, self.d)

    def _read(self, rows: Tensor, query_span: int | None = None) -> Tensor:
        """The inputs [r, k, b, p, d] of these receivers (`_mix`); for keys and values, the copy made for an
        earlier query span where these rows' mask entries at this one agree with its."""
        if self.clean:
            x = self.resid[None].expand(len(rows), -1, -1, -1, -1)  # [r, k, b, p, d]
            if self.track:
                x = x + 0  # a node of its own: its gradient is this read's
                x.retain_grad()
                for i, r in enumerate(rows.tolist()):
                    self.received.setdefault(r, []).append((query_span, x, i))
            return x
        if query_span is None:
            return self._mix(rows, None)
        key, S = tuple(rows.tolist()), len(self.D)
        M = self.M[:, rows, :S, query_span]  # [k, r, S, T+1]
        cached = self._copies.get(key)
        if cached is not None and cached[0] == S:
            return cached[2] if torch.equal(cached[1], M) else self._mix(rows, query_span)
        x = self._mix(rows, query_span)
        self._copies[key] = (S, M, x)
        return x

    def run(self) -> Tensor:
        """Logits [k, b, vocab] at the answer positions."""
        model, inputs = self.model, self.inputs
        positions = model.positions(inputs.attention_mask)
        x = model.embed(inputs.tokens, positions)
        abl0 = self.abl[0]
        out = x if self.input_alpha == 1.0 else abl0 + (x - abl0) * self.input_alpha
        if self.track:
            out = out.detach().requires_grad_(True)
        self.D.append((out - abl0).expand(self.k, -1, -1, -1))
        self.resid = out.expand(self.k, -1, -1, -1)
        for l, block in enumerate(model.blocks):
            self._attention(l, block, positions)
            self._mlp(l, block)
        rows = torch.tensor([self.g.logits_receiver])
        x = self._read(rows)[0]  # [k, b, p, d]
        at = inputs.answer_pos.to(x.device)
        x = x[:, torch.arange(self.b, device=x.device), at]  # [k, b, d]
        return model.unembed(x, wide=True)

    def _attention(self, l: int, block, positions: Tensor):
        g, cfg, attn = self.g, self.cfg, block.attn
        H, dh, k, b, p = cfg.n_heads, cfg.d_head, self.k, self.b, self.p
        heads = torch.arange(H)
        kv = heads // cfg.group_size

        def project(x: Tensor, kind: str) -> Tensor:  # x [H, k, b, p, d] (each head's input) → [k·b, H, p, dh]
            w, bias = {"q": (attn.w_q, attn.b_q), "k": (attn.w_k, attn.b_k), "v": (attn.w_v, attn.b_v)}[kind]
            xn = block.ln1(x)
            if cfg.qk_norm_width == "all" and kind != "v" and attn.q_norm is not None:
                full = xn @ w + (0 if bias is None else bias)  # every head's projection of each head's input
                full = attn.full_norm(kind, full).view(H, k, b, p, -1, dh)
                idx = heads if kind == "q" else kv
                y = full[heads, :, :, :, idx]  # [H, k, b, p, dh]
            else:
                W = (attn.W_Q if kind == "q" else attn.W_K if kind == "k" else attn.W_V)
                W = W if kind == "q" else W[kv]  # [H, d, dh]
                y = torch.einsum("hkbpd,hde->hkbpe", xn, W)
                if bias is not None:
                    y = y + bias.view(-1, dh)[heads if kind == "q" else kv][:, None, None, None]
            return y.permute(1, 2, 0, 3, 4).reshape(k * b, H, p, dh)

        q_rows = torch.tensor([g.qkv_receiver(l, "q", h) for h in range(H)])
        q = project(self._read(q_rows), "q")
        rope = model_rope(self.model, positions, l, k)
        allowed = self.model.allowed(self.inputs.attention_mask, l).repeat(k, 1, 1, 1)
        z = torch.zeros(k * b, H, p, dh, dtype=q.dtype, device=q.device)
        qspan = self.span.repeat(k, 1)  # [k·b, p]
        for t in range(self.T):
            at = qspan == t  # the queries at span t
            if not bool(at.any()):
                continue
            keys = [project(self._read(torch.tensor([g.qkv_receiver(l, kind, h) for h in range(H)]), t), kind)
                    for kind in ("k", "v")]
            zt, _ = attn.attend(q, keys[0], keys[1], rope, allowed, heads=heads)
            z = z + zt * at[:, None, :, None]
        outs = torch.einsum("nhpe,hed->hnpd", z, attn.W_O).reshape(H, k, b, p, self.d)
        if attn.post_norm is not None:
            total = outs.sum(0)
            norm = attn.post_norm
            outs = outs * torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + norm.eps) * (norm.offset + norm.w)
        senders = [g.head_sender(l, h) for h in range(H)]
        self.D += [outs[h] - self.abl[s] for h, s in enumerate(senders)]
        self._pending_attn_bias = self.model.block_bias(l, "attn")
        self._attn_out = outs.sum(0)  # [k, b, p, d]: what the layer's heads add to the stream

    def _mlp(self, l: int, block):
        g = self.g
        if self.cfg.parallel:  # the MLP reads what attention read: its layer's heads are not its senders
            x = self._read(torch.tensor([g.mlp_receiver(l)]))[0]
            self._add_bias(self._pending_attn_bias, self._attn_out)
        else:
            self._add_bias(self._pending_attn_bias, self._attn_out)
            x = self._read(torch.tensor([g.mlp_receiver(l)]))[0]
        out = block.mlp(block.ln2(x))  # [k, b, p, d]
        self.D.append(out - self.abl[g.mlp_sender(l)])
        self._add_bias(self.model.block_bias(l, "mlp"), out)

    def _add_bias(self, bias: Tensor | None, out: Tensor | None = None):
        """Add a block's constant to the biases and (the clean run) its output and constant to the stream."""
        if bias is not None:
            self.bias = self.bias + bias
        if self.clean:
            self.resid = self.resid + out + (0 if bias is None else bias)


def model_rope(model, positions: Tensor, layer: int, k: int):
    """(cos, sin) [k·b, 1, p, rotary] of a layer (ALiBi: its key positions), None without rotary positions."""
    rope = model.rope(positions, layer)
    return None if rope is None else tuple(t[:, None].repeat(k, 1, 1, 1) for t in rope)


def span_forward(model, inputs: Inputs, ablated: Tensor, spans: Tensor, masks: Tensor) -> Tensor:
    """Logits [k, batch, vocab] at the answer positions with each (edge, query span, key span) unit of masks
    [k, dst, src, T, T] kept (1) or ablated (0); spans [batch, pos] each position's span (−1: padding)."""
    with torch.no_grad():
        return _SpanWalk(model, inputs, ablated, spans, masks, masks.shape[-1]).run()


def span_attribution(model, inputs: Inputs, ablated: Tensor, spans: Tensor, T: int, objective,
                     alphas: tuple[float, ...] = (1.0,)) -> Tensor:
    """First-order effect of ablating each unit, −⟨D_u, g_v⟩ over the unit's positions: [dst, src, T, T], the
    mean over the passes with the input embedding interpolated at each alpha (EAP: alpha 1; EAP-IG: k/n), D from
    the clean run. objective: logits [batch, vocab] → scalar."""
    g = model.graph
    ones = torch.ones(1, g.n_receivers, g.n_senders, T, T, dtype=model.dtype, device=model.device)
    with torch.no_grad():
        clean = _SpanWalk(model, inputs, ablated, spans, ones, T)
        clean.run()
        D = torch.stack([d[0] for d in clean.D])  # [S, b, p, d]
    flat = D.flatten(1, 2)  # [S, b·p, d]
    at_span = [(s, idx, flat[:, idx].flatten(1)) for s, idx in enumerate(clean.positions_of) if len(idx)]
    scores = torch.zeros(g.n_receivers, g.n_senders, T, T, dtype=torch.float32, device=D.device)
    for alpha in alphas:
        walk = _SpanWalk(model, inputs, ablated, spans, ones, T, input_alpha=alpha, track=True)
        with torch.enable_grad():
            objective(walk.run()[0]).backward()
        for v, reads in walk.received.items():
            n = int(g.edge_mask[v].sum())
            for query_span, x, i in reads:
                grad = x.grad[i, 0].flatten(0, 1)  # [b·p, d]
                for s, idx, Ds in at_span:  # −⟨D_u at span s, g_v there⟩
                    part = -(Ds[:n] @ grad[idx].flatten()).float()  # [n]
                    scores[v, :n, s if query_span is None else query_span, s] += part
    return scores / len(alphas)


def span_units(model, inputs: Inputs, spans: Tensor, T: int) -> Tensor:
    """Which (edge, query span t, key span s) units exist in these prompts: bool [dst, src, T, T]. A key or
    value receiver's unit where some query at span t may attend to a key at span s (in any layer); the logits'
    at the answer positions' spans; every other receiver's at each span some real position has, t = s."""
    g = model.graph
    real = spans >= 0
    onehot = torch.nn.functional.one_hot(torch.where(real, spans, T), T + 1)[..., :T].float()  # [b, p, T]
    allowed = torch.zeros(inputs.tokens.shape[0], inputs.tokens.shape[1], inputs.tokens.shape[1], dtype=torch.bool)
    for l in range(model.cfg.n_layers):
        allowed |= model.allowed(inputs.attention_mask, l)[:, 0].cpu()
    allowed &= real[:, :, None] & real[:, None, :]
    pairs = torch.einsum("bit,bij,bjs->ts", onehot, allowed.float(), onehot) > 0  # query span t reads key span s
    present = onehot.sum((0, 1)) > 0
    answer = torch.zeros(T, dtype=torch.bool)
    answer[spans[torch.arange(len(spans)), inputs.answer_pos.cpu()]] = True
    units = torch.zeros(g.n_receivers, T, T, dtype=torch.bool)
    keys_values = {g.qkv_receiver(l, kind, h) for l in range(g.n_layers) for kind in "kv" for h in range(g.n_heads)}
    diagonal = torch.diag(present)
    for v in range(g.n_receivers):
        units[v] = pairs if v in keys_values else torch.diag(answer) if v == g.logits_receiver else diagonal
    return g.edge_mask[:, :, None, None] & units[:, None]
