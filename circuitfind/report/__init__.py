"""Reports for papers, rendered from a run directory's saved artifacts (no model needed):

    figures/  circuit, faithfulness, heads, scores, lens  (.png and .pdf), circuit.dot
    tables/   summary.{tex,md}, top_edges.{tex,md} (top_nodes for node scores)
    report.html

`write_report(run_dir)` is what `circuitfind report DIR` calls; `cf.discover(..., out=DIR)` calls it
after saving `inspect.json` (the examples and the nodes' logit lens, which need the model).
"""

from __future__ import annotations

import json
from pathlib import Path

from circuitfind.circuit import Circuit, EdgeScores, _atomic_write
from circuitfind.errors import ConfigError
from circuitfind.report import figures, html, tables


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"))


def _write_table(stem: Path, header, rows, caption: str, label: str) -> str:
    """A table as stem.md and stem.tex (booktabs) → its Markdown. The suffixes are appended, not swapped
    in, as `figures.save` does: a name with a dot of its own ("overlap-Qwen2.5_0.5B-ioi") keeps all of it."""
    md = tables.markdown(header, rows)
    _write(stem.with_name(stem.name + ".md"), md)
    _write(stem.with_name(stem.name + ".tex"), tables.latex(header, rows, caption, label))
    return md


def _flow_figure(graph, flow: dict, path: Path) -> None:
    import torch

    values = torch.zeros(graph.n_receivers, graph.n_senders)
    for name, w in flow["edges"]:
        values[graph.edge_index(name)] = w
    figures.circuit(EdgeScores(values, graph, method="ifr"), Circuit(values > 0, graph), path,
                    title=f"information flow, example {flow['example']} (τ={flow['threshold']})")


def write_report(run_dir) -> Path:
    """Render figures, tables and report.html in run_dir from its artifacts; return the page's path."""
    d = Path(run_dir)
    missing = [f for f in ("scores.json", "scores.safetensors", "circuit.json", "result.json") if not (d / f).exists()]
    if missing:
        raise ConfigError(f"{str(d)!r} is not a complete run directory (missing {', '.join(missing)}); "
                          "write one with `circuitfind discover --out DIR`")
    scores, circuit = EdgeScores.load(d), Circuit.load(d / "circuit.json")
    result = json.loads((d / "result.json").read_text())
    inspect = json.loads((d / "inspect.json").read_text()) if (d / "inspect.json").exists() else None
    fig_dir, tab_dir = d / "figures", d / "tables"
    label = f"{result['task']} · {result['model']} · {result['method']}"
    figures.circuit(scores, circuit, fig_dir / "circuit", title=f"{label}: {circuit.n_edges} edges")
    figures.curves({result["method"]: result}, fig_dir / "faithfulness", title=f"faithfulness: {result['task']} · {result['model']}")
    figures.head_heatmap(scores, fig_dir / "heads")
    figures.score_distribution(scores, fig_dir / "scores")
    if inspect:
        in_circuit = set(circuit.nodes())
        figures.lens([r for r in inspect["lens"] if r["node"] in in_circuit], fig_dir / "lens")
        if inspect.get("flow"):
            _flow_figure(scores.graph, inspect["flow"], fig_dir / "flow")
    _write(fig_dir / "circuit.dot", figures.dot(scores, circuit))
    caption = f"Circuit found by {result['method']} for {result['task']} on {result['model']}."
    rows, header = tables.summary_rows([result]), tables.SUMMARY_COLUMNS
    _write_table(tab_dir / "summary", header, rows, caption, "tab:circuit-summary")
    kind, top = tables.top_rows(scores, 20)  # top_edges, or top_nodes for node scores
    _write_table(tab_dir / f"top_{kind}s", ("#", kind, "score"), top, f"Top {kind}s ({result['method']}).",
                 f"tab:top-{kind}s")
    page = d / "report.html"
    _write(page, html.page(scores, circuit, result, inspect, fig_dir))
    return page


__all__ = ["write_report"]
