"""GPT-NeoX / Pythia: parallel attention + MLP, partial rotary, fused per-head [q|k|v] weights."""

from __future__ import annotations

from circuitfind.models.adapters.common import linear_t, refuse, rotary_of
from circuitfind.models.canonical import CanonicalConfig


def convert(hf):
    c = hf.config
    refuse(c, "attention_bias", lambda v: v is True, "query_key_value without bias")
    d, h = c.hidden_size, c.num_attention_heads
    dh = d // h
    inv_freq, scaling = rotary_of(hf.gpt_neox.rotary_emb, c)
    cfg = CanonicalConfig(
        family="gpt_neox", n_layers=c.num_hidden_layers, d_model=d, n_heads=h, n_kv_heads=h, d_head=dh,
        d_mlp=c.intermediate_size, d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings, act_fn=c.hidden_act,
        norm="layernorm", norm_eps=c.layer_norm_eps, positional="rotary", rotary_dim=2 * inv_freq.numel(),
        parallel=bool(c.use_parallel_residual))
    g = hf.gpt_neox
    state = {"W_E": g.embed_in.weight, "ln_final.w": g.final_layer_norm.weight,
             "ln_final.b": g.final_layer_norm.bias, "W_U": hf.get_output_embeddings().weight.t()}
    for l, blk in enumerate(g.layers):
        p, a = f"blocks.{l}.", blk.attention
        # Output features are laid out per head as [q(d_head) k(d_head) v(d_head)].
        w = linear_t(a.query_key_value).view(d, h, 3, dh)
        b = a.query_key_value.bias.view(h, 3, dh)
        for i, n in enumerate("qkv"):
            state[p + f"attn.w_{n}"] = w[:, :, i].reshape(d, h * dh)
            state[p + f"attn.b_{n}"] = b[:, i].reshape(h * dh)
        state |= {p + "ln1.w": blk.input_layernorm.weight, p + "ln1.b": blk.input_layernorm.bias,
                  p + "ln2.w": blk.post_attention_layernorm.weight, p + "ln2.b": blk.post_attention_layernorm.bias,
                  p + "attn.w_o": linear_t(a.dense), p + "attn.b_o": a.dense.bias,
                  p + "mlp.w_in": linear_t(blk.mlp.dense_h_to_4h), p + "mlp.b_in": blk.mlp.dense_h_to_4h.bias,
                  p + "mlp.w_out": linear_t(blk.mlp.dense_4h_to_h), p + "mlp.b_out": blk.mlp.dense_4h_to_h.bias}
    flags = dict(qkv_bias=True, out_bias=True, mlp_bias=True, unembed_bias=False)
    return cfg, flags, state, (inv_freq, scaling)



