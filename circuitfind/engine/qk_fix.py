"""AtP*'s QK fix (Kramár et al. 2024, "AtP*: An efficient and scalable method for localizing LLM behaviour
to components", §3.1.1): a query or key edge acts through the attention softmax, where a gradient is a poor
guide (a saturated pattern has a near-zero gradient however large the change). Its effect on the head's
mixed values z is computed exactly instead; only what follows z is linearised (the gradient ∂objective/∂z).

    query edge u → a{l}.h{h}<q>   the patched query row, q' = W_Q·norm(x − D_u), attended exactly:
                                  Δz_q = attend(q', k, v)_q − z_q              (every query position at once)
    key edge   u → a{l}.h{h}<k>   each key position t patched alone, all others clean (the paper's
                                  per-key-position sum): the score of key t moves by Δ_qt, so
                                  z'_q − z_q = w_qt (v_t − z_q),  w_qt = A_qt(e^Δ_qt − 1) / (1 + A_qt(e^Δ_qt − 1))
    effect = Σ_{example, q} ⟨∂objective/∂z_q, Δz_q⟩   (summed over key positions for keys)

On a model whose only non-linearity is attention (no norms, linear MLP) with a linear metric, the query
effect is exact patching, and so is the key effect when the prompts differ at one position
(`tests/test_atp_star.py`). The clean run is the model's plain forward (`CircuitModel.forward` and its hook
points), which is how the per-head q, k, v, pattern and z are read without a second attention code path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuitfind.models.layers import apply_rotary
from circuitfind.types import Inputs

CHUNK_BYTES = 1 << 28  # senders patched at once: their [senders, batch, head, pos, pos] scores stay under this


def qk_fixed(model, inputs: Inputs, D: Tensor, objective, *, drop_layer: int | None = None) -> tuple[Tensor, Tensor]:
    """The QK-fixed effects [dst, src] (objective with the edge ablated − clean, estimated) of every query and key
    edge, zero on the other rows, and the receivers [r] it filled. D [src, batch, pos, d_model]: the clean run's
    sender outputs minus the ablated ones. drop_layer: GradDrop's backward, layer drop_layer's outputs constant."""
    g, cfg = model.graph, model.cfg
    run = attention_run(model, inputs, objective, drop_layer)
    raw = torch.zeros(g.n_receivers, g.n_senders, dtype=torch.float64, device=model.device)
    rows, positions = [], model.positions(inputs.attention_mask)
    for l in range(cfg.n_layers):
        x, q, k, v, pattern, z, gz = run[l]
        rope = model.rope(positions, l)
        attention = (None if rope is None else tuple(t[:, None] for t in rope),  # over heads, as the forward
                     model.allowed(inputs.attention_mask, l))
        n = g.senders_before(l)  # the heads' senders: every node before the layer (edge_mask keeps the rest 0)
        size = inputs.batch * cfg.n_heads * x.shape[1] * max(x.shape[1], cfg.d_model) * 8
        step = max(1, CHUNK_BYTES // size)
        for first in range(0, n, step):
            senders = slice(first, min(n, first + step))
            xn = model.blocks[l].ln1(x[None] - D[senders])  # [c, batch, pos, d]: each sender's edge ablated
            eq, ek = _effects(model, l, attention, xn, q, k, v, pattern, z, gz)  # [c, head] each
            for h in range(cfg.n_heads):
                raw[g.qkv_receiver(l, "q", h), senders] = eq[:, h]
                raw[g.qkv_receiver(l, "k", h), senders] = ek[:, h]
        rows += [g.qkv_receiver(l, t, h) for t in "qk" for h in range(cfg.n_heads)]
    rows = torch.tensor(rows, dtype=torch.long)
    return raw.to(torch.float32) * g.edge_mask.to(raw.device), rows


def attention_run(model, inputs: Inputs, objective, drop_layer: int | None) -> list[tuple[Tensor, ...]]:
    """Per layer (resid_pre [b, p, d], q [b, h, p, dh], k, v [b, kv, p, dh] before rotation and per-head norms,
    pattern [b, h, p, p], z [b, h, p, dh], ∂objective/∂z [b, h, p, dh]) of the clean run."""
    cache: dict[str, Tensor] = {}

    def keep(x, name):
        cache[name] = x
        if name.endswith("hook_z"):
            x.retain_grad()

    def constant(x, name):  # GradDrop: nothing flows back through this layer's outputs
        return x.detach()

    def leaf(x, name):  # the weights are frozen: a graph needs one input that asks for gradients
        return x.detach().requires_grad_(True)

    names = [(f"blocks.{l}.{n}", keep) for l in range(model.cfg.n_layers)
             for n in ("hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_pattern",
                       "attn.hook_z")]
    names.append(("hook_embed", leaf))
    if drop_layer is not None:
        names += [(f"blocks.{drop_layer}.hook_attn_out", constant), (f"blocks.{drop_layer}.hook_mlp_out", constant)]
    with torch.enable_grad(), model.hooks(names):
        objective(model(inputs.tokens, inputs.attention_mask, at=inputs.answer_pos)).backward()
    out = []
    for l in range(model.cfg.n_layers):
        a = f"blocks.{l}.attn."
        z = cache[a + "hook_z"]
        gz = torch.zeros_like(z) if z.grad is None else z.grad
        out.append((cache[f"blocks.{l}.hook_resid_pre"].detach(),
                    *(cache[a + f"hook_{t}"].detach().transpose(1, 2) for t in "qkv"),
                    cache[a + "hook_pattern"].detach(), z.detach().transpose(1, 2), gz.transpose(1, 2)))
    return out


def _effects(model, l: int, attention: tuple, xn: Tensor, q: Tensor, k: Tensor, v: Tensor, pattern: Tensor, z: Tensor,
             gz: Tensor) -> tuple[Tensor, Tensor]:
    """The query and key effects [c, head] of c senders whose edges give the heads' inputs xn [c, b, p, d];
    attention: the layer's (rope, allowed) as the forward passes them to `Attention.attend`."""
    cfg, attn = model.cfg, model.blocks[l].attn
    c, b, p, _ = xn.shape
    rope, allowed = attention
    qp = attn.full_norm("q", xn @ attn.w_q + (0 if attn.b_q is None else attn.b_q))
    kp = attn.full_norm("k", xn @ attn.w_k + (0 if attn.b_k is None else attn.b_k))
    qp = qp.view(c, b, p, -1, cfg.d_head).transpose(2, 3)  # [c, b, h, p, dh]
    kp = kp.view(c, b, p, -1, cfg.d_head).transpose(2, 3)  # [c, b, kv, p, dh]
    # queries: the whole patched row through the model's own attention (norms, rotation, caps, sinks)
    z_q, _ = attn.attend(qp, k, v, rope, allowed, want_pattern=True)  # [c, b, h, p, dh]
    wide = torch.promote_types(z.dtype, torch.float32)
    eq = ((z_q - z).to(wide) * gz.to(wide)).sum((1, 3, 4))
    # keys: Δ of each (query, key) score with that key alone patched, then the closed form of the softmax
    s0 = _scores(model, l, q, k, rope).to(wide)  # [b, h, p, p]
    s1 = _scores(model, l, q.expand(c, *q.shape), kp, rope).to(wide)  # [c, b, h, p, p]
    e = torch.expm1((s1 - s0).clamp(max=60.0))
    A = pattern.to(wide)
    w = A * e / (1 + A * e)
    vh = _per_head(v, cfg).to(wide)  # [b, h, p, dh]
    G = gz.to(wide) @ vh.transpose(-1, -2) - (gz.to(wide) * z.to(wide)).sum(-1, keepdim=True)  # [b, h, q, t]
    ek = (w * G).sum((1, 3, 4))
    return eq, ek


def _per_head(t: Tensor, cfg) -> Tensor:
    """kv-head tensors [..., kv, p, dh] → one per query head [..., h, p, dh] (grouped-query attention)."""
    return t if t.shape[-3] == cfg.n_heads else t.repeat_interleave(cfg.n_heads // t.shape[-3], dim=-3)


def _scores(model, l: int, q: Tensor, k: Tensor, rope) -> Tensor:
    """Attention scores [..., h, q_pos, k_pos] before masks and position biases (an ALiBi bias, like a mask, is
    the same with or without a patched key, so it cancels from Δ): per-head norms, rotation, scale, soft cap,
    as `Attention.attend` computes them."""
    cfg, attn = model.cfg, model.blocks[l].attn
    if attn.q_norm is not None and cfg.qk_norm_width == "head":
        q, k = attn.q_norm(q, None), attn.k_norm(k, None)
    if rope is not None and cfg.positional != "alibi":
        q, k = apply_rotary(q, rope), apply_rotary(k, rope)
    s = (q @ _per_head(k, cfg).transpose(-1, -2)) * cfg.scale
    if cfg.attn_softcap is not None:
        s = torch.tanh(s / cfg.attn_softcap) * cfg.attn_softcap
    return s
