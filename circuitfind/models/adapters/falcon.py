"""Falcon: rotary or ALiBi (falcon-rw: its term rounded to bfloat16 and scaled by 1/√d_head, as
transformers computes it), LayerNorm, a plain MLP, three layouts of the fused q/k/v weights: per
head [q k v]; multi-query [q… | k | v]; the new decoder architecture's (40B, 180B) kv groups
[q… k v] per group. Attention and MLP run in parallel (parallel_attn, and always in the new
architecture) on one norm, or on two (num_ln_in_parallel_attn = 2)."""

from __future__ import annotations

import math

from circuitfind.errors import UnsupportedModelError
from circuitfind.models.adapters.common import alibi_slopes, linear_t, rotary_of
from circuitfind.models.canonical import CanonicalConfig


def convert(hf):
    c = hf.config
    d, h = c.hidden_size, c.num_attention_heads
    dh, new = d // h, bool(c.new_decoder_architecture)
    kv = c.num_kv_heads if (new or not c.multi_query) else 1
    parallel = new or bool(c.parallel_attn)
    two_norms = new and (c.num_ln_in_parallel_attn or 2) == 2
    if new and not c.parallel_attn and not two_norms:
        raise UnsupportedModelError("falcon config has new_decoder_architecture=True, parallel_attn=False and one "
                                    "layer norm, which transformers itself cannot run; circuitfind does not model it")
    alibi = bool(c.alibi)
    rotary = None if alibi else rotary_of(hf.transformer.rotary_emb, c)
    cfg = CanonicalConfig(
        family="falcon", n_layers=c.num_hidden_layers, d_model=d, n_heads=h, n_kv_heads=kv, d_head=dh,
        d_mlp=c.ffn_hidden_size, d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings, act_fn=c.activation,
        norm="layernorm", norm_eps=c.layer_norm_epsilon, positional="alibi" if alibi else "rotary",
        rotary_dim=0 if alibi else 2 * rotary[0].numel(), parallel=parallel,
        alibi_dtype="bfloat16" if alibi else None, alibi_scale=1 / math.sqrt(dh) if alibi else 1.0)
    t = hf.transformer
    slopes = alibi_slopes(h).bfloat16().float()  # (rounded before use, as transformers does)
    state = {"W_E": t.word_embeddings.weight, "ln_final.w": t.ln_f.weight, "ln_final.b": t.ln_f.bias,
             "W_U": hf.lm_head.weight.t()}
    bias = bool(c.bias)
    for l, blk in enumerate(t.h):
        p, a = f"blocks.{l}.", blk.self_attention
        w = linear_t(a.query_key_value)
        b = a.query_key_value.bias
        parts = _split(w, d, h, kv, dh, new, c.multi_query)
        state |= {p + f"attn.w_{n}": x for n, x in zip("qkv", parts)}
        if bias:
            state |= {p + f"attn.b_{n}": x[0] for n, x in zip("qkv", _split(b[None], 1, h, kv, dh, new, c.multi_query))}
        if two_norms:
            ln1, ln2 = blk.ln_attn, blk.ln_mlp
        else:
            ln1 = blk.input_layernorm
            ln2 = ln1 if parallel else blk.post_attention_layernorm
        state |= {p + "ln1.w": ln1.weight, p + "ln1.b": ln1.bias, p + "ln2.w": ln2.weight, p + "ln2.b": ln2.bias,
                  p + "attn.w_o": linear_t(a.dense), p + "mlp.w_in": linear_t(blk.mlp.dense_h_to_4h),
                  p + "mlp.w_out": linear_t(blk.mlp.dense_4h_to_h)}
        if bias:
            state |= {p + "attn.b_o": a.dense.bias, p + "mlp.b_in": blk.mlp.dense_h_to_4h.bias,
                      p + "mlp.b_out": blk.mlp.dense_4h_to_h.bias}
        if alibi:
            state[p + "attn.alibi"] = slopes
    flags = dict(qkv_bias=bias, out_bias=bias, mlp_bias=bias, unembed_bias=False)
    return cfg, flags, state, rotary


def _split(w, rows, h, kv, dh, new, multi_query):
    """The fused q/k/v weight [rows, out] → w_q [rows, h·dh], w_k and w_v [rows, kv·dh] (module docstring)."""
    if new:  # per kv group: its queries, then its key and value
        g = w.view(rows, kv, h // kv + 2, dh)
        return (g[:, :, :-2].reshape(rows, h * dh).contiguous(), g[:, :, -2].reshape(rows, kv * dh).contiguous(),
                g[:, :, -1].reshape(rows, kv * dh).contiguous())
    if multi_query:
        return tuple(x.contiguous() for x in w.split([h * dh, dh, dh], dim=1))
    per = w.view(rows, h, 3, dh)
    return tuple(per[:, :, i].reshape(rows, h * dh).contiguous() for i in range(3))
