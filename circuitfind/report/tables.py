"""Tables as LaTeX (booktabs) and Markdown, from result dicts and scores.

    summary(results)      one row per run: method, ablation, edges, faithfulness, CPR, CMD, ROC AUC, time
    top_rows(scores)      the highest-|score| edges (nodes, for node scores) with their scores
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


def summary_rows(results: list[dict]) -> list[list[str]]:
    return [[r["model"], r["task"], r["method"], r["ablation"], f"{r['n_edges']}/{r['n_edges_total']}",
             _fmt(r.get("faithfulness")), _fmt(r.get("cpr")), _fmt(r.get("cmd")), _fmt(r.get("roc_auc")),
             _fmt(r.get("seconds"), 1)] for r in results]


def top_rows(scores, n: int = 20) -> tuple[str, list[list[str]]]:
    """("edge", rows) of the n highest-|score| edges; for node scores ("node", rows) of the n highest-|score|
    nodes (their edges would only repeat each node's one score)."""
    if scores.level == "node":
        values = scores.node_values()
        order = values.abs().argsort(descending=True, stable=True)[:n].tolist()
        return "node", [[str(i + 1), scores.graph.senders[s], f"{float(values[s]):.4g}"] for i, s in enumerate(order)]
    return "edge", [[str(i + 1), name, f"{s:.4g}"] for i, (name, s) in enumerate(scores.top(n))]


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
