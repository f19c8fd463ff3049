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

from circuitfind.circuit import Circuit, EdgeScores, _atomic_write, read_json, refuse_incomplete
from circuitfind.errors import ConfigError
from circuitfind.report import figures, html, tables
from circuitfind.report import spans as span_report


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


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _numbers(x) -> bool:
    return isinstance(x, list) and all(_number(v) for v in x)


# what the report reads of result.json, and the form it must have
RESULT_FIELDS = {"model": lambda x: isinstance(x, str), "task": lambda x: isinstance(x, str),
                 "method": lambda x: isinstance(x, str), "ablation": lambda x: isinstance(x, str),
                 "n_edges": _number, "n_edges_total": _number, "cpr": _number, "cmd": _number,
                 "faithfulness": lambda x: x is None or _number(x), "roc_auc": lambda x: x is None or _number(x),
                 "seconds": lambda x: x is None or _number(x), "provenance": lambda x: x is None or isinstance(x, dict),
                 "curve": lambda c: isinstance(c, dict) and all(_numbers(c.get(k)) for k in
                                                                ("fractions", "faithfulness_signed"))
                 and (c.get("faithfulness_absolute") is None or _numbers(c["faithfulness_absolute"]))}


def read_run(run_dir) -> tuple[EdgeScores, Circuit, dict, dict | None]:
    """A run directory's scores, circuit, result.json and inspect.json (None if absent), each checked: an
    unfinished run, a missing file or a damaged one is refused, naming the file and what is wrong."""
    d = Path(run_dir)
    if not d.is_dir():
        raise ConfigError(f"{str(d)!r} is not a directory; write a run directory with `circuitfind discover --out DIR`")
    refuse_incomplete(d)
    missing = [f for f in ("scores.json", "scores.safetensors", "circuit.json", "result.json") if not (d / f).exists()]
    if missing:
        raise ConfigError(f"{str(d)!r} is not a complete run directory (missing {', '.join(missing)}); "
                          "write one with `circuitfind discover --out DIR`")
    scores, circuit = EdgeScores.load(d), Circuit.load(d / "circuit.json")
    result = read_json(d / "result.json", "a run's result")
    wrong = [k for k, fits in RESULT_FIELDS.items() if not fits(result.get(k))]
    if wrong:
        raise ConfigError(f"{d / 'result.json'} is damaged: {', '.join(repr(k) for k in wrong)} missing or of the "
                          "wrong type; rerun discover to write it again")
    inspect = None
    if (d / "inspect.json").exists():
        inspect = read_json(d / "inspect.json", "the examples and logit lens of a run")
        lens = inspect.get("lens")
        if not all(isinstance(inspect.get(k), kind) for k, kind in (("lens", list), ("examples", list), ("task", dict))) \
                or not all(isinstance(r, dict) and isinstance(r.get("node"), str) for r in lens):
            raise ConfigError(f"{d / 'inspect.json'} is damaged: it needs 'lens', 'examples' and 'task'; rerun "
                              "discover to write it again")
        flow = inspect.get("token_flow")
        if flow is not None and not (isinstance(flow, dict) and isinstance(flow.get("tokens"), list)
                                     and isinstance(flow.get("edges"), list) and isinstance(flow.get("lens"), dict)
                                     and all(isinstance(e, dict) and {"rows", "src", "dst", "weight"} <= set(e)
                                             for e in flow["edges"])):
            raise ConfigError(f"{d / 'inspect.json'} is damaged: its 'token_flow' needs tokens, edges and lens; "
                              "rerun discover to write it again")
    return scores, circuit, result, inspect


def write_report(run_dir) -> Path:
    """Render figures, tables and report.html in run_dir from its artifacts (checked first: nothing is
    written beside a damaged one); return the page's path."""
    import circuitfind.arguments as arguments

    arguments.check(run_dir=run_dir)
    return render(Path(run_dir), *read_run(run_dir))


def render(d: Path, scores: EdgeScores, circuit: Circuit, result: dict, inspect: dict | None) -> Path:
    """The report of a run, from its artifacts in memory, into d (discover renders a run it has not yet put in
    place); → the page's path."""
    fig_dir, tab_dir = d / "figures", d / "tables"
    units_section = span_report.section(scores, circuit)  # position-aware runs: their units, spans as columns
    if scores.spans:
        units = tables.units_rows(scores, 20)
        _write_table(tab_dir / "top_units", ("#", "unit", "score"), units, f"Top (edge, span) units ({result['method']}).",
                     "tab:top-units")
    scores, circuit = span_report.flat(scores, circuit)  # every other figure and table: the node-graph view
    label = f"{result['task']} · {result['model']} · {result['method']}"
    frequency = None if scores.intervals is None else scores.intervals.get("frequency")
    figures.circuit(scores, circuit, fig_dir / "circuit", title=f"{label}: {circuit.n_edges} edges",
                    frequency=frequency)
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
    _write_table(tab_dir / f"top_{kind}s", tables.top_header(scores, kind), top, f"Top {kind}s ({result['method']}).",
                 f"tab:top-{kind}s")
    page = d / "report.html"
    _write(page, html.page(scores, circuit, result, inspect, fig_dir, extra=units_section))
    return page


__all__ = ["read_run", "render", "write_report"]
