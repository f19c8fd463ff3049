"""Mixture-of-experts MLPs (Mixtral, Qwen1.5/2-MoE, Qwen3-MoE, GraniteMoE, OLMoE, gpt-oss), attention as in
`llama.py`: the whole
sparse block is the MLP node `m{l}`, router included. The router's softmax and exact top-k (the top-k
probabilities renormalised where norm_topk_prob says so; always for Mixtral), each chosen expert a
SwiGLU weighted by its probability; Qwen-MoE adds a shared expert under a sigmoid gate. (GraniteMoE's
softmax over the top-k logits is the renormalised top-k of the softmax; so is gpt-oss's, whose router and
experts have biases, whose gate and up projections are interleaved, and whose SwiGLU is clamped.)"""

from __future__ import annotations

import torch

from circuitfind.errors import UnsupportedModelError
from circuitfind.models.adapters.common import refuse

FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "granitemoe", "olmoe", "gpt_oss")


def fields(c) -> dict:
    """The CanonicalConfig fields of the MoE block."""
    kind = c.model_type
    refuse(c, "mlp_only_layers", lambda v: not v, "dense MLP layers among the sparse ones")
    refuse(c, "decoder_sparse_step", lambda v: v == 1, "dense MLP layers among the sparse ones")
    if kind == "gpt_oss":
        return dict(n_experts=c.num_local_experts, top_k=c.num_experts_per_tok, norm_topk=True,
                    d_mlp=c.intermediate_size, moe_bias=True, swiglu_limit=float(c.swiglu_limit),
                    swiglu_alpha=float(c.swiglu_alpha))
    if kind in ("mixtral", "granitemoe"):
        return dict(n_experts=c.num_local_experts, top_k=c.num_experts_per_tok, norm_topk=True,
                    d_mlp=c.intermediate_size)
    if kind == "olmoe":
        return dict(n_experts=c.num_experts, top_k=c.num_experts_per_tok, norm_topk=bool(c.norm_topk_prob),
                    d_mlp=c.intermediate_size)
    if kind in ("qwen2_moe", "qwen3_moe"):
        shared = c.shared_expert_intermediate_size if kind == "qwen2_moe" else 0
        return dict(n_experts=c.num_experts, top_k=c.num_experts_per_tok, norm_topk=bool(c.norm_topk_prob),
                    d_mlp=c.moe_intermediate_size, d_mlp_shared=shared)
    raise UnsupportedModelError(f"{kind} has no mixture-of-experts mapping in circuitfind")


def state(p: str, block, scale: float = 1.0) -> dict:
    """The canonical weights of a sparse block under prefix p ("blocks.{l}."), its output times scale
    (Granite's residual multiplier, folded in)."""
    experts = block.experts
    router = block.router if hasattr(block, "router") else block.gate
    if hasattr(experts, "gate_up_proj_bias"):  # gpt-oss: [expert, d_model, gate/up interleaved], with biases
        gate_up, bias = experts.gate_up_proj, experts.gate_up_proj_bias
        return {p + "mlp.w_router": router.weight.t(), p + "mlp.b_router": router.bias,
                p + "mlp.w_up": torch.cat([gate_up[..., 0::2], gate_up[..., 1::2]], dim=-1),
                p + "mlp.b_up": torch.cat([bias[..., 0::2], bias[..., 1::2]], dim=-1),
                p + "mlp.w_out": experts.down_proj * scale, p + "mlp.b_expert_out": experts.down_proj_bias * scale}
    out = {p + "mlp.w_router": router.weight.t(),
           p + "mlp.w_up": experts.gate_up_proj.transpose(1, 2).contiguous(),  # [expert, d_model, gate | up]
           p + "mlp.w_out": (experts.down_proj.transpose(1, 2) * scale).contiguous()}
    shared = getattr(block, "shared_expert", None)
    if shared is not None and scale != 1.0:
        raise UnsupportedModelError("a shared expert with a residual multiplier is not modelled")
    if shared is not None:
        out |= {p + "mlp.shared_gate": shared.gate_proj.weight.t(), p + "mlp.shared_in": shared.up_proj.weight.t(),
                p + "mlp.shared_out": shared.down_proj.weight.t(),
                p + "mlp.shared_router": block.shared_expert_gate.weight.t()}
    return out
