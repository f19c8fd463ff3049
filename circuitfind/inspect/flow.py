"""The per-prompt information-flow graph (Ferrando & Voita 2024, as the LLM Transparency Tool shows
it): one prompt, one position; each edge weighted by its sender's proximity share of the receiver's
input (`methods.ifr`), edges below τ dropped, then only what still reaches the logits kept."""

from __future__ import annotations

from circuitfind.circuit import Circuit, EdgeScores
from circuitfind.inspect.common import position_in, tokens_of
from circuitfind.methods.ifr import contribution_graph
from circuitfind.prune import without_dangling


def flow_graph(model, prompt, threshold: float = 0.04, position: int = -1) -> tuple[EdgeScores, Circuit]:
    """(the contribution weights of every edge, the graph at threshold τ) for one prompt."""
    tokens = tokens_of(model, prompt)
    w = contribution_graph(model, tokens[0], position_in(position, tokens.shape[-1])).float().cpu()
    g = model.graph
    scores = EdgeScores(w, g, method="ifr", model=model.name, config={"threshold": threshold, "position": position})
    kept = without_dangling(g, (w >= threshold) & g.edge_mask)
    return scores, Circuit(kept, g, {"kind": "flow-graph", "threshold": threshold, "position": position})
