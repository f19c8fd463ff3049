"""Paper figures (matplotlib, Agg backend): each saved as PNG (300 dpi) and vector PDF, sized for one
column of a two-column paper (3.3 in wide) unless the content needs more.

    circuit(scores, circuit, path)           the circuit, nodes by layer, edges by score
    curves({method: curve}, path)            faithfulness vs circuit size, CPR/CMD in the legend
    head_heatmap(scores, path)               node importance per layer × head (+ MLP column)
    score_distribution(scores, path)         histogram of |edge score|
    lens(lens_rows, path)                    direct effect of each circuit node on the answer
    dot(scores, circuit)                     the circuit as Graphviz source
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from circuitfind.report.layout import bend, circuit_edges, node_positions  # noqa: E402

COLUMN = 3.3  # inches: one column of a two-column paper
STYLES = {"q": (0, (4, 2)), "k": (0, (1, 1.5)), "v": "solid", "": "solid",  # q dashed, k dotted
          "in": "solid", "router": (0, (4, 2))}  # an expert's input as a value, its router input as a query
MAX_DRAWN_EDGES = 300  # a static circuit figure draws at most the strongest this many (legible, and seconds to render)
plt.rcParams.update({"font.size": 7, "axes.titlesize": 8, "axes.labelsize": 7, "legend.fontsize": 6,
                     "pdf.fonttype": 42, "svg.fonttype": "none"})


def save(fig, path: Path) -> list[Path]:
    """Write fig as path.png and path.pdf (parents created) and close it. The suffixes are appended, not
    swapped in: a name with a dot of its own ("faithfulness-Qwen2.5_0.5B-ioi") keeps all of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = [path.with_name(path.name + ".png"), path.with_name(path.name + ".pdf")]
    fig.savefig(out[0], dpi=300, bbox_inches="tight")
    fig.savefig(out[1], bbox_inches="tight", metadata={"CreationDate": None})  # same figure, same bytes
    plt.close(fig)
    return out


def _edge_colour(score: float, top: float):
    strength = 0.25 + 0.75 * min(1.0, abs(score) / top) if top > 0 else 1.0
    return (0.80, 0.15, 0.10, strength) if score >= 0 else (0.10, 0.30, 0.80, strength)


def circuit(scores, circ, path: Path, title: str = "", frequency=None) -> list[Path]:
    """Nodes by layer (input at the bottom, logits on top); colour = sign (red supports the task, blue
    opposes it), width and opacity = |score|, line style = which input of a head (q dashed, k dotted,
    v solid). Nodes with no edge drawn are hidden. A circuit of more than MAX_DRAWN_EDGES edges is drawn
    by its strongest (|score|) ones, and the title says so (the report page draws any number).
    frequency [dst, src]: opacity is each edge's frequency in the circuits of bootstrap resamples instead."""
    g = scores.graph
    pos = node_positions(g)
    edges = sorted(circuit_edges(scores, circ.mask), key=lambda e: abs(e[3]))[-MAX_DRAWN_EDGES:]
    used = {n for s, d, _, _ in edges for n in (s, d)}
    top = max((abs(e[3]) for e in edges), default=0.0)
    rows = 2 * g.n_layers + 2
    fig, ax = plt.subplots(figsize=(max(COLUMN, 0.35 * g.n_heads + 1), min(9.0, max(2.5, 0.32 * rows))))
    for s, d, kind, sc in edges:  # weakest first, so the strongest are drawn on top
        (x0, y0), (x1, y1) = pos[s], pos[d]
        width = 0.4 + 2.2 * (abs(sc) / top if top else 1)
        colour = _edge_colour(sc, top)
        if frequency is not None:  # how sure: in how many resamples' circuits the edge is
            f = float(frequency[g.edge_index(f"{s}->{d}<{kind}>" if kind else f"{s}->{d}")])
            colour = (*colour[:3], 0.1 + 0.9 * f)
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="-|>", color=colour, lw=width, linestyle=STYLES[kind],
                                    shrinkA=6, shrinkB=6, mutation_scale=6,
                                    connectionstyle=f"arc3,rad={bend(y0, y1, kind)}"))
    for n in used:
        x, y = pos[n]
        mlp = n.startswith("m") or n in ("input", "logits")
        ax.scatter([x], [y], s=140 if mlp else 90, marker="s" if mlp else "o", zorder=3,
                   color="#f2e6c9" if mlp else "#d9e8f5", edgecolors="#333333", linewidths=0.6)
        ax.text(x, y, n, ha="center", va="center", fontsize=4.5, zorder=4)
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.8, rows - 0.2)
    ax.set_yticks([2 * l + 1.5 for l in range(g.n_layers)], [f"L{l}" for l in range(g.n_layers)])
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    legend = [Line2D([0], [0], color="k", lw=1, linestyle=STYLES[k], label=lab) for k, lab in
              (("q", "query"), ("k", "key"), ("v", "value / MLP / logits"))]
    legend += [Line2D([0], [0], color=_edge_colour(1, 1), lw=1.5, label="score > 0"),
               Line2D([0], [0], color=_edge_colour(-1, 1), lw=1.5, label="score < 0")]
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    title = title or f"circuit: {circ.n_edges} of {g.n_edges} edges"
    if len(edges) < circ.n_edges:
        title += f"\n(the strongest {len(edges)} drawn)"
    ax.set_title(title)
    return save(fig, path)


