"""Command-R (Cohere) and Command R7B (Cohere2): attention and SwiGLU MLP in parallel on one bias-free
LayerNorm, rotary over interleaved pairs, optional LayerNorm of each head's queries and keys (weights per head), logits
multiplied by logit_scale (folded into W_U). Cohere2 alternates sliding-window layers with global
layers that have no rotary at all. Rotary is made half-split (the canonical form) by
permuting each head's query and key features, their norm weights alike, which leaves every q·k
unchanged (as for GPT-J): interleaved pair (2i, 2i + 1) moves to (i, i + rotary_dim/2)."""

from __future__ import annotations

import torch

from circuitfind.models.adapters.common import layer_types, linear_t, rotary_of
from circuitfind.models.canonical import CanonicalConfig


def convert(hf):
    c, m = hf.config, hf.model
    d, h = c.hidden_size, c.num_attention_heads
    kv = c.num_key_value_heads or h
    dh = getattr(c, "head_dim", None) or d // h
    inv_freq, scaling = rotary_of(m.rotary_emb, c)
    rd = 2 * inv_freq.numel()
    qk_norm = bool(getattr(c, "use_qk_norm", False))
    sliding = layer_types(c) if c.model_type == "cohere2" else ()
    nope = tuple(l for l in range(c.num_hidden_layers) if l not in sliding) if c.model_type == "cohere2" else ()
    cfg = CanonicalConfig(
        family=c.model_type, n_layers=c.num_hidden_layers, d_model=d, n_heads=h, n_kv_heads=kv, d_head=dh,
        d_mlp=c.intermediate_size, d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings, act_fn=c.hidden_act,
        gated_mlp=True, norm="layernorm", norm_eps=c.layer_norm_eps, positional="rotary", rotary_dim=rd,
        parallel=True, qk_norm=qk_norm, qk_norm_kind="layernorm", qk_norm_per_head=True, nope_layers=nope,
        sliding_window=c.sliding_window if sliding else None, sliding_layers=sliding)
    half = torch.cat([torch.arange(0, rd, 2), torch.arange(1, rd, 2), torch.arange(rd, dh)])  # new → old feature

    def half_split(w, n):  # [d, n·dh] with interleaved rotary pairs → the same with half-split ones
        return w.view(-1, n, dh)[:, :, half].reshape(-1, n * dh)

    zeros = torch.zeros(d)
    state = {"W_E": m.embed_tokens.weight, "ln_final.w": m.norm.weight, "ln_final.b": zeros,
             "W_U": hf.lm_head.weight.t() * c.logit_scale}
    bias = bool(c.attention_bias)
    for l, blk in enumerate(m.layers):
        p, a = f"blocks.{l}.", blk.self_attn
        ln = blk.input_layernorm.weight
        state |= {p + "ln1.w": ln, p + "ln1.b": zeros, p + "ln2.w": ln, p + "ln2.b": zeros,  # one norm for both
                  p + "attn.w_q": half_split(linear_t(a.q_proj), h), p + "attn.w_k": half_split(linear_t(a.k_proj), kv),
                  p + "attn.w_v": linear_t(a.v_proj), p + "attn.w_o": linear_t(a.o_proj),
                  p + "mlp.w_gate": linear_t(blk.mlp.gate_proj), p + "mlp.w_in": linear_t(blk.mlp.up_proj),
                  p + "mlp.w_out": linear_t(blk.mlp.down_proj)}
        if bias:
            state |= {p + "attn.b_q": half_split(a.q_proj.bias[None], h)[0],
                      p + "attn.b_k": half_split(a.k_proj.bias[None], kv)[0], p + "attn.b_v": a.v_proj.bias,
                      p + "attn.b_o": a.o_proj.bias}
        if qk_norm:  # weights [head, d_head], features permuted as the projections'
            state |= {p + "attn.q_norm.w": a.q_norm.weight[:, half], p + "attn.k_norm.w": a.k_norm.weight[:, half]}
    flags = dict(qkv_bias=bias, out_bias=bias, mlp_bias=False, unembed_bias=False)
    return cfg, flags, state, (inv_freq, scaling)
