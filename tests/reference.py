"""A slow, independent reference for edge patching: explicit loops over receivers and senders.

It shares only the model's weights and per-layer primitives (norms, attention core, MLP) with the
engine — no stores, no mixing products, no shortcuts — so agreement means the engine's bookkeeping
(layouts, bases, skipped nodes, prefixes) is right.
"""

from __future__ import annotations

import torch


def reference_masked_logits(model, tokens, attention_mask, answer_pos, ablated, mask):
    """Logits [batch, vocab] at answer_pos; ablated [src, batch|1, pos|1, d]; mask [dst, src]."""
    g, cfg = model.graph, model.cfg
    b, p = tokens.shape
    positions = model.positions(attention_mask)
    abl = ablated.expand(g.n_senders, b, p, cfg.d_model)
    outs = [model.embed(tokens, positions)]  # sender outputs of this run, in sender order
    bias = torch.zeros(cfg.d_model)  # constants written so far

    def receiver_input(dst):
        x = bias.clone().expand(b, p, cfg.d_model).clone()
        for src in range(len(outs)):
            if g.edge_mask[dst, src]:
                m = mask[dst, src]
                x = x + m * outs[src] + (1 - m) * abl[src]
        return x

    for l, block in enumerate(model.blocks):
        attn = block.attn
        allowed = model.allowed(attention_mask, l)
        rope = model.rope(positions, l)
        rope = None if rope is None else tuple(t[:, None] for t in rope)
        raw = []
        for h in range(cfg.n_heads):
            qkv = [head_part(model, block, t, h, receiver_input(g.qkv_receiver(l, t, h))) for t in "qkv"]
            z, _ = attn.attend(*qkv, rope, allowed, heads=torch.tensor([h]))
            raw.append(z[:, 0] @ attn.W_O[h])
        if attn.post_norm is not None:
            total = torch.stack(raw).sum(0)
            norm = attn.post_norm
            scale = torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + norm.eps) * (norm.offset + norm.w)
            raw = [r * scale for r in raw]
        mlp_in = receiver_input(g.mlp_receiver(l)) if cfg.parallel else None
        outs += raw
        if attn.b_o is not None and attn.post_norm is None:
            bias = bias + attn.b_o
        if g.n_experts:  # the expert-level graph (sequential blocks only)
            outs += expert_outputs(model, l, receiver_input)
            continue
        if not cfg.parallel:
            mlp_in = receiver_input(g.mlp_receiver(l))
        out = block.mlp(block.ln2(mlp_in))
        outs.append(out)
        if block.mlp.b_out is not None and block.mlp.post_norm is None:
            bias = bias + block.mlp.b_out
    x = receiver_input(g.logits_receiver)
    return model.unembed(x)[torch.arange(b), answer_pos]


def head_part(model, block, kind: str, h: int, x):
    """Head h's query, key or value ("q" | "k" | "v") from its receiver's input x [b, p, d]: [b, 1, p, d_head]
    (q/k norms over every head's projection where the family has them)."""
    cfg, attn = model.cfg, block.attn
    kv = h // cfg.group_size
    W, bvec, idx = {"q": (attn.W_Q, attn.b_q, h), "k": (attn.W_K, attn.b_k, kv), "v": (attn.W_V, attn.b_v, kv)}[kind]
    xn = block.ln1(x)
    if cfg.qk_norm_width == "all" and kind != "v":  # normed over every head's projection of this input
        full = xn @ (attn.w_q if kind == "q" else attn.w_k)
        full = full if bvec is None else full + bvec
        return attn.full_norm(kind, full).view(*x.shape[:2], -1, cfg.d_head)[:, :, idx][:, None]
    y = xn @ W[idx]
    return (y if bvec is None else y + bvec.view(-1, cfg.d_head)[idx])[:, None]


