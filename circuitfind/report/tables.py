"""Tables as LaTeX (booktabs) and Markdown, from result dicts and scores.

    summary(results)      one row per run: method, ablation, edges, faithfulness, CPR, CMD, ROC AUC, time
                          (with bootstrap intervals [low, high] where the run has them)
    top_rows(scores)      the highest-|score| edges (nodes, for node scores) with their scores (and intervals)
"""

from __future__ import annotations

import math

SUMMARY_COLUMNS = ("model", "task", "method", "ablation", "edges", "faithfulness", "CPR", "CMD", "ROC AUC", "seconds")


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _with_interval(x, ci, key: str) -> str:
    """A figure and, where the run has its bootstrap interval, the interval: `0.975 [0.960, 0.991]`."""
    interval = (ci or {}).get(key)
    if not interval or x is None or any(v is None or math.isnan(v) for v in interval):
        return _fmt(x)
    return f"{_fmt(x)} [{_fmt(interval[0])}, {_fmt(interval[1])}]"


def summary_rows(results: list[dict]) -> list[list[str]]:
    """One row per run; faithfulness, CPR and CMD with their intervals [low, high] where the run has them."""
    return [[r["model"], r["task"], r["method"], r["ablation"], f"{r['n_edges']}/{r['n_edges_total']}",
             _with_interval(r.get("faithfulness"), r.get("ci"), "faithfulness"),
             _with_interval(r.get("cpr"), r.get("ci"), "cpr"), _with_interval(r.get("cmd"), r.get("ci"), "cmd"),
             _fmt(r.get("roc_auc")), _fmt(r.get("seconds"), 1)] for r in results]


def top_header(scores, kind: str) -> tuple[str, ...]:
    """The columns of `top_rows`: with the scores' intervals, the interval and the in-circuit frequency too."""
    if scores.intervals is None or kind == "node":
        return ("#", kind, "score")
    level = f"{100 * scores.intervals['level']:g}%"
    return ("#", kind, "score", f"{level} interval") + (("in circuit",) if scores.intervals.get("frequency")
                                                          is not None else ())


def units_rows(scores, n: int = 20) -> list[list[str]]:
    """Rows (#, unit, score) of the n highest-|score| (edge, span) units of position-aware scores."""
    return [[str(i + 1), name, f"{value:.4g}"] for i, (name, value) in enumerate(scores.top(n))]


def top_rows(scores, n: int = 20) -> tuple[str, list[list[str]]]:
    """("edge", rows) of the n highest-|score| edges (with their bootstrap interval and in-circuit frequency
    where the scores have them, `top_header`); for node scores ("node", rows) of the n highest-|score| nodes
    (their edges would only repeat each node's one score)."""
    if scores.level == "node":
        values = scores.node_values()
        order = values.abs().argsort(descending=True, stable=True)[:n].tolist()
        return "node", [[str(i + 1), scores.graph.senders[s], f"{float(values[s]):.4g}"] for i, s in enumerate(order)]
    rows = []
    ci = scores.intervals
    for i, (name, s) in enumerate(scores.top(n)):
        row = [str(i + 1), name, f"{s:.4g}"]
        if ci is not None:
            at = scores.graph.edge_index(name)
            row.append(f"[{float(ci['low'][at]):.4g}, {float(ci['high'][at]):.4g}]")
            if ci.get("frequency") is not None:
                row.append(f"{float(ci['frequency'][at]):.2f}")
        rows.append(row)
    return "edge", rows


def markdown(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}", "–": "--"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in text)


def latex(header, rows, caption: str, label: str) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); every cell escaped."""
    align = "l" * min(4, len(header)) + "r" * max(0, len(header) - 4)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{latex_escape(caption)}}}",
             rf"\label{{{label}}}", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
