"""How faithful a circuit is, on the task's test split.

    faithfulness f = (m(C) − m(∅)) / (m(N) − m(∅))       C: the circuit, N: the full model, ∅: no edges

`faithfulness_curve` evaluates the top-scoring circuits at the MIB circuit-track sizes (0.1 % … 100 %
of edges, dangling edges removed) in batched masked forwards, and integrates as MIB does (trapezoids
over the edge fraction): CPR = area under f with circuits ranked by signed score (higher is better),
CMD = area under |1 − f| with circuits ranked by |score| (lower is better).
`roc_auc` grades scores against a known circuit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

import circuitfind.arguments as arguments
from circuitfind.circuit import Circuit, EdgeScores
from circuitfind.engine.patching import Workspace, clean_logits, masked_forward
from circuitfind.engine.positional import span_forward
from circuitfind.errors import ConfigError, count
from circuitfind.methods.common import setups
from circuitfind.prune import prune
from circuitfind.spans import batch_spans
from circuitfind.task import Task, load_task
from circuitfind.uncertainty import LEVEL, curve_intervals, faithfulness_interval

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass
class CurveResult:
    """Faithfulness at each fraction of edges for the signed and the |score| ranking, the circuits'
    sizes after dangling edges are removed, and the areas: CPR (signed) and CMD (|1 − f|, |score|);
    with the metric itself of each circuit, of the full model and of the empty circuit."""

    fractions: list[float]
    n_edges_signed: list[int] = field(default_factory=list)
    faithfulness_signed: list[float] = field(default_factory=list)
    n_edges_absolute: list[int] = field(default_factory=list)
    faithfulness_absolute: list[float] = field(default_factory=list)
    cpr: float = 0.0
    cmd: float = 0.0
    metric_signed: list[float] = field(default_factory=list)
    metric_absolute: list[float] = field(default_factory=list)
    metric_full: float = float("nan")
    metric_empty: float = float("nan")
    # resamples > 0: bootstrap intervals ([low, high]) of each point's faithfulness and of CPR and CMD
    ci: dict | None = None

    def __repr__(self) -> str:  # a table: the fields' lists are long, and read best side by side
        def row(label, values, fmt):
            return f"  {label:<13}" + "".join(f"{fmt(v):>7}" for v in values)
        sizes = row("% of edges", self.fractions, lambda f: f"{100 * f:g}")
        return "\n".join([f"CurveResult(CPR {self.cpr:.3f}, CMD {self.cmd:.3f}; metric full {self.metric_full:.4g}, "
                          f"empty {self.metric_empty:.4g}", sizes,
                          row("f (signed)", self.faithfulness_signed, lambda f: f"{f:.3f}"),
                          row("f (|score|)", self.faithfulness_absolute, lambda f: f"{f:.3f}") + ")"])


def _test_task(task: Task | str, split: str) -> Task:
    task = load_task(task) if isinstance(task, str) else task
    return task if task.split == split else task.with_split(split)


def _metric_of_masks(model, parts, masks: Tensor, chunk: int, quiet: bool = True, examples: list | None = None,
                     spans: tuple[str, ...] = (), positions: str | None = None):
    """Mean metric over the task of each mask [k, dst, src] → [k], a few masks per forward, and of the
    full model; parts: the task's Setups (`setups`), each weighted by its share of the examples. examples: a
    list that receives the same forwards' metric per example, ([k, n], the full model's [n]) (for intervals).
    Position-aware masks [k, dst, src, T, T] over these spans run through the position-aware forward."""
    total, full, workspace = 0, 0.0, Workspace()
    each, each_full = [], []
    with torch.no_grad(), tqdm(total=len(masks) * len(parts), desc="faithfulness", unit="circuit",
                               disable=quiet) as bar:
        for setup in parts:
            out = []
            at = _spans_of(setup, spans, positions) if spans else None
            for chunk_masks in masks.split(chunk):
                chunk_masks = chunk_masks.to(model.device, model.dtype)
                if at is not None:
                    logits = span_forward(model, setup.batch.clean, setup.ablated, at, chunk_masks)
                else:
                    logits = masked_forward(model, setup.batch.clean, setup.ablated, chunk_masks, workspace=workspace,
                                            shared=setup.shared)
                out.append(setup.per_example(logits))
                bar.update(len(chunk_masks))
            values = torch.cat(out)  # [k, batch]
            clean = setup.per_example(setup.targets.clean_logits[None])[0]  # [batch]
            total = total + setup.weight * values.mean(1)
            full += setup.weight * float(clean.mean())
            each.append(values.double().cpu())
            each_full.append(clean.double().cpu())
    if examples is not None:
        examples.extend([torch.cat(each, 1), torch.cat(each_full)])
    return total, full


def _spans_of(setup, spans: tuple[str, ...], positions: str) -> Tensor:
    """A Setup's span of each position [batch, pos], checked to be over the spans a circuit or its scores name."""
    at, names = batch_spans(setup.batch, positions)
    if names != tuple(spans):
        raise ConfigError(f"the circuit is over the spans {', '.join(spans)} but these prompts' are "
                          f"{', '.join(names)}; evaluate it on prompts of the task it was found on")
    return at.to(setup.ablated.device)