def expert_outputs(model, l, read):
    """Layer l's expert outputs (then the shared expert's) from their receivers' inputs `read(dst)`, densely:
    every expert on every token, gated by its weight in a softmax and top-k of its own router input."""
    g, block, cfg = model.graph, model.blocks[l], model.cfg
    moe = block.mlp
    outs = []
    for j in range(g.n_experts):
        x = block.ln2(read(g.expert_receiver(l, "in", j)))
        logits = block.ln2(read(g.expert_receiver(l, "router", j))) @ moe.w_router
        if cfg.moe_bias:
            logits = logits + moe.b_router
        probs = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)  # (as the model)
        top = probs.topk(cfg.top_k, dim=-1)
        weight = probs[..., j] / (top.values.sum(-1) if cfg.norm_topk else 1)
        gate = torch.where((top.indices == j).any(-1), weight, torch.zeros_like(weight)).to(x.dtype)
        pre, up = x @ moe.w_gate[j], x @ moe.w_in[j]
        if cfg.moe_bias:
            pre, up = pre + moe.b_up[j, :cfg.d_mlp], up + moe.b_up[j, cfg.d_mlp:]
        if cfg.swiglu_limit is None:
            hidden = moe.act(pre) * up
        else:  # gpt-oss's clamped SwiGLU
            pre, up = torch.minimum(pre, torch.tensor(cfg.swiglu_limit)), up.clamp(-cfg.swiglu_limit, cfg.swiglu_limit)
            hidden = pre * torch.sigmoid(cfg.swiglu_alpha * pre) * (1 + up)
        out = hidden @ moe.w_out[j] + (moe.b_expert_out[j] if cfg.moe_bias else 0)
        outs.append(gate[..., None] * out)
    if g.shared_expert:
        x = block.ln2(read(g.mlp_receivers(l)[-1]))
        hidden = moe.act(x @ moe.shared_gate) * (x @ moe.shared_in)
        outs.append(torch.sigmoid(x @ moe.shared_router) * (hidden @ moe.shared_out))
    return outs


def reference_run(model, tokens, attention_mask, answer_pos, ablated, mask=None, replace=None):
    """One forward by explicit loops, like `reference_masked_logits`, keeping every receiver's input for autograd.

    mask [dst, src] (default: every edge 1): in_v = biases + Σ_u m·out_u + (1 − m)·abl_u, out_u *this* run's
    output of u. replace {src: [b, p, d]}: those senders' outputs are the constants given (nothing flows back
    through them: the EAP-IG library's interpolation hook). The input embedding is a leaf that requires grad.
    Returns (logits [batch, vocab], receiver inputs {dst: [b, p, d]} with .grad after a backward, outputs [src])."""
    g, cfg = model.graph, model.cfg
    replace = replace or {}
    b, p = tokens.shape
    mask = torch.ones(g.n_receivers, g.n_senders, dtype=model.dtype) if mask is None else mask
    positions = model.positions(attention_mask)
    abl = ablated.expand(g.n_senders, b, p, cfg.d_model)
    first = replace[0] if 0 in replace else model.embed(tokens, positions)
    outs = [first.detach().clone().requires_grad_(True)]
    bias = torch.zeros(cfg.d_model, dtype=model.dtype)
    inputs = {}

    def receiver_input(dst):
        x = bias.clone().expand(b, p, cfg.d_model).clone()
        for src in range(len(outs)):
            if g.edge_mask[dst, src]:
                x = x + mask[dst, src] * outs[src] + (1 - mask[dst, src]) * abl[src]
        if x.requires_grad:
            x.retain_grad()
        inputs[dst] = x
        return x

    for l, block in enumerate(model.blocks):
        attn = block.attn
        allowed = model.allowed(attention_mask, l)
        rope = model.rope(positions, l)
        rope = None if rope is None else (rope[0][:, None], rope[1][:, None])
        senders = [g.head_sender(l, h) for h in range(cfg.n_heads)]
        mlp_in = receiver_input(g.mlp_receiver(l)) if cfg.parallel else None
        if all(s in replace for s in senders):  # the whole attention output a constant: nothing reads q/k/v
            raw = [replace[s] for s in senders]
        else:
            raw = []
            for h in range(cfg.n_heads):
                kv = h // cfg.group_size
                qkv = []
                for t, W, bvec, idx in (("q", attn.W_Q, attn.b_q, h), ("k", attn.W_K, attn.b_k, kv),
                                        ("v", attn.W_V, attn.b_v, kv)):
                    x = block.ln1(receiver_input(g.qkv_receiver(l, t, h))) @ W[idx]
                    if bvec is not None:
                        x = x + bvec.view(-1, cfg.d_head)[idx]
                    qkv.append(x[:, None])
                z, _ = attn.attend(*qkv, rope, allowed, heads=torch.tensor([h]))
                raw.append(z[:, 0] @ attn.W_O[h])
            if attn.post_norm is not None:
                total = torch.stack(raw).sum(0)
                scale = torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + attn.post_norm.eps) * (1 + attn.post_norm.w)
                raw = [r * scale for r in raw]
        outs += raw
        if attn.b_o is not None and attn.post_norm is None:
            bias = bias + attn.b_o
        if g.n_experts:  # the expert-level graph (sequential blocks only)
            parts = list(g.mlp_senders(l))
            outs += [replace[s] for s in parts] if all(s in replace for s in parts) \
                else expert_outputs(model, l, receiver_input)
            continue
        if not cfg.parallel:
            mlp_in = receiver_input(g.mlp_receiver(l))
        s = g.mlp_sender(l)
        outs.append(replace[s] if s in replace else block.mlp(block.ln2(mlp_in)))
        if block.mlp.b_out is not None and block.mlp.post_norm is None:
            bias = bias + block.mlp.b_out
    x = receiver_input(g.logits_receiver)
    return model.unembed(x)[torch.arange(b), answer_pos], inputs, outs


