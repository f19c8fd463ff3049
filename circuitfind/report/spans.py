"""Reports of position-aware runs: the circuit drawn with the spans as columns, and the node-graph view.

A position-aware run's scores and circuit are over (edge, query span, key span) units. The report's other
figures and tables read them projected onto the node graph (`flat`: an edge's score the sum over its units,
the circuit every edge kept at some span); `svg` draws the units themselves: one column per span, the rows
of `layout.node_positions` (input at the bottom, logits on top), a node (sender, span) where the sender writes
at that span, and each unit a line from its sender at the key span to its receiver's node at the query span
(hover: its name and score).
"""

from __future__ import annotations

import html

from circuitfind.circuit import Circuit, EdgeScores
from circuitfind.report.layout import node_positions, receiver_parts

MAX_DRAWN_UNITS = 400  # the strongest units of a larger circuit are drawn (the table lists them by name)


def flat(scores: EdgeScores, circuit: Circuit) -> tuple[EdgeScores, Circuit]:
    """The node-graph view of position-aware scores and circuit (unchanged without positions)."""
    if not scores.spans:
        return scores, circuit
    edge_scores = EdgeScores(scores.scores.sum((-1, -2)), scores.graph, scores.method, scores.model, scores.task,
                             scores.ablation, scores.config)
    kept = circuit.edge_mask
    return edge_scores, Circuit(kept, circuit.graph, circuit.provenance | {"edges": int(kept.sum())})


def svg(scores: EdgeScores, circuit: Circuit) -> str:
    """The circuit's units as an SVG, spans as columns (empty without positions)."""
    if not scores.spans:
        return ""
    g, spans = scores.graph, scores.spans
    pos = node_positions(g)
    T, rows = len(spans), 2 * g.n_layers + 2
    col, row_h, pad = max(90, 18 * g.n_heads + 30), 34, 30
    width, height = col * T + 2 * pad, row_h * rows + 2 * pad

    def at(node: str, span: int) -> tuple[float, float]:
        x, r = pos[node]
        return pad + col * (span + 0.1 + 0.8 * x), height - pad - row_h * (r + 0.5)

    units = [(float(scores.scores[d, s, t, k]), d, s, t, k) for d, s, t, k in circuit.mask.nonzero().tolist()]
    units = sorted(units, key=lambda u: abs(u[0]))[-MAX_DRAWN_UNITS:]
    top = max((abs(u[0]) for u in units), default=1.0) or 1.0
    lines, used = [], set()
    for value, d, s, t, k in units:
        node, kind = receiver_parts(g.receivers[d])
        (x1, y1), (x2, y2) = at(g.senders[s], k), at(node, t)
        used |= {(g.senders[s], k), (node, t)}
        colour = "#c0392b" if value >= 0 else "#2c5aa0"
        dash = {"q": ' stroke-dasharray="4 2"', "k": ' stroke-dasharray="1 2"'}.get(kind, "")
        name = html.escape(f"{g.edge_name(d, s)} @ {spans[k]}" + (f"→{spans[t]}" if t != k else "") + f": {value:.4g}")
        lines.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" '
                     f'stroke-width="{0.6 + 2.4 * abs(value) / top:.2f}" opacity="{0.35 + 0.65 * abs(value) / top:.2f}"'
                     f'{dash}><title>{name}</title></line>')
    heads = [f'<text x="{pad + col * (i + 0.5):.1f}" y="{pad - 10}" text-anchor="middle" font-size="12" '
             f'font-weight="bold">{html.escape(name)}</text>' for i, name in enumerate(spans)]
    grid = [f'<line x1="{pad + col * i}" y1="{pad - 4}" x2="{pad + col * i}" y2="{height - pad}" stroke="#ddd"/>'
            for i in range(T + 1)]
    dots = []
    for node, span in sorted(used):
        x, y = at(node, span)
        dots.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="#333"><title>{html.escape(node)} at '
                    f'{html.escape(spans[span])}</title></circle>')
    return (f'<svg id="span-circuit" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}">{"".join(grid + heads + lines + dots)}</svg>')


def section(scores: EdgeScores, circuit: Circuit) -> str:
    """The page's section on the circuit over spans (empty without positions)."""
    if not scores.spans:
        return ""
    drawn = min(circuit.n_edges, MAX_DRAWN_UNITS)
    kind = "the spans the task labels" if scores.positions == "spans" else "each token position"
    rows = "".join(f"<tr><td>{i + 1}</td><td class=\"mono\">{html.escape(name)}</td><td>{value:.4g}</td></tr>"
                   for i, (name, value) in enumerate(scores.top(20)))
    return (f'<h2>Circuit over spans</h2><p>Position-aware scores over {kind} ({", ".join(map(html.escape, scores.spans))}): '
            f'the circuit keeps {circuit.n_edges} of {scores.n_edges} (edge, span) units, on {int(circuit.edge_mask.sum())} '
            f'of the graph\'s {scores.graph.n_edges} edges ({drawn} strongest drawn). A column per span; a line joins a '
            'sender at the key span to the receiving node at the query span (for q, MLP and logits inputs the same '
            'span). The drawing above is the node-graph view: each edge scored by its units\' sum, its slider starting '
            'at the edges this circuit keeps at some span.</p>'
            f'<div class="row">{svg(scores, circuit)}</div>'
            f'<h3>Top units</h3><table><tr><th>#</th><th>unit</th><th>score</th></tr>{rows}</table>')
