"""Gemma 1, 2 and 3 (text, or the language model of an image-text checkpoint): scaled embeddings,
(1 + w) RMSNorm, GeGLU. Gemma 2 and 3 add pre- and post-norms around both blocks and sliding-window
layers; Gemma 2 soft-caps attention and final logits; Gemma 3 norms queries and keys and gives its
sliding layers rotary frequencies of their own."""

from __future__ import annotations

from circuitfind.models.adapters.common import layer_types, linear_t, refuse, rotary_of
from circuitfind.models.canonical import CanonicalConfig


def convert(hf):
    c, m = hf.config, hf.model
    image_text = c.model_type == "gemma3"
    if image_text:  # an image-text checkpoint (Gemma 3 4B and up): its language model alone
        c, m = c.text_config, m.language_model
    v1, v3 = c.model_type == "gemma", c.model_type == "gemma3_text"
    refuse(c, "attention_bias", lambda v: v is False, "attention biases in Gemma")
    refuse(c, "use_bidirectional_attention", lambda v: v is False, "bidirectional attention (an encoder)")
    h, kv, dh = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    sliding = () if v1 else layer_types(c)
    rotary = _rotary(m.rotary_emb, c, sliding)
    cfg = CanonicalConfig(
        family=c.model_type, n_layers=c.num_hidden_layers, d_model=c.hidden_size, n_heads=h, n_kv_heads=kv,
        d_head=dh, d_mlp=c.intermediate_size, d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings,
        act_fn=c.hidden_act if v1 else c.hidden_activation, gated_mlp=True, norm="rmsnorm", norm_eps=c.rms_norm_eps,
        norm_offset=1.0, positional="rotary", rotary_dim=2 * rotary[0].numel(), post_norms=not v1, qk_norm=v3,
        attn_scale=None if v1 else c.query_pre_attn_scalar ** -0.5,
        attn_softcap=None if v1 else c.attn_logit_softcapping,
        final_softcap=None if v1 or image_text else c.final_logit_softcapping,  # (none in the image-text head)
        sliding_window=c.sliding_window if sliding else None, sliding_layers=sliding,
        embed_scale=c.hidden_size ** 0.5)
    state = {"W_E": m.embed_tokens.weight, "ln_final.w": m.norm.weight, "W_U": hf.lm_head.weight.t()}
    for l, blk in enumerate(m.layers):
        p, a = f"blocks.{l}.", blk.self_attn
        state |= {p + "ln1.w": blk.input_layernorm.weight,
                  p + "attn.w_q": linear_t(a.q_proj), p + "attn.w_k": linear_t(a.k_proj),
                  p + "attn.w_v": linear_t(a.v_proj), p + "attn.w_o": linear_t(a.o_proj),
                  p + "mlp.w_gate": linear_t(blk.mlp.gate_proj), p + "mlp.w_in": linear_t(blk.mlp.up_proj),
                  p + "mlp.w_out": linear_t(blk.mlp.down_proj)}
        if v1:
            state[p + "ln2.w"] = blk.post_attention_layernorm.weight  # Gemma 1 names its pre-MLP norm so
        else:
            state |= {p + "attn.post_norm.w": blk.post_attention_layernorm.weight,
                      p + "ln2.w": blk.pre_feedforward_layernorm.weight,
                      p + "mlp.post_norm.w": blk.post_feedforward_layernorm.weight}
        if v3:
            state |= {p + "attn.q_norm.w": a.q_norm.weight, p + "attn.k_norm.w": a.k_norm.weight}
    flags = dict(qkv_bias=False, out_bias=False, mlp_bias=False, unembed_bias=False)
    return cfg, flags, state, rotary


def _rotary(rotary_emb, c, sliding: tuple[int, ...]) -> tuple:
    """(inv_freq, scaling) of the global layers, then, for Gemma 3, (inv_freq, scaling) of the sliding ones."""
    if c.model_type != "gemma3_text":
        return rotary_of(rotary_emb, c)
    types = set(c.layer_types)
    full = rotary_of(rotary_emb, c, "full_attention" if "full_attention" in types else "sliding_attention")
    return full + rotary_of(rotary_emb, c, "sliding_attention") if sliding else full
