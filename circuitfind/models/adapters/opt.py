"""OPT and GPT-Neo: learned positions, LayerNorm, separate q/k/v projections, a plain MLP.
OPT's position table starts 2 rows in (its padding offset), its queries are scaled and biased;
GPT-Neo's scores are not scaled at all and its local layers attend within a window."""

from __future__ import annotations

from circuitfind.models.adapters.common import linear_t, refuse
from circuitfind.models.canonical import CanonicalConfig


def convert(hf):
    c = hf.config
    neo = c.model_type == "gpt_neo"
    if neo:
        t, blocks, d, h = hf.transformer, hf.transformer.h, c.hidden_size, c.num_heads
        local = tuple(l for l, kind in enumerate(c.attention_layers) if kind == "local")
        extra = dict(norm_eps=c.layer_norm_epsilon, n_ctx=c.max_position_embeddings, attn_scale=1.0,
                     act_fn=c.activation_function, d_mlp=c.intermediate_size or 4 * d,
                     sliding_window=c.window_size if local else None, sliding_layers=local)
        state = {"W_E": t.wte.weight, "W_pos": t.wpe.weight, "ln_final.w": t.ln_f.weight, "ln_final.b": t.ln_f.bias}
    else:
        refuse(c, "do_layer_norm_before", lambda v: v is True, "post-LayerNorm blocks (OPT-350m)")
        refuse(c, "word_embed_proj_dim", lambda v: v == c.hidden_size, "embeddings projected in and out of the blocks")
        refuse(c, "layer_norm_elementwise_affine", lambda v: v is True, "layer norms without weights")
        refuse(c, "_remove_final_layer_norm", lambda v: v is False, "no final layer norm")
        t, d, h = hf.model.decoder, c.hidden_size, c.num_attention_heads
        blocks = t.layers
        extra = dict(norm_eps=1e-5, n_ctx=c.max_position_embeddings, act_fn=c.activation_function, d_mlp=c.ffn_dim)
        state = {"W_E": t.embed_tokens.weight, "W_pos": t.embed_positions.weight[2:],  # (rows 0, 1: OPT's offset)
                 "ln_final.w": t.final_layer_norm.weight, "ln_final.b": t.final_layer_norm.bias}
    cfg = CanonicalConfig(family=c.model_type, n_layers=len(blocks), d_model=d, n_heads=h, n_kv_heads=h, d_head=d // h,
                          d_vocab=c.vocab_size, norm="layernorm", positional="learned", prepend_bos=not neo, **extra)
    state["W_U"] = hf.lm_head.weight.t()
    qkv_bias = neo is False and bool(c.enable_bias)
    for l, blk in enumerate(blocks):
        p = f"blocks.{l}."
        a = blk.attn.attention if neo else blk.self_attn
        ln1, ln2 = (blk.ln_1, blk.ln_2) if neo else (blk.self_attn_layer_norm, blk.final_layer_norm)
        fc1, fc2 = (blk.mlp.c_fc, blk.mlp.c_proj) if neo else (blk.fc1, blk.fc2)
        state |= {p + "ln1.w": ln1.weight, p + "ln1.b": ln1.bias, p + "ln2.w": ln2.weight, p + "ln2.b": ln2.bias,
                  p + "attn.w_q": linear_t(a.q_proj), p + "attn.w_k": linear_t(a.k_proj),
                  p + "attn.w_v": linear_t(a.v_proj), p + "attn.w_o": linear_t(a.out_proj),
                  p + "attn.b_o": a.out_proj.bias, p + "mlp.w_in": linear_t(fc1), p + "mlp.b_in": fc1.bias,
                  p + "mlp.w_out": linear_t(fc2), p + "mlp.b_out": fc2.bias}
        if qkv_bias:
            state |= {p + "attn.b_q": a.q_proj.bias, p + "attn.b_k": a.k_proj.bias, p + "attn.b_v": a.v_proj.bias}
    bias = neo or bool(c.enable_bias)
    flags = dict(qkv_bias=qkv_bias, out_bias=bias, mlp_bias=bias, unembed_bias=False)
    return cfg, flags, state, None
