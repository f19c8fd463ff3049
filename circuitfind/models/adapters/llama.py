"""Llama and the families of its form: RMSNorm, rotary (incl. static scaling), grouped-query attention
kept grouped, SwiGLU. Qwen2's q/k/v bias; Qwen3's q/k norm; Mistral/Qwen2/Phi-3 sliding windows; Phi-3's
fused q/k/v and gate/up projections (split here) and partial rotary; OLMo's LayerNorm without weights;
OLMo 2 and 3 (and OLMoE) norm queries and keys over every head together, and OLMo 2 and 3 norm each
block's output instead of its input; Granite's multipliers (of the embeddings and attention scores as
config, of each block's output and the logits folded into W_O, W_out and W_U); SmolLM3's layers without
rotary; gpt-oss's attention sinks and alternating sliding window; the mixture-of-experts MLPs of `moe.py`."""

from __future__ import annotations

import torch

from circuitfind.errors import UnsupportedModelError
from circuitfind.models.adapters import moe
from circuitfind.models.adapters.common import layer_types, linear_t, refuse, rotary_of
from circuitfind.models.canonical import CanonicalConfig


def convert(hf):
    c = hf.config
    refuse(c, "pretraining_tp", lambda v: v == 1, "tensor-parallel weight slicing")
    refuse(c, "clip_qkv", lambda v: False, "queries, keys and values clamped (OLMo's clip_qkv)")
    olmo, granite = c.model_type == "olmo", c.model_type in ("granite", "granitemoe")
    sparse = moe.fields(c) if c.model_type in moe.FAMILIES else {}
    olmo2 = c.model_type in ("olmo2", "olmo3")  # (OLMo 3: OLMo 2 with sliding-window layers)
    norms_all = olmo2 or c.model_type == "olmoe"  # q/k RMSNorm over every head's projection together
    h, kv = c.num_attention_heads, c.num_key_value_heads or c.num_attention_heads
    dh = getattr(c, "head_dim", None) or c.hidden_size // h
    phi3 = c.model_type == "phi3"
    attn0, mlp0 = hf.model.layers[0].self_attn, getattr(hf.model.layers[0], "mlp", None)
    qkv_bias = (attn0.qkv_proj if phi3 else attn0.q_proj).bias is not None
    out_bias = attn0.o_proj.bias is not None
    mlp_bias = not sparse and (mlp0.gate_up_proj if phi3 else mlp0.gate_proj).bias is not None
    refuse(c, "mlp_bias", lambda v: v is False, "gated MLP with biases")
    if phi3 and (qkv_bias or mlp_bias):
        raise UnsupportedModelError("a Phi-3 model with biases on its fused projections is not modelled")
    sliding = layer_types(c)
    if c.model_type in ("mistral", "phi3", "mixtral") and getattr(c, "sliding_window", None):  # every layer
        sliding = tuple(range(c.num_hidden_layers))
    rotary = _rotary(hf.model.rotary_emb, c, sliding)
    inv_freq, scaling = rotary[:2]
    sinks = c.model_type == "gpt_oss"  # (and its alternating sliding window comes from layer_types)
    cfg = CanonicalConfig(
        family=c.model_type, n_layers=c.num_hidden_layers, d_model=c.hidden_size, n_heads=h, n_kv_heads=kv,
        d_head=dh, d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings, **({"d_mlp": c.intermediate_size} | sparse),
        act_fn=c.hidden_act, gated_mlp=True, norm="layernorm" if olmo else "rmsnorm",
        norm_eps=1e-5 if olmo else c.rms_norm_eps, positional="rotary", rotary_dim=2 * inv_freq.numel(),
        nope_layers=tuple(l for l, rope in enumerate(getattr(c, "no_rope_layers", None) or ()) if not rope),
        qk_norm=c.model_type in ("qwen3", "qwen3_moe") or norms_all, qk_norm_width="all" if norms_all else "head",
        pre_norms=not olmo2, post_norms=olmo2, sliding_window=getattr(c, "sliding_window", None) if sliding else None,
        sliding_layers=sliding, attn_scale=c.attention_multiplier if granite else None,
        embed_scale=c.embedding_multiplier if granite else 1.0, attn_sinks=sinks)
    residual = c.residual_multiplier if granite else 1.0  # each block's output, folded into its weights
    m = hf.model
    state = {"W_E": m.embed_tokens.weight, "W_U": hf.lm_head.weight.t() / (c.logits_scaling if granite else 1.0)}
    state |= _norm_state("ln_final", m.norm, c.hidden_size)
    for l, blk in enumerate(m.layers):
        p, a = f"blocks.{l}.", blk.self_attn
        if phi3:  # fused [d, q | k | v] and [d, gate | up]
            w_q, w_k, w_v = linear_t(a.qkv_proj).split([h * dh, kv * dh, kv * dh], dim=1)
            w_gate, w_in = linear_t(blk.mlp.gate_up_proj).chunk(2, dim=1)
        else:
            w_q, w_k, w_v = linear_t(a.q_proj), linear_t(a.k_proj), linear_t(a.v_proj)
            w_gate, w_in = (None, None) if sparse else (linear_t(blk.mlp.gate_proj), linear_t(blk.mlp.up_proj))
        if olmo2:  # norms on the blocks' outputs alone
            state |= {p + "attn.post_norm.w": blk.post_attention_layernorm.weight,
                      p + "mlp.post_norm.w": blk.post_feedforward_layernorm.weight}
        else:
            state |= _norm_state(p + "ln1", blk.input_layernorm, c.hidden_size)
            state |= _norm_state(p + "ln2", blk.post_attention_layernorm, c.hidden_size)
        state |= {p + "attn.w_q": w_q.contiguous(), p + "attn.w_k": w_k.contiguous(), p + "attn.w_v": w_v.contiguous(),
                  p + "attn.w_o": linear_t(a.o_proj) * residual}
        if sparse:  # the whole sparse block, router included (moe.py)
            state |= moe.state(p, getattr(blk, "block_sparse_moe", None) or blk.mlp, residual)
        else:
            state |= {p + "mlp.w_gate": w_gate.contiguous(), p + "mlp.w_in": w_in.contiguous(),
                      p + "mlp.w_out": linear_t(blk.mlp.down_proj) * residual}
        if qkv_bias:
            state |= {p + "attn.b_q": a.q_proj.bias, p + "attn.b_k": a.k_proj.bias, p + "attn.b_v": a.v_proj.bias}
        if out_bias:
            state[p + "attn.b_o"] = a.o_proj.bias * residual
        if cfg.qk_norm:
            state |= {p + "attn.q_norm.w": a.q_norm.weight, p + "attn.k_norm.w": a.k_norm.weight}
        if sinks:
            state[p + "attn.sinks"] = a.sinks
    flags = dict(qkv_bias=qkv_bias, out_bias=out_bias, mlp_bias=mlp_bias, unembed_bias=False)
    return cfg, flags, state, rotary


def _rotary(rotary_emb, c, sliding: tuple[int, ...]) -> tuple:
    """(inv_freq, scaling), then the sliding layers' own where the module holds one set per layer type (OLMo 3)."""
    if not isinstance(getattr(rotary_emb, "rope_type", None), dict):
        return rotary_of(rotary_emb, c)
    types = set(c.layer_types)
    full = rotary_of(rotary_emb, c, "full_attention" if "full_attention" in types else "sliding_attention")
    return full + rotary_of(rotary_emb, c, "sliding_attention") if sliding else full


def _norm_state(name: str, norm, d: int) -> dict:
    """A norm's canonical weights; OLMo's LayerNorm has none (weight 1, bias 0)."""
    weight = getattr(norm, "weight", None)
    if weight is not None:
        return {name + ".w": weight}
    return {name + ".w": torch.ones(d), name + ".b": torch.zeros(d)}
