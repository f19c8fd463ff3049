"""GPT-2 and GPT-BigCode (SantaCoder, StarCoder 1): learned positions, LayerNorm, fused c_attn.
GPT-2's Conv1D weights are already [in, out]; BigCode's are Linear, laid out [q | k | v] with one key
and value head under multi-query attention, else [q k v] per head."""

from __future__ import annotations

from circuitfind.models.adapters.common import linear_t, refuse
from circuitfind.models.canonical import CanonicalConfig


def convert(hf):
    c = hf.config
    if c.model_type == "gpt_bigcode":
        return _bigcode(hf)
    refuse(c, "scale_attn_by_inverse_layer_idx", lambda v: v is False, "per-layer attention scaling")
    refuse(c, "add_cross_attention", lambda v: v is False, "cross-attention is for encoder-decoders")
    d, h = c.n_embd, c.n_head
    cfg = CanonicalConfig(
        family="gpt2", n_layers=c.n_layer, d_model=d, n_heads=h, n_kv_heads=h, d_head=d // h,
        d_mlp=c.n_inner or 4 * d, d_vocab=c.vocab_size, n_ctx=c.n_positions, act_fn=c.activation_function,
        norm="layernorm", norm_eps=c.layer_norm_epsilon, positional="learned",
        attn_scale=None if c.scale_attn_weights else 1.0, prepend_bos=True)
    t = hf.transformer
    state = {"W_E": t.wte.weight, "W_pos": t.wpe.weight, "ln_final.w": t.ln_f.weight, "ln_final.b": t.ln_f.bias,
             "W_U": hf.lm_head.weight.t()}
    for l, blk in enumerate(t.h):
        p = f"blocks.{l}."
        w_q, w_k, w_v = blk.attn.c_attn.weight.split(d, dim=1)
        b_q, b_k, b_v = blk.attn.c_attn.bias.split(d)
        state |= {p + "ln1.w": blk.ln_1.weight, p + "ln1.b": blk.ln_1.bias,
                  p + "ln2.w": blk.ln_2.weight, p + "ln2.b": blk.ln_2.bias,
                  p + "attn.w_q": w_q, p + "attn.w_k": w_k, p + "attn.w_v": w_v,
                  p + "attn.b_q": b_q, p + "attn.b_k": b_k, p + "attn.b_v": b_v,
                  p + "attn.w_o": blk.attn.c_proj.weight, p + "attn.b_o": blk.attn.c_proj.bias,
                  p + "mlp.w_in": blk.mlp.c_fc.weight, p + "mlp.b_in": blk.mlp.c_fc.bias,
                  p + "mlp.w_out": blk.mlp.c_proj.weight, p + "mlp.b_out": blk.mlp.c_proj.bias}
    flags = dict(qkv_bias=True, out_bias=True, mlp_bias=True, unembed_bias=False)
    return cfg, flags, state, None


def _bigcode(hf):
    c = hf.config
    refuse(c, "add_cross_attention", lambda v: v is False, "cross-attention is for encoder-decoders")
    d, h = c.n_embd, c.n_head
    dh, kv = d // h, 1 if c.multi_query else h
    cfg = CanonicalConfig(
        family="gpt_bigcode", n_layers=c.n_layer, d_model=d, n_heads=h, n_kv_heads=kv, d_head=dh,
        d_mlp=c.n_inner or 4 * d, d_vocab=c.vocab_size, n_ctx=c.n_positions, act_fn=c.activation_function,
        norm="layernorm", norm_eps=c.layer_norm_epsilon, positional="learned",
        attn_scale=None if c.scale_attn_weights else 1.0)
    t = hf.transformer
    state = {"W_E": t.wte.weight, "W_pos": t.wpe.weight, "ln_final.w": t.ln_f.weight, "ln_final.b": t.ln_f.bias,
             "W_U": hf.lm_head.weight.t()}
    for l, blk in enumerate(t.h):
        p, a = f"blocks.{l}.", blk.attn
        w, b = linear_t(a.c_attn), a.c_attn.bias
        if c.multi_query:  # [q (head·d_head) | k (d_head) | v (d_head)]
            (w_q, w_k, w_v), (b_q, b_k, b_v) = w.split([d, dh, dh], dim=1), b.split([d, dh, dh])
        else:  # per head [q k v]
            w, b = w.view(d, h, 3, dh), b.view(h, 3, dh)
            w_q, w_k, w_v = (w[:, :, i].reshape(d, d) for i in range(3))
            b_q, b_k, b_v = (b[:, i].reshape(d) for i in range(3))
        state |= {p + "ln1.w": blk.ln_1.weight, p + "ln1.b": blk.ln_1.bias,
                  p + "ln2.w": blk.ln_2.weight, p + "ln2.b": blk.ln_2.bias,
                  p + "attn.w_q": w_q, p + "attn.w_k": w_k, p + "attn.w_v": w_v,
                  p + "attn.b_q": b_q, p + "attn.b_k": b_k, p + "attn.b_v": b_v,
                  p + "attn.w_o": linear_t(a.c_proj), p + "attn.b_o": a.c_proj.bias,
                  p + "mlp.w_in": linear_t(blk.mlp.c_fc), p + "mlp.b_in": blk.mlp.c_fc.bias,
                  p + "mlp.w_out": linear_t(blk.mlp.c_proj), p + "mlp.b_out": blk.mlp.c_proj.bias}
    flags = dict(qkv_bias=True, out_bias=True, mlp_bias=True, unembed_bias=False)
    return cfg, flags, {k: v.contiguous() for k, v in state.items()}, None
