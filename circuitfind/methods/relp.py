"""RelP: relevance patching (Jafari, Eberle, Khakzar & Nanda 2025, "RelP: Faithful and Efficient Circuit
Discovery via Relevance Patching", arXiv 2508.21258; code FarnoushRJ/RelP), at the level of edges: EAP with
the receiver gradients replaced by LRP propagation coefficients,

    score[v, u] = −⟨D_u, r_v⟩,   r_v the backward of the metric to v's input under the LRP rules:

    LayerNorm / RMSNorm   LN-rule: the normalisation factor 1/σ (1/rms) a constant; the centering kept
    activation (GELU...)  identity rule: coefficient act(x)/x (x stabilised by 1e-6, as the paper's code)
    gated MLP product     half rule: each factor half the coefficient
    linear layers         0-rule: the gradient
    attention             the gradient through the softmax (the paper's code's default rules); ah_rule=True
                          holds each pattern constant (AH-rule), so query and key edges then score 0

Same cost as EAP: two forwards and one backward (`attribute(..., relevance=)`, the engine's one backward with
those factors detached). On a model without norms and with a linear or ReLU MLP the rules are the gradient and
RelP is EAP. Tests: tests/test_relp.py (equal to EAP where the rules are the gradient; equal, to 1e-6 relative,
to a slow re-derivation: autograd through tests/reference.py's loop forward with the same factors detached by
hand, on GPT-2 (LayerNorm, GELU), NeoX (parallel) and Llama (RMSNorm, SwiGLU), and with the AH-rule).
"""

from __future__ import annotations

from dataclasses import dataclass

from circuitfind.engine.attribution import attribute
from circuitfind.methods.common import Examples, refuse_gradient_at_clean_of_kl, setups, warn_if_all_zero


@dataclass(frozen=True)
class RelPConfig:
    ah_rule: bool = False  # attention patterns constant in the backward (LRP's AH-rule): q/k edges score 0


def score(model, task, cfg: RelPConfig, ablation: str = "corrupted", seed: int = 0, batch_size: int | None = None,
          per_example: bool = False):
    """Scores [dst, src]; per_example: (scores, each example's [n, dst, src]), from the same passes."""
    refuse_gradient_at_clean_of_kl(task, "relp")
    relevance = "lrp-ah" if cfg.ah_rule else "lrp"
    edges, examples = 0, Examples(model.graph, "edge")
    for s in setups(model, task, ablation, seed, batch_size):
        raw = attribute(model, s.batch.clean, s.ablated, s.objective, consume=True, shared=s.shared,
                        per_example=per_example, relevance=relevance)
        if per_example:
            raw, parts = raw
            examples.add(s, -s.sign * s.batch.size * parts)
        edges = edges - s.sign * s.weight * raw
    edges = warn_if_all_zero(edges, task, "relp")
    return (edges, examples.data) if per_example else edges
