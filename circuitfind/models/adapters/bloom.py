"""ALiBi models (a per-head slope times the key's position added to each score: a position term,
not a sender). BLOOM: a LayerNorm on the embeddings (part of the `input` sender), fused per-head
[q|k|v] weights, tanh-GELU MLP, LayerNorm throughout. MPT: its own slopes (alibi_bias_max), fused
[q | k | v] weights, LayerNorm without biases, exact-GELU MLP, no biases at all. (MPT's bias counts
key indices from the prompt's end, BLOOM's real tokens from its start: the two differ by a constant of
each query's row, which softmax ignores.)"""

from __future__ import annotations

import math

import torch

from circuitfind.models.adapters.common import alibi_slopes, linear_t, refuse
from circuitfind.models.canonical import CanonicalConfig


def convert(hf):
    c = hf.config
    if c.model_type == "mpt":
        return _mpt(hf)
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


def _mpt(hf):
    c, t = hf.config, hf.transformer
    a_cfg = c.attn_config
    refuse(a_cfg, "clip_qkv", lambda v: False, "queries, keys and values clamped")
    d, h = c.d_model, c.n_heads
    up = t.blocks[0].ffn.up_proj
    cfg = CanonicalConfig(
        family="mpt", n_layers=c.n_layers, d_model=d, n_heads=h, n_kv_heads=h, d_head=d // h, d_mlp=up.out_features,
        d_vocab=c.vocab_size, n_ctx=c.max_seq_len, act_fn="gelu", norm="layernorm", norm_eps=c.layer_norm_epsilon,
        positional="alibi", attn_scale=a_cfg.softmax_scale)
    slopes = _mpt_slopes(h, a_cfg.alibi_bias_max)
    zeros = torch.zeros(d)
    state = {"W_E": t.wte.weight, "ln_final.w": t.norm_f.weight, "ln_final.b": _bias(t.norm_f, zeros),
             "W_U": hf.lm_head.weight.t()}
    for l, blk in enumerate(t.blocks):
        p = f"blocks.{l}."
        w_q, w_k, w_v = linear_t(blk.attn.Wqkv).chunk(3, dim=1)
        state |= {p + "ln1.w": blk.norm_1.weight, p + "ln1.b": _bias(blk.norm_1, zeros),
                  p + "ln2.w": blk.norm_2.weight, p + "ln2.b": _bias(blk.norm_2, zeros),
                  p + "attn.w_q": w_q.contiguous(), p + "attn.w_k": w_k.contiguous(), p + "attn.w_v": w_v.contiguous(),
                  p + "attn.w_o": linear_t(blk.attn.out_proj), p + "attn.alibi": slopes,
                  p + "mlp.w_in": linear_t(blk.ffn.up_proj), p + "mlp.w_out": linear_t(blk.ffn.down_proj)}
    flags = dict(qkv_bias=False, out_bias=False, mlp_bias=False, unembed_bias=False)
    return cfg, flags, state, None


def _bias(norm, zeros):
    return zeros if norm.bias is None else norm.bias


def _mpt_slopes(n_heads: int, bias_max: float) -> torch.Tensor:
    """MPT's slopes: 2^(-bias_max·i/m), i = 1..m, m the power of two at or above n_heads; for other head
    counts the odd-numbered ones, then the even-numbered ones, the first n_heads of those."""
    m = 2 ** math.ceil(math.log2(n_heads))
    slopes = [2.0 ** (-bias_max * i / m) for i in range(1, m + 1)]
    if m != n_heads:
        slopes = (slopes[1::2] + slopes[0::2])[:n_heads]
    return torch.tensor(slopes)
