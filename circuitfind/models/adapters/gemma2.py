"""Gemma 2: scaled embeddings, (1 + w) RMSNorm, pre- and post-norms around both blocks,
attention and final logit soft-capping, alternating sliding-window layers, GeGLU."""

from __future__ import annotations

from circuitfind.models.adapters.common import layer_types, linear_t, refuse, rotary_of
from circuitfind.models.canonical import CanonicalConfig


def convert(hf):
    c = hf.config
    refuse(c, "attention_bias", lambda v: v is False, "attention biases under post-norms")
    h, kv, dh = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    inv_freq, scaling = rotary_of(hf.model.rotary_emb, c)
    sliding = layer_types(c)
    cfg = CanonicalConfig(
        family="gemma2", n_layers=c.num_hidden_layers, d_model=c.hidden_size, n_heads=h, n_kv_heads=kv,
        d_head=dh, d_mlp=c.intermediate_size, d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings,
        act_fn=c.hidden_activation, gated_mlp=True, norm="rmsnorm", norm_eps=c.rms_norm_eps, norm_offset=1.0,
        positional="rotary", rotary_dim=2 * inv_freq.numel(), post_norms=True,
        attn_scale=c.query_pre_attn_scalar ** -0.5, attn_softcap=c.attn_logit_softcapping,
        final_softcap=c.final_logit_softcapping, sliding_window=c.sliding_window if sliding else None,
        sliding_layers=sliding, embed_scale=c.hidden_size ** 0.5)
    m = hf.model
    state = {"W_E": m.embed_tokens.weight, "ln_final.w": m.norm.weight, "W_U": hf.lm_head.weight.t()}
    for l, blk in enumerate(m.layers):
        p, a = f"blocks.{l}.", blk.self_attn
        state |= {p + "ln1.w": blk.input_layernorm.weight, p + "attn.post_norm.w": blk.post_attention_layernorm.weight,
                  p + "ln2.w": blk.pre_feedforward_layernorm.weight,
                  p + "mlp.post_norm.w": blk.post_feedforward_layernorm.weight,
                  p + "attn.w_q": linear_t(a.q_proj), p + "attn.w_k": linear_t(a.k_proj),
                  p + "attn.w_v": linear_t(a.v_proj), p + "attn.w_o": linear_t(a.o_proj),
                  p + "mlp.w_gate": linear_t(blk.mlp.gate_proj), p + "mlp.w_in": linear_t(blk.mlp.up_proj),
                  p + "mlp.w_out": linear_t(blk.mlp.down_proj)}
    flags = dict(qkv_bias=False, out_bias=False, mlp_bias=False, unembed_bias=False)
    return cfg, flags, state, (inv_freq, scaling)
