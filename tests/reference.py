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
            kv = h // cfg.group_size
            qkv = []
            for t, W, bvec, idx in (("q", attn.W_Q, attn.b_q, h), ("k", attn.W_K, attn.b_k, kv), ("v", attn.W_V, attn.b_v, kv)):
                xn = block.ln1(receiver_input(g.qkv_receiver(l, t, h)))
                if cfg.qk_norm_width == "all" and t != "v":  # normed over every head's projection of this input
                    full = xn @ (attn.w_q if t == "q" else attn.w_k)
                    full = full if bvec is None else full + bvec
                    x = attn.full_norm(t, full).view(b, p, -1, cfg.d_head)[:, :, idx]
                else:
                    x = xn @ W[idx]
                    if bvec is not None:
                        x = x + bvec.view(-1, cfg.d_head)[idx]
                qkv.append(x[:, None])  # [b, 1, p, d_head]
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
        if not cfg.parallel:
            mlp_in = receiver_input(g.mlp_receiver(l))
        else:
            pass
        out = block.mlp(block.ln2(mlp_in))
        outs.append(out)
        if block.mlp.b_out is not None and block.mlp.post_norm is None:
            bias = bias + block.mlp.b_out
    x = receiver_input(g.logits_receiver)
    return model.unembed(x)[torch.arange(b), answer_pos]
