"""Position-aware circuits against circuits that ignore positions (issue 32), on toy-lm.

For each task: the smallest circuit with faithfulness ≥ 0.9 on the test split, (a) found without positions and
then expanded to every span (its units counted), (b) found over (edge, span) units; the overlap of the top 1% of
edges ranked by |Σ over spans| (positions ignored: the cancellation PEAP measures) and by Σ over spans |·|; and
the cost of position-aware scoring as a multiple of the same method without positions, the two in turns.
Sizes are searched on the MIB fractions, then refined between the last size below and the first above 0.9.
Run from the repository root: .venv/bin/python benchmarks/positions.py [n] [method]"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import circuitfind as cf  # noqa: E402
from circuitfind.evaluate import MIB_FRACTIONS  # noqa: E402

TARGET = 0.9


def smallest(model, test, scores, total: int) -> tuple[int, float]:
    """The fewest edges (or units) of top-|score| circuits reaching TARGET, and that faithfulness."""
    def f(k):
        return cf.evaluate(model, test, cf.prune(scores, edges=k))["faithfulness"]
    sizes = sorted({max(1, int(x * total)) for x in MIB_FRACTIONS})
    low, high = 0, None
    for k in sizes:
        if f(k) >= TARGET:
            high = k
            break
        low = k
    if high is None:
        return total, f(total)
    for _ in range(6):  # refine by bisection (faithfulness is not monotone in size: this is a search, not a proof)
        if high - low <= 1:
            break
        mid = (low + high) // 2
        low, high = (low, mid) if f(mid) >= TARGET else (mid, high)
    return high, f(high)


def top_overlap(scores: cf.EdgeScores, fraction: float = 0.01) -> float:
    """Overlap of the top edges by |Σ_spans score| and by Σ_spans |score|."""
    k = max(1, int(fraction * scores.graph.n_edges))
    mask = scores.graph.edge_mask
    cancel = scores.scores.sum((-1, -2)).abs()[mask]
    keep = scores.scores.abs().sum((-1, -2))[mask]
    a, b = set(cancel.topk(k).indices.tolist()), set(keep.topk(k).indices.tolist())
    return len(a & b) / k


def main(n: int = 40, method: str = "eap-ig"):
    model = cf.load_model("toy-lm")
    print(f"toy-lm ({model.graph.n_edges} edges), {method}, n={n} (test split n/4), corrupted ablation, "
          f"target faithfulness {TARGET}\n")
    print("| task | spans | without positions: edges → units kept (f) | position-aware: units kept (f) | "
          "units in the graph | top-1% edge overlap | scoring time, positions / none |")
    print("|---|---|---|---|---|---|---|")
    for name in ("ioi", "greater-than"):
        task = cf.load_task(name, n=n)
        test = task.with_split("test", n=max(1, n // 4))
        times = {"plain": [], "spans": []}
        for _ in range(2):  # in turns
            start = time.perf_counter()
            plain = cf.score_edges(model, task, method)
            times["plain"].append(time.perf_counter() - start)
            start = time.perf_counter()
            spans = cf.score_edges(model, task, method, positions="spans")
            times["spans"].append(time.perf_counter() - start)
        ratio = min(times["spans"]) / min(times["plain"])
        edges, f_plain = smallest(model, test, plain, model.graph.n_edges)
        expanded = cf.prune(plain, edges=edges).mask[..., None, None] & spans.units
        units_expanded = int(expanded.sum())
        f_expanded = cf.evaluate(model, test, cf.Circuit(expanded, model.graph, {}, spans.spans, "spans"))["faithfulness"]
        units, f_units = smallest(model, test, spans, spans.n_edges)
        print(f"| {name} | {', '.join(spans.spans)} | {edges} → {units_expanded} ({f_expanded:.3f}) | {units} "
              f"({f_units:.3f}) | {spans.n_edges} | {top_overlap(spans):.2f} | {ratio:.1f}x "
              f"({min(times['spans']):.2f} s / {min(times['plain']):.2f} s) |")
        sys.stdout.flush()


if __name__ == "__main__":
    main(*(int(a) if a.isdigit() else a for a in sys.argv[1:]))