def reference_scores(model, inputs, ablated, objective, D, **run):
    """One pass's edge scores ⟨g_v, −D_u⟩ [dst, src] (D [src, b, p, d]: the clean run's out − abl), edge by
    edge from the receiver gradients of `reference_run(..., **run)`."""
    g = model.graph
    _, received, _ = reference_backward(model, inputs, ablated, objective, **run)
    scores = torch.zeros(g.n_receivers, g.n_senders, dtype=torch.float64)
    for dst, src in g.edge_mask.nonzero().tolist():
        grad = received[dst].grad if dst in received else None  # a replaced layer's q/k/v: never read
        if grad is not None:
            scores[dst, src] = -(grad * D[src]).sum()
    return scores


def reference_backward(model, inputs, ablated, objective, **run):
    """`reference_run` on inputs (an `Inputs`), then objective(logits).backward(): its (logits, inputs, outputs)."""
    logits, received, outs = reference_run(model, inputs.tokens, inputs.attention_mask, inputs.answer_pos, ablated,
                                           **run)
    objective(logits).backward()
    return logits, received, outs


def clean_outputs(model, inputs, ablated):
    """Every sender's output in the clean run [src, b, p, d] and D = clean − abl."""
    _, _, outs = reference_run(model, inputs.tokens, inputs.attention_mask, inputs.answer_pos, ablated)
    clean = torch.stack([o.detach() for o in outs])
    return clean, clean - ablated.expand_as(clean)


def reference_span_logits(model, inputs, ablated, spans, mask):
    """Logits [batch, vocab] with position-aware mask [dst, src, T, T] (query span, key span), by loops over
    positions: receiver v's input at position j of example i reads sender u with weight mask[v, u, t, s(j)],
    t = s(j) except for keys and values, which are made once per query span t and read by those queries alone.
    spans [batch, pos] (−1: padding, which reads no sender). Shares only the model's primitives with the engine."""
    g, cfg = model.graph, model.cfg
    tokens, attention_mask, answer_pos = inputs.tokens, inputs.attention_mask, inputs.answer_pos
    b, p = tokens.shape
    positions = model.positions(attention_mask)
    abl = ablated.expand(g.n_senders, b, p, cfg.d_model)
    outs = [model.embed(tokens, positions)]
    bias = torch.zeros(cfg.d_model, dtype=model.dtype)
    T = mask.shape[-1]

    def receiver_input(dst, query_span=None):
        x = bias.clone().expand(b, p, cfg.d_model).clone()
        for src in range(len(outs)):
            if not g.edge_mask[dst, src]:
                continue
            for i in range(b):
                for j in range(p):
                    s = int(spans[i, j])
                    w = 0.0 if s < 0 else float(mask[dst, src, s if query_span is None else query_span, s])
                    x[i, j] = x[i, j] + w * outs[src][i, j] + (1 - w) * abl[src][i, j]
        return x

    for l, block in enumerate(model.blocks):
        attn = block.attn
        allowed = model.allowed(attention_mask, l)
        rope = model.rope(positions, l)
        rope = None if rope is None else tuple(t[:, None] for t in rope)
        mlp_in = receiver_input(g.mlp_receiver(l)) if cfg.parallel else None
        raw = []
        for h in range(cfg.n_heads):
            q = head_part(model, block, "q", h, receiver_input(g.qkv_receiver(l, "q", h)))
            z = torch.zeros(b, p, cfg.d_head, dtype=model.dtype)
            for t in range(T):
                k = head_part(model, block, "k", h, receiver_input(g.qkv_receiver(l, "k", h), t))
                v = head_part(model, block, "v", h, receiver_input(g.qkv_receiver(l, "v", h), t))
                zt, _ = attn.attend(q, k, v, rope, allowed, heads=torch.tensor([h]))
                for i in range(b):
                    for j in range(p):
                        if int(spans[i, j]) == t:
                            z[i, j] = zt[i, 0, j]
            raw.append(z @ attn.W_O[h])
        if attn.post_norm is not None:
            total = torch.stack(raw).sum(0)
            norm = attn.post_norm
            scale = torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + norm.eps) * (norm.offset + norm.w)
            raw = [r * scale for r in raw]
        outs += raw
        if attn.b_o is not None and attn.post_norm is None:
            bias = bias + attn.b_o
        if not cfg.parallel:
            mlp_in = receiver_input(g.mlp_receiver(l))
        outs.append(block.mlp(block.ln2(mlp_in)))
        if block.mlp.b_out is not None and block.mlp.post_norm is None:
            bias = bias + block.mlp.b_out
    x = receiver_input(g.logits_receiver)
    return model.unembed(x)[torch.arange(b), answer_pos]
