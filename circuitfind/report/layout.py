"""Where each node of a graph is drawn, and which node each receiver belongs to — shared by the
matplotlib figures, the Graphviz output and the interactive page, so all three look alike.

Rows from the bottom: `input`, then per layer its attention heads and, one row up, its MLP; `logits`
on top. Heads spread evenly over the left 80% of the width, MLPs sit in a column on the right, input and
logits in the middle, so edges between heads and MLPs never run along one line. Edges that skip rows
are drawn bent (`bend`) so that those leaving one node stay apart.
"""

from __future__ import annotations

from circuitfind.graph import Graph


def node_positions(g: Graph) -> dict[str, tuple[float, float]]:
    """Node name → (x in [0, 1], row), for every sender and `logits`."""
    pos = {"input": (0.42, 0.0)}
    for l in range(g.n_layers):
        for h in range(g.n_heads):
            pos[f"a{l}.h{h}"] = (0.8 * (h + 0.5) / g.n_heads, 2.0 * l + 1)
        parts = g._mlp_names(l)  # the MLP, or its experts side by side in the right fifth of the row
        for j, name in enumerate(parts):
            pos[name] = (0.92 if len(parts) == 1 else 0.82 + 0.16 * (j + 0.5) / len(parts), 2.0 * l + 2)
    pos["logits"] = (0.42, 2.0 * g.n_layers + 1)
    return pos


# a head's q, k and v inputs from one sender fan out (an expert's router input bends as a query)
KIND_BEND = {"q": -0.15, "k": 0.15, "v": 0.0, "": 0.0, "in": 0.0, "router": -0.15}


def bend(row_from: float, row_to: float, kind: str = "") -> float:
    """Curvature of an edge (matplotlib's arc3 rad): straight between neighbouring rows, bent more the
    more rows it skips; q and k inputs bent to either side of v."""
    skip = abs(row_to - row_from)
    return (0.0 if skip <= 1 else min(0.5, 0.08 * skip)) + KIND_BEND[kind]


def receiver_parts(receiver: str) -> tuple[str, str]:
    """`a1.h2<k>` → (`a1.h2`, `k`); `m3.e1<router>` → (`m3.e1`, `router`); `m3` → (`m3`, ``)."""
    if receiver.endswith(">"):
        node, _, kind = receiver[:-1].partition("<")
        return node, kind
    return receiver, ""


def circuit_edges(scores, mask) -> list[tuple[str, str, str, float]]:
    """(sender, receiving node, q|k|v|'', score) of each edge in a bool mask [dst, src]."""
    g = scores.graph
    out = []
    for d, s in (mask & g.edge_mask).nonzero().tolist():
        node, kind = receiver_parts(g.receivers[d])
        out.append((g.senders[s], node, kind, float(scores.scores[d, s])))
    return out
