"""Phi (1, 1.5, 2), Persimmon and StableLM: LayerNorm blocks, partial rotary, optional LayerNorm over
each head's queries and keys. Phi runs attention and MLP in parallel on one norm and has biases
everywhere (the unembedding's too); Persimmon fuses per-head [q|k|v] weights and squares its ReLU;
StableLM norms each head with weights of its own and may run its blocks in parallel on one norm."""

from __future__ import annotations

import torch

from circuitfind.models.adapters.common import linear_t, refuse, rotary_of
from circuitfind.models.canonical import CanonicalConfig


def convert(hf):
    c, m = hf.config, hf.model
    kind = c.model_type
    h = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or h
    d = c.hidden_size
    dh = d // h
    qk_norm = bool(c.qk_layernorm)
    parallel = kind == "phi" or (kind == "stablelm" and bool(c.use_parallel_residual))
    shared_norm = parallel  # the MLP reads the attention's norm
    inv_freq, scaling = rotary_of(m.rotary_emb, c)
    cfg = CanonicalConfig(
        family=kind, n_layers=c.num_hidden_layers, d_model=d, n_heads=h, n_kv_heads=kv, d_head=dh,
        d_mlp=c.intermediate_size, d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings, act_fn=c.hidden_act,
        gated_mlp=kind == "stablelm", norm="layernorm", norm_eps=c.layer_norm_eps, positional="rotary",
        rotary_dim=2 * inv_freq.numel(), parallel=parallel, qk_norm=qk_norm, qk_norm_kind="layernorm",
        qk_norm_per_head=kind == "stablelm", qk_norm_bias=kind != "stablelm")
    final = m.norm if kind == "stablelm" else m.final_layernorm
    state = {"W_E": m.embed_tokens.weight, "ln_final.w": final.weight, "ln_final.b": final.bias,
             "W_U": hf.lm_head.weight.t(), "b_U": hf.lm_head.bias}
    qkv_bias = kind != "stablelm" or bool(c.use_qkv_bias)
    for l, blk in enumerate(m.layers):
        p, a = f"blocks.{l}.", blk.self_attn
        ln2 = blk.input_layernorm if shared_norm else blk.post_attention_layernorm
        state |= {p + "ln1.w": blk.input_layernorm.weight, p + "ln1.b": blk.input_layernorm.bias,
                  p + "ln2.w": ln2.weight, p + "ln2.b": ln2.bias}
        if kind == "persimmon":  # per head [q | k | v]
            w = linear_t(a.query_key_value).view(d, h, 3, dh)
            b = a.query_key_value.bias.view(h, 3, dh)
            for i, n in enumerate("qkv"):
                state |= {p + f"attn.w_{n}": w[:, :, i].reshape(d, h * dh), p + f"attn.b_{n}": b[:, i].reshape(h * dh)}
        else:
            state |= {p + f"attn.w_{n}": linear_t(getattr(a, f"{n}_proj")) for n in "qkv"}
            if qkv_bias:
                state |= {p + f"attn.b_{n}": getattr(a, f"{n}_proj").bias for n in "qkv"}
        out = a.o_proj if kind == "stablelm" else a.dense
        state |= {p + "attn.w_o": linear_t(out), p + "attn.b_o": out.bias}
        if kind == "stablelm":
            mlp = blk.mlp
            state |= {p + "mlp.w_gate": linear_t(mlp.gate_proj), p + "mlp.w_in": linear_t(mlp.up_proj),
                      p + "mlp.w_out": linear_t(mlp.down_proj)}
        else:
            fc1, fc2 = (blk.mlp.fc1, blk.mlp.fc2) if kind == "phi" else (blk.mlp.dense_h_to_4h, blk.mlp.dense_4h_to_h)
            state |= {p + "mlp.w_in": linear_t(fc1), p + "mlp.b_in": fc1.bias, p + "mlp.w_out": linear_t(fc2),
                      p + "mlp.b_out": fc2.bias}
        if qk_norm and kind == "stablelm":  # one LayerNorm per head: weights [head, d_head]
            for n in "qk":
                norms = getattr(a, f"{n}_layernorm").norms
                state[p + f"attn.{n}_norm.w"] = torch.stack([x.weight for x in norms])
        elif qk_norm:
            for n in "qk":
                ln = getattr(a, f"{n}_layernorm")
                state |= {p + f"attn.{n}_norm.w": ln.weight, p + f"attn.{n}_norm.b": ln.bias}
    flags = dict(qkv_bias=qkv_bias, out_bias=kind != "stablelm", mlp_bias=kind != "stablelm",
                 unembed_bias=hf.lm_head.bias is not None)
    return cfg, flags, state, (inv_freq, scaling)
