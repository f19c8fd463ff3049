"""BLOOM: ALiBi (a per-head slope times the key's position added to each score: a position term,
not a sender), a LayerNorm on the embeddings (part of the `input` sender), fused per-head [q|k|v]
weights, tanh-GELU MLP, LayerNorm throughout."""

from __future__ import annotations

from circuitfind.models.adapters.common import alibi_slopes, linear_t, refuse
from circuitfind.models.canonical import CanonicalConfig


def convert(hf):
    c = hf.config
    refuse(c, "apply_residual_connection_post_layernorm", lambda v: v is False,
           "residual stream taken after the layer norm")
    refuse(c, "pretraining_tp", lambda v: v == 1 or not c.slow_but_exact, "tensor-parallel slicing of the products")
    d, h = c.hidden_size, c.n_head
    dh = d // h
    cfg = CanonicalConfig(
        family="bloom", n_layers=c.n_layer, d_model=d, n_heads=h, n_kv_heads=h, d_head=dh, d_mlp=4 * d,
        d_vocab=c.vocab_size, n_ctx=2048, act_fn="gelu_new", norm="layernorm", norm_eps=c.layer_norm_epsilon,
        positional="alibi", embed_norm=True)
    t = hf.transformer
    slopes = alibi_slopes(h)
    state = {"W_E": t.word_embeddings.weight, "ln_embed.w": t.word_embeddings_layernorm.weight,
             "ln_embed.b": t.word_embeddings_layernorm.bias, "ln_final.w": t.ln_f.weight, "ln_final.b": t.ln_f.bias,
             "W_U": hf.lm_head.weight.t()}
    for l, blk in enumerate(t.h):
        p, a = f"blocks.{l}.", blk.self_attention
        w = linear_t(a.query_key_value).view(d, h, 3, dh)  # per head [q k v]
        b = a.query_key_value.bias.view(h, 3, dh)
        for i, n in enumerate("qkv"):
            state |= {p + f"attn.w_{n}": w[:, :, i].reshape(d, d), p + f"attn.b_{n}": b[:, i].reshape(d)}
        state |= {p + "ln1.w": blk.input_layernorm.weight, p + "ln1.b": blk.input_layernorm.bias,
                  p + "ln2.w": blk.post_attention_layernorm.weight, p + "ln2.b": blk.post_attention_layernorm.bias,
                  p + "attn.w_o": linear_t(a.dense), p + "attn.b_o": a.dense.bias, p + "attn.alibi": slopes,
                  p + "mlp.w_in": linear_t(blk.mlp.dense_h_to_4h), p + "mlp.b_in": blk.mlp.dense_h_to_4h.bias,
                  p + "mlp.w_out": linear_t(blk.mlp.dense_4h_to_h), p + "mlp.b_out": blk.mlp.dense_4h_to_h.bias}
    flags = dict(qkv_bias=True, out_bias=True, mlp_bias=True, unembed_bias=False)
    return cfg, flags, state, None