def curves(runs: dict[str, dict], path: Path, title: str = "") -> list[Path]:
    """Faithfulness against the fraction of edges kept (log scale), one line per method; runs maps a
    label to a result's `curve` dict plus its `cpr`/`cmd`."""
    fig, ax = plt.subplots(figsize=(COLUMN, 2.3))
    for label, r in runs.items():
        xs = [100 * f for f in r["curve"]["fractions"]]
        line, = ax.plot(xs, r["curve"]["faithfulness_signed"], marker="o", ms=2.5, lw=1,
                        label=f"{label} (CPR {r['cpr']:.3f}, CMD {r['cmd']:.3f})")
        if r["curve"].get("faithfulness_absolute"):  # absent for a curve of one ranking
            ax.plot(xs, r["curve"]["faithfulness_absolute"], ls="--", lw=0.8, color=line.get_color())
        bands = (r.get("ci") or {}).get("curve") or {}
        for key, alpha in (("faithfulness_signed", 0.2), ("faithfulness_absolute", 0.1)):  # bootstrap intervals
            if bands.get(key):
                low, high = zip(*bands[key])
                ax.fill_between(xs, low, high, color=line.get_color(), alpha=alpha, lw=0)
    ax.axhline(1.0, color="#888888", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("edges kept (%)")
    ax.set_ylabel("faithfulness")
    ax.set_title(title or "faithfulness")
    styles = [Line2D([0], [0], color="black", lw=1, label="ranked by score (CPR)"),
              Line2D([0], [0], color="black", lw=0.8, ls="--", label="ranked by |score| (CMD)")]
    ax.legend(handles=ax.get_legend_handles_labels()[0] + styles, frameon=False)
    return save(fig, path)


def node_importance(scores) -> tuple[torch.Tensor, torch.Tensor]:
    """(heads [layer, head], mlps [layer]): Σ |score| over each node's out-edges; for node scores
    (written whole on every out-edge) |the node's score|, which a sum would multiply by its out-degree."""
    g = scores.graph
    per_sender = scores.node_values().abs() if scores.level == "node" else scores.scores.abs().sum(0)
    heads = torch.tensor([[float(per_sender[g.head_sender(l, h)]) for h in range(g.n_heads)] for l in range(g.n_layers)])
    mlps = torch.tensor([float(per_sender[list(g.mlp_senders(l))].sum()) for l in range(g.n_layers)])  # (experts summed)
    return heads, mlps


def head_heatmap(scores, path: Path) -> list[Path]:
    g = scores.graph
    heads, mlps = node_importance(scores)
    grid = torch.cat([heads, mlps[:, None]], dim=1)
    fig, ax = plt.subplots(figsize=(COLUMN, max(1.6, 0.22 * g.n_layers + 0.8)))
    im = ax.imshow(grid.numpy(), cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(g.n_heads + 1), [str(h) for h in range(g.n_heads)] + ["MLP"])
    ax.set_yticks(range(g.n_layers), [str(l) for l in range(g.n_layers)])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("|node score|" if scores.level == "node" else "node importance (Σ |out-edge score|)")
    fig.colorbar(im, ax=ax, fraction=0.05)
    return save(fig, path)


def score_distribution(scores, path: Path) -> list[Path]:
    vals = scores.values().abs()
    fig, ax = plt.subplots(figsize=(COLUMN, 2.0))
    positive = vals[vals > 0]
    if len(positive):
        lo, hi = float(positive.min()), float(positive.max())
        bins = torch.logspace(torch.log10(torch.tensor(lo)), torch.log10(torch.tensor(hi * 1.001)), 40).tolist() if hi > lo else 10
        ax.hist(positive.numpy(), bins=bins, color="#4c72b0")
        ax.set_xscale("log")
    ax.set_xlabel("|edge score|")
    ax.set_ylabel("edges")
    ax.set_title(f"score distribution ({int((vals == 0).sum())} edges at exactly 0 not shown)")
    return save(fig, path)


def lens(rows: list[dict], path: Path) -> list[Path]:
    """Bar chart of each circuit node's direct effect on the answer logit difference."""
    rows = sorted(rows, key=lambda r: r["direct_effect"])
    fig, ax = plt.subplots(figsize=(COLUMN, max(1.5, 0.16 * len(rows) + 0.6)))
    ys = range(len(rows))
    ax.barh(list(ys), [r["direct_effect"] for r in rows],
            color=["#c0392b" if r["direct_effect"] >= 0 else "#2e5ea8" for r in rows])
    ax.set_yticks(list(ys), [r["node"] for r in rows])
    ax.axvline(0, color="k", lw=0.5)
    for y, r in zip(ys, rows):  # each node's top promoted (↑) and suppressed (↓) token
        up = r["promoted"][0][0] if r.get("promoted") else ""
        down = r["suppressed"][0][0] if r.get("suppressed") else ""
        ax.annotate(f"↑{up!r} ↓{down!r}", xy=(1.0, y), xycoords=("axes fraction", "data"), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=5, color="#444444")
    ax.set_xlabel("direct effect on answer logit difference")
    ax.set_title("logit lens of circuit nodes (↑ promoted, ↓ suppressed token)")
    return save(fig, path)


def dot(scores, circ) -> str:
    """Graphviz source of the circuit (layered, same colours and styles as `circuit`)."""
    edges = circuit_edges(scores, circ.mask)
    top = max((abs(e[3]) for e in edges), default=0.0)
    used = sorted({n for s, d, _, _ in edges for n in (s, d)})
    lines = ["digraph circuit {", "  rankdir=BT; node [fontname=Helvetica, fontsize=10];"]
    for n in used:
        shape = "box" if n.startswith("m") or n in ("input", "logits") else "ellipse"
        lines.append(f'  "{n}" [shape={shape}];')
    style = {"q": "dashed", "k": "dotted", "v": "solid", "": "solid", "in": "solid", "router": "dashed"}
    for s, d, kind, sc in edges:
        colour = "#cc2619" if sc >= 0 else "#1a4dcc"
        width = 0.5 + 2.5 * (abs(sc) / top if top else 1)
        label = f"{kind} " if kind else ""
        lines.append(f'  "{s}" -> "{d}" [color="{colour}", penwidth={width:.2f}, style={style[kind]}, '
                     f'tooltip="{s}->{d}{"<" + kind + ">" if kind else ""} {sc:.4g}", label="{label}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def depth_profiles(profiles: dict[str, dict], path: Path) -> list[Path]:
    """Circuits of different models side by side: per fifth of depth, the fraction of heads (left) and of MLPs
    (right) in each circuit (`circuit.depth_profile`)."""
    fig, axes = plt.subplots(1, 2, figsize=(COLUMN * 2, 2.3), sharey=True)
    for ax, kind in zip(axes, ("heads", "mlps")):
        for label, p in profiles.items():
            bins = p["bins"]
            ax.plot([100 * (i + 0.5) / bins for i in range(bins)], p[kind], marker="o", ms=3, lw=1, label=label)
        ax.set_title(f"{kind} in the circuit")
        ax.set_xlabel("depth (% of layers)")
    axes[0].set_ylabel("fraction of nodes")
    axes[0].legend(frameon=False, fontsize=6)
    return save(fig, path)


def token_flow(flow, path: Path) -> list[Path]:
    """A prompt's token-by-layer flow graph (`inspect.flow`): tokens across, residual states up (the embeddings,
    then after each layer's attention and FFN); edge width = weight; attention edges blue, FFN edges orange (drawn
    as a bar at their token), residual edges grey."""
    T, rows = len(flow.tokens), 2 * flow.n_layers + 1
    fig, ax = plt.subplots(figsize=(max(COLUMN, 0.45 * T + 1), min(9.0, max(2.5, 0.3 * rows + 1))))
    for e in flow.edges:
        (r0, r1), width = e.rows, 0.3 + 3.0 * e.weight
        if e.kind == "attn":
            ax.plot([e.src, e.dst], [r0, r1], color="#3b6fb6", lw=width, alpha=0.8, solid_capstyle="round")
        elif e.kind == "ffn":
            ax.plot([e.dst + 0.12, e.dst + 0.12], [r0, r1], color="#e08a1e", lw=width, alpha=0.9)
        else:
            ax.plot([e.dst, e.dst], [r0, r1], color="#999999", lw=width, alpha=0.7)
    for r, t in flow.nodes():
        ax.scatter([t], [r], s=14, color="#333333", zorder=3)
    ax.set_xticks(range(T), flow.tokens, rotation=60, ha="right", fontsize=6)
    ax.set_yticks([0] + [2 * l + 2 for l in range(flow.n_layers)], ["emb"] + [f"L{l}" for l in range(flow.n_layers)])
    ax.set_xlim(-0.6, T - 0.4)
    ax.set_title(f"information flow, token by layer (τ={flow.tau})")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return save(fig, path)
