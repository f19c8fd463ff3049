"""From scores to a circuit: top-n, threshold or greedy selection, then dangling-edge removal.

    circuit = cf.prune(scores, edges=200)                       # the 200 highest |score| edges
    circuit = cf.prune(scores, threshold=0.01, absolute=False)  # every edge scoring ≥ 0.01
    circuit = cf.prune(scores, edges=200, strategy="greedy")    # grown backwards from the logits
    circuit = cf.prune(node_scores, nodes=5)                    # the 5 best nodes and the edges among them

Node scores (`eap-node`, `eap-ig-node`: each node's score written on all its out-edges) are sized
in nodes: `edges=N` takes the most top nodes whose circuit has at most N edges, since the top N
edges of such scores would be out-edges of a few nodes that nothing feeds (dangling, then removed).

An edge is dangling when it lies on no path from `input` to `logits` inside the circuit; such edges
change nothing (or only through nodes that reach no output) and are removed, and the count is kept
in the circuit's provenance.
"""

from __future__ import annotations

import heapq
import math

import torch
from torch import Tensor

import circuitfind.arguments as arguments
from circuitfind.circuit import Circuit, EdgeScores
from circuitfind.errors import ConfigError, count
from circuitfind.graph import Graph


def prune(scores: EdgeScores, edges: int | None = None, *, nodes: int | None = None, threshold: float | None = None,
          strategy: str = "topn", absolute: bool = True, remove_dangling: bool = True) -> Circuit:
    """A circuit from scores: `edges=N` top edges, `nodes=K` top nodes (a node ranks by its best
    out-edge; the circuit is every edge among the K), or every edge with score ≥ `threshold`. Node
    scores (`eap-node`, `eap-ig-node`) given `edges=N` make the largest top-node circuit of ≤ N edges."""
    arguments.check(scores=scores, edges=edges, nodes=nodes, threshold=threshold, strategy=strategy, absolute=absolute,
                    remove_dangling=remove_dangling)
    g = scores.graph
    key = (scores.scores.abs() if absolute else scores.scores).masked_fill(~g.edge_mask, float("-inf"))
    if strategy not in ("topn", "threshold", "greedy"):
        raise ConfigError(f"unknown strategy {strategy!r}; use topn, threshold or greedy")
    sizes = {"edges": edges, "nodes": nodes, "threshold": threshold}
    given = [name for name, value in sizes.items() if value is not None]
    if len(given) != 1:  # one way to size a circuit; a second one would be ignored
        raise ConfigError(f"give exactly one of edges=, nodes= or threshold=; got {', '.join(given) or 'none'}")
    takes = {"greedy": "edges", "threshold": "threshold"}.get(strategy)  # topn, the default, takes any
    if takes not in (None, given[0]):
        raise ConfigError(f"the {strategy} strategy takes {takes}=, not {given[0]}=")
    if nodes is not None:
        nodes = count(nodes, "nodes", most=g.n_senders)
        mask, strategy, chosen = top_nodes(g, node_order(key), nodes), "top-nodes", {"nodes": nodes}
    elif edges is not None and strategy == "topn" and scores.level == "node":
        edges = count(edges, "edges", most=g.n_edges)
        order = node_order(key)
        nodes = nodes_within(g, order, edges)
        mask, strategy, chosen = top_nodes(g, order, nodes), "top-nodes", {"edges": edges, "nodes": nodes}
    elif threshold is not None:
        try:
            value = float(threshold)
        except (TypeError, ValueError, RuntimeError):
            value = math.nan
        if math.isnan(value) or isinstance(threshold, bool):
            raise ConfigError(f"threshold must be a number, got {threshold!r}")
        threshold = value
        mask, strategy, chosen = key >= threshold, "threshold", {"threshold": threshold}
    else:
        edges = count(edges, "edges", most=g.n_edges)
        mask = greedy(g, key, edges) if strategy == "greedy" else top_n(key, edges)
        chosen = {"edges": edges}
    before = int(mask.sum())
    if remove_dangling:
        mask = without_dangling(g, mask)
    provenance = scores.metadata() | {"kind": "circuit", "strategy": strategy, "absolute": absolute, **chosen,
                                      "dangling_removed": before - int(mask.sum())}
    return Circuit(mask, g, provenance)


