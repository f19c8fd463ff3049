"""StarCoder2 and Nemotron: rotary, grouped-query attention, LayerNorm, a plain (not gated) MLP.
StarCoder2 has biases throughout (use_bias) and a sliding window on every layer; Nemotron's
LayerNorm scales by (1 + w) (folded into w), its rotary is partial and its MLP squares a ReLU."""

from __future__ import annotations

from circuitfind.models.adapters.common import linear_t, rotary_of
from circuitfind.models.canonical import CanonicalConfig


def convert(hf):
    c, m = hf.config, hf.model
    nemotron = c.model_type == "nemotron"
    h = c.num_attention_heads
    kv = c.num_key_value_heads or h
    dh = getattr(c, "head_dim", None) or c.hidden_size // h
    inv_freq, scaling = rotary_of(m.rotary_emb, c)
    window = None if nemotron else c.sliding_window
    cfg = CanonicalConfig(
        family=c.model_type, n_layers=c.num_hidden_layers, d_model=c.hidden_size, n_heads=h, n_kv_heads=kv,
        d_head=dh, d_mlp=c.intermediate_size, d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings,
        act_fn=c.hidden_act, norm="layernorm", norm_eps=c.norm_eps if nemotron else c.norm_epsilon,
        positional="rotary", rotary_dim=2 * inv_freq.numel(), sliding_window=window,
        sliding_layers=tuple(range(c.num_hidden_layers)) if window else ())
    one = 1.0 if nemotron else 0.0  # LayerNorm1P: x̂ · (1 + w) + b

    def norm(name, ln):
        return {name + ".w": ln.weight + one, name + ".b": ln.bias}

    state = {"W_E": m.embed_tokens.weight, "W_U": hf.lm_head.weight.t()} | norm("ln_final", m.norm)
    attn_bias = bool(c.attention_bias if nemotron else c.use_bias)
    mlp_bias = bool(c.mlp_bias if nemotron else c.use_bias)
    for l, blk in enumerate(m.layers):
        p, a = f"blocks.{l}.", blk.self_attn
        up, down = (blk.mlp.up_proj, blk.mlp.down_proj) if nemotron else (blk.mlp.c_fc, blk.mlp.c_proj)
        state |= norm(p + "ln1", blk.input_layernorm) | norm(p + "ln2", blk.post_attention_layernorm)
        state |= {p + f"attn.w_{n}": linear_t(getattr(a, f"{n}_proj")) for n in "qkvo"}
        state |= {p + "mlp.w_in": linear_t(up), p + "mlp.w_out": linear_t(down)}
        if attn_bias:
            state |= {p + f"attn.b_{n}": getattr(a, f"{n}_proj").bias for n in "qkvo"}
        if mlp_bias:
            state |= {p + "mlp.b_in": up.bias, p + "mlp.b_out": down.bias}
    flags = dict(qkv_bias=attn_bias, out_bias=attn_bias, mlp_bias=mlp_bias, unembed_bias=False)
    return cfg, flags, state, (inv_freq, scaling)