def evaluate(model, task: Task | str, circuit: Circuit, *, ablation: str = "corrupted", split: str = "test",
             seed: int = 0, batch_size: int | None = None, resamples: int = 0, level: float = LEVEL) -> dict:
    """Metric of the circuit, the full model and the empty circuit, and the faithfulness, in one forward
    (a batch of at most batch_size examples at a time, if given). resamples > 0: also `ci`, the percentile
    bootstrap interval of the faithfulness at `level` (numerator and denominator resampled together, from the
    same forwards' per-example metrics; seeded by `seed`)."""
    arguments.check(model=model, task=task, circuit=circuit, ablation=ablation, split=split, seed=seed,
                    batch_size=batch_size, resamples=resamples, level=level)
    g = model.graph
    _check_graph("circuit is", circuit.graph, g)
    parts = setups(model, _test_task(task, split), ablation, seed, batch_size, share_prefix=not circuit.spans)
    masks = torch.stack([circuit.mask, torch.zeros_like(circuit.mask)]).float()
    examples: list = []
    values, m_full = _metric_of_masks(model, parts, masks, chunk=2, examples=examples, spans=circuit.spans,
                                      positions=circuit.positions)  # (full: the clean run)
    m_c, m_empty = values.tolist()
    out = {"metric_circuit": m_c, "metric_full": m_full, "metric_empty": m_empty,
           "faithfulness": faithfulness(m_c, m_full, m_empty), "n_edges": circuit.n_edges,
           "n_edges_total": g.n_edges}
    if circuit.spans:  # sized in (edge, span) units; the node-graph edges it touches beside
        out |= {"positions": circuit.positions, "spans": list(circuit.spans),
                "n_graph_edges": int(circuit.edge_mask.sum())}
    if resamples:
        (each, each_full) = examples
        out["ci"] = {"faithfulness": list(faithfulness_interval(each[0], each_full, each[1], resamples, seed, level)),
                     "level": level, "resamples": resamples, "seed": seed}
    return out


def _check_graph(what: str, graph, model_graph) -> None:
    if graph != model_graph:  # Graph is a frozen dataclass of its shape: layers, heads, parallel
        raise ConfigError(f"the {what} over a {graph} but the model's graph is {model_graph}")


def task_accuracy(model, task: Task | str, *, split: str = "test") -> float:
    """Fraction of examples where the model prefers a correct answer to every wrong one: the best
    correct logit beats the best wrong logit (the task's own contrast, not the whole vocabulary)."""
    arguments.check(model=model, task=task, split=split)
    task = _test_task(task, split)
    batch = task.batch(model)
    t = batch.targets
    if t.correct.shape[-1] == 0 or t.wrong.shape[-1] == 0:
        raise ConfigError(f"task {task.name!r} has no correct/wrong answer tokens to compare")
    with torch.no_grad():
        logits = clean_logits(model, batch.clean)
    best = lambda ids: logits.gather(-1, ids.clamp(min=0)).masked_fill(ids < 0, float("-inf")).amax(-1)  # noqa: E731
    return float((best(t.correct) > best(t.wrong)).float().mean())


def faithfulness(m_circuit: float, m_full: float, m_empty: float) -> float:
    """(m(C) − m(∅)) / (m(N) − m(∅)); NaN where the full and empty models agree."""
    if m_full == m_empty:
        return float("nan")
    return (m_circuit - m_empty) / (m_full - m_empty)


RANKINGS = {"both": (False, True), "signed": (False,), "absolute": (True,)}


