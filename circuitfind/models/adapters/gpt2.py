"""GPT-2: learned positions, LayerNorm, fused c_attn (Conv1D weights are already [in, out])."""

from __future__ import annotations

from circuitfind.models.adapters.common import refuse
from circuitfind.models.canonical import CanonicalConfig


def convert(hf):
    c = hf.config
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