def top_n(key: Tensor, n: int) -> Tensor:
    """Bool mask of the n largest entries of key [dst, src] (ties broken by position)."""
    mask = torch.zeros(key.numel(), dtype=torch.bool)
    if n:
        mask[key.flatten().topk(n).indices] = True
    return mask.view_as(key)


def node_order(key: Tensor) -> Tensor:
    """Senders by their best out-edge's key [dst, src], best first, ties by position (so the top k+1
    nodes hold the top k, and the report's slider can take prefixes)."""
    return key.max(0).values.argsort(descending=True, stable=True)


def top_nodes(g: Graph, order: Tensor, k: int) -> Tensor:
    """Edge mask of the first k nodes of `node_order`: their out-edges (those into other nodes are
    dangling, removed after)."""
    kept = torch.zeros(g.n_senders, dtype=torch.bool)
    kept[order[:k]] = True
    return g.nodes_to_edges(kept)


def nodes_within(g: Graph, order: Tensor, n_edges: int) -> int:
    """The most top nodes whose circuit (dangling edges removed) has at most n_edges edges: circuits of
    more nodes hold every edge of those of fewer, so the count is found by bisection."""
    low, high = 0, g.n_senders  # the answer lies in [low, high]
    while low < high:
        mid = (low + high + 1) // 2
        if int(without_dangling(g, top_nodes(g, order, mid)).sum()) <= n_edges:
            low = mid
        else:
            high = mid - 1
    return low


def greedy(g: Graph, key: Tensor, n: int) -> Tensor:
    """Grow from the logits: repeatedly add the best edge whose receiver's node is already in the circuit."""
    mask = torch.zeros_like(key, dtype=torch.bool)
    in_circuit = torch.zeros(g.n_senders, dtype=torch.bool)
    heap: list[tuple[float, int, int]] = []

    def offer(dst: int) -> None:
        for src in g.edge_mask[dst].nonzero()[:, 0].tolist():
            heapq.heappush(heap, (-float(key[dst, src]), dst, src))

    offer(g.logits_receiver)
    receivers_of = {}
    for dst, node in enumerate(g.receiver_node.tolist()):
        receivers_of.setdefault(node, []).append(dst)
    while heap and int(mask.sum()) < n:
        _, dst, src = heapq.heappop(heap)
        if mask[dst, src]:
            continue
        mask[dst, src] = True
        if not in_circuit[src]:
            in_circuit[src] = True
            for r in receivers_of.get(src, []):
                offer(r)
    return mask


def without_dangling(g: Graph, mask: Tensor) -> Tensor:
    """Keep only edges on some input → logits path of the circuit."""
    node = g.receiver_node
    reached = torch.zeros(g.n_senders, dtype=torch.bool)  # reachable from input through the circuit
    reached[0] = True
    useful = torch.zeros(g.n_senders, dtype=torch.bool)  # reaches the logits through the circuit
    for s in range(1, g.n_senders):  # senders are in topological order
        rows = (node == s).nonzero()[:, 0]
        reached[s] = bool((mask[rows] & reached).any())
    useful |= mask[g.logits_receiver]
    for s in range(g.n_senders - 1, -1, -1):
        outs = mask[:, s].nonzero()[:, 0]
        if len(outs) and bool(useful[node[outs][node[outs] >= 0]].any()):
            useful[s] = True
    keep_dst = torch.cat([useful[node[:-1]], torch.tensor([True])])  # receivers whose node reaches the logits
    return mask & reached[None, :] & keep_dst[:, None] & torch.cat([reached[node[:-1]], torch.tensor([True])])[:, None]