def faithfulness_curve(model, task: Task | str, scores: EdgeScores, *, ablation: str = "corrupted",
                       split: str = "test", fractions=MIB_FRACTIONS, seed: int = 0, chunk: int | None = None,
                       ranking: str = "both", quiet: bool = True, batch_size: int | None = None,
                       resamples: int = 0, level: float = LEVEL) -> CurveResult:
    """Faithfulness of the top-scoring circuits at each fraction of edges; CPR and CMD.

    ranking: "both" (default), or only "signed" (the CPR curve) or "absolute" (the CMD curve), at
    half the cost; the other's fields stay empty and its area NaN.
    chunk: circuits per forward. Batching pays only on small models: a batch computes the union of
    its circuits' nodes, so on wide models one circuit per forward (the default there) is fastest.
    quiet=False: a progress bar over the circuits (discover shows it). batch_size: examples a pass.
    resamples > 0: `ci` holds percentile bootstrap intervals at `level` of every point's faithfulness and of
    CPR and CMD, from the per-example metrics of the same forwards (no extra forward; seeded by `seed`)."""
    arguments.check(model=model, task=task, scores=scores, ablation=ablation, split=split, fractions=fractions,
                    seed=seed, chunk=chunk, ranking=ranking, quiet=quiet, batch_size=batch_size,
                    resamples=resamples, level=level)
    g = model.graph
    _check_graph("scores are", scores.graph, g)
    if ranking not in RANKINGS:
        raise ConfigError(f"ranking must be one of {', '.join(RANKINGS)}; got {ranking!r}")
    fractions = [float(f) for f in fractions]
    if len(fractions) < 2 or any(not 0 <= f <= 1 for f in fractions) or fractions != sorted(set(fractions)):
        raise ConfigError(f"fractions must be at least two increasing fractions of edges in [0, 1] (the area "
                          f"under the curve is taken over them); got {fractions}")
    default = 1 if model.cfg.d_model >= 256 else 8  # see chunk above
    chunk = default if chunk is None else count(chunk, "chunk (circuits a forward)", least=1)
    parts = setups(model, _test_task(task, split), ablation, seed, batch_size, share_prefix=not scores.spans)
    circuits = {absolute: [prune(scores, edges=int(f * scores.n_edges), absolute=absolute) for f in fractions]
                if absolute in RANKINGS[ranking] else [] for absolute in (False, True)}
    units = scores.unit_mask
    wanted = [torch.zeros_like(units)] + [c.mask for c in circuits[False]] + [c.mask for c in circuits[True]]
    # Each distinct circuit is run once; the full graph is the clean run, whose logits setups() made.
    full, keys = units.numpy().tobytes(), [m.numpy().tobytes() for m in wanted]
    distinct: dict[bytes, int] = {}  # circuit → its row among the masks run
    unique = []
    for key, m in zip(keys, wanted):
        if key != full and key not in distinct:
            distinct[key] = len(unique)
            unique.append(m)
    examples: list = []
    run, m_full = _metric_of_masks(model, parts, torch.stack(unique).float(), chunk, quiet, examples, scores.spans,
                                   scores.positions)
    run = run.tolist()
    values = [m_full if key == full else run[distinct[key]] for key in keys]
    m_empty, rest = values[0], values[1:]
    n = len(circuits[False])
    f_signed = [faithfulness(v, m_full, m_empty) for v in rest[:n]]
    f_abs = [faithfulness(v, m_full, m_empty) for v in rest[n:]]
    ci = None
    if resamples:  # each circuit's metric per example, from the same forwards
        each, each_full = examples
        rows = torch.stack([each_full if key == full else each[distinct[key]] for key in keys])  # [circuits, n]
        ci = curve_intervals(rows[1:n + 1] if n else None, rows[n + 1:] if f_abs else None, each_full, rows[0],
                             fractions, resamples, seed, level)
    return CurveResult(list(fractions), [c.n_edges for c in circuits[False]], f_signed,
                       [c.n_edges for c in circuits[True]], f_abs,
                       cpr=_trapezoid(fractions, f_signed) if f_signed else float("nan"),
                       cmd=_trapezoid(fractions, [abs(1 - f) for f in f_abs]) if f_abs else float("nan"),
                       metric_signed=rest[:n], metric_absolute=rest[n:], metric_full=m_full, metric_empty=m_empty,
                       ci=ci)


def _trapezoid(xs, ys) -> float:
    return sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))


def roc_auc(scores: EdgeScores, truth: Circuit | list[str]) -> float:
    """Probability that a ground-truth edge outscores (|score|) a non-circuit edge; ties count half."""
    arguments.check(scores=scores, truth=truth)
    g = scores.graph
    true_mask = truth.mask if isinstance(truth, Circuit) else g.mask_from_edges(truth)
    s = scores.scores.abs()[g.edge_mask]
    t = true_mask[g.edge_mask]
    if t.all() or not t.any():
        raise ConfigError("ROC AUC needs both circuit and non-circuit edges in the ground truth")
    ranks = _average_ranks(s)
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(x: Tensor) -> Tensor:
    """1-based ranks with ties given their average rank."""
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    ranks = torch.empty(len(x), dtype=torch.float64)
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks
