"""Error bars: the percentile bootstrap over a task's examples, and the stability of a circuit.

Every figure circuitfind reports is a function of means over examples: an edge's score (the mean of its
per-example scores, `score_edges(..., per_example=True)`), a circuit's metric, and so faithfulness (a ratio of
means), the faithfulness curve and its areas CPR and CMD. A bootstrap resample draws n examples with
replacement; its means are w @ values with w [n] the draw's counts over n. So a thousand resamples of a whole
curve cost one product and no forward: the per-example values come from the passes the point estimate makes.

    w = resample_weights(n, resamples=1000, seed=0)          # [R, n], each row sums to 1
    low, high = interval(w @ values, level=0.95)             # values [n, ...] → the mean's 95% interval

Faithfulness resamples its numerator and denominator together (the same draw for the circuit's, the full
model's and the empty circuit's metric). Methods that do not average over examples (ACDC, edge pruning) get
their stability by running again on resampled tasks (`stability(..., resamples=N)`).
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from circuitfind.errors import ConfigError

RESAMPLES = 1000
LEVEL = 0.95
CHUNK_ELEMENTS = 1 << 24  # resampled means held at once (64 MiB in float32)


def resample_draws(n: int, resamples: int = RESAMPLES, seed: int = 0) -> Tensor:
    """[resamples, n] long: the examples drawn (with replacement) by each bootstrap resample, seeded."""
    if n < 1 or resamples < 1:
        raise ConfigError(f"a bootstrap needs at least one example and one resample; got n={n}, resamples={resamples}")
    return torch.randint(n, (resamples, n), generator=torch.Generator().manual_seed(seed))


def resample_weights(n: int, resamples: int = RESAMPLES, seed: int = 0) -> Tensor:
    """[resamples, n] float64: row r counts how often each example is drawn in resample r (`resample_draws`),
    over n."""
    draws = resample_draws(n, resamples, seed)
    counts = torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(1, draws, torch.ones(resamples, n,
                                                                                          dtype=torch.float64))
    return counts / n


def interval(samples: Tensor, level: float = LEVEL) -> tuple[Tensor, Tensor]:
    """The percentile interval of bootstrap samples [R, ...] → (low, high), each [...]."""
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), e.g. 0.95; got {level!r}")
    r, shape = samples.shape[0], samples.shape[1:]
    rows = samples.reshape(r, -1).T.contiguous()  # [entries, R]: a sort along the last dim is the fast one
    return tuple(_percentile(rows, p).view(shape) for p in ((1 - level) / 2, (1 + level) / 2))


def _percentile(rows: Tensor, p: float) -> Tensor:
    """The p-th quantile of each row [entries, R] → [entries], interpolated linearly between order statistics
    (numpy's default, torch.quantile's): only the tail up to that order statistic is selected (topk), not a sort
    of every row (3x faster for the intervals of every GPT-2-small edge)."""
    r = rows.shape[1]
    h = (r - 1) * p
    j = math.floor(h)
    nxt = min(j + 1, r - 1)
    if p <= 0.5:  # order statistics j and j + 1 are among the j + 2 smallest
        tail = rows.topk(nxt + 1, dim=1, largest=False, sorted=True).values
        below, above = tail[:, j], tail[:, nxt]
    else:  # ... and among the r − j largest, from the largest down
        tail = rows.topk(r - j, dim=1, largest=True, sorted=True).values
        below, above = tail[:, r - 1 - j], tail[:, r - 1 - nxt]
    return below + (h - j) * (above - below)


def mean_interval(values: Tensor, resamples: int = RESAMPLES, seed: int = 0,
                  level: float = LEVEL) -> tuple[Tensor, Tensor]:
    """The interval of the mean over examples of values [n, ...] → (low, high) [...] (float32), a chunk of
    the trailing entries at a time (n examples, R resamples: R × chunk means held at once)."""
    n, shape = values.shape[0], values.shape[1:]
    w = resample_weights(n, resamples, seed)
    flat = values.reshape(n, -1)
    low, high = torch.empty(flat.shape[1]), torch.empty(flat.shape[1])
    step = max(1, CHUNK_ELEMENTS // resamples)
    for start in range(0, flat.shape[1], step):
        part = flat[:, start:start + step].double()
        lo, hi = interval(w @ part, level)
        low[start:start + step], high[start:start + step] = lo.float(), hi.float()
    return low.view(shape), high.view(shape)


KEPT_CIRCUITS = 200  # resamples whose top-k circuits edge_intervals keeps (packed bits), for IoU intervals


def top_k_frequency(values: Tensor, k: int, resamples: int = RESAMPLES, seed: int = 0,
                    absolute: bool = True, keep: list | None = None) -> Tensor:
    """How often each entry of the mean of values [n, ...] is among the k largest (by |mean| where absolute)
    over bootstrap resamples → [...] in [0, 1]: an edge's probability of being in a top-k circuit. keep: a list
    that receives the first KEPT_CIRCUITS resamples' top-k sets, as bool [r, entries]."""
    n, shape = values.shape[0], values.shape[1:]
    flat = values.reshape(n, -1).double()
    if not 0 <= k <= flat.shape[1]:
        raise ConfigError(f"k must be in [0, {flat.shape[1]}]; got {k}")
    w = resample_weights(n, resamples, seed)
    hits = torch.zeros(flat.shape[1], dtype=torch.float64)
    step = max(1, CHUNK_ELEMENTS // max(1, flat.shape[1]))
    for start in range(0, resamples, step):
        means = w[start:start + step] @ flat  # [r, entries]
        top = (means.abs() if absolute else means).topk(k, dim=1).indices
        hits.index_add_(0, top.flatten(), torch.ones(top.numel(), dtype=torch.float64))
        if keep is not None and start < KEPT_CIRCUITS:
            sets = torch.zeros(means.shape, dtype=torch.bool).scatter_(1, top, True)
            keep.append(sets[: KEPT_CIRCUITS - start])
    return (hits / resamples).float().view(shape)


def pack(sets: Tensor) -> Tensor:
    """bool [r, entries] → uint8 [r, ⌈entries / 8⌉] (numpy's bit order), as ci.safetensors keeps circuits."""
    import numpy as np
    return torch.from_numpy(np.packbits(sets.numpy(), axis=1))


def unpack(packed: Tensor, entries: int) -> Tensor:
    import numpy as np
    return torch.from_numpy(np.unpackbits(packed.numpy(), axis=1, count=entries).astype(bool))


def iou_interval(a: Tensor, b: Tensor, level: float = LEVEL) -> tuple[float, float]:
    """The interval of the intersection over union of two runs' circuits under resampling of their prompts:
    a, b bool [r, edges], resample i of one run paired with resample i of the other (independent draws)."""
    r = min(len(a), len(b))
    a, b = a[:r], b[:r]
    union = (a | b).sum(1).double()
    iou = torch.where(union > 0, (a & b).sum(1).double() / union.clamp(min=1), torch.ones_like(union))
    low, high = interval(iou[:, None], level)
    return float(low[0]), float(high[0])


def edge_intervals(scores, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL,
                   k: int | None = None) -> dict:
    """Bootstrap intervals of every edge's score from `scores.per_example` (`score_edges(..., per_example=True)`):
    {"low", "high": [dst, src], "frequency": [dst, src] how often the edge is among a resample's k highest |score|
    (None without k), "circuits": the first KEPT_CIRCUITS resamples' top-k sets over the graph's edges (packed
    bits, `unpack`; for IoU intervals), "level", "resamples", "seed", "k"}, the form `EdgeScores.intervals` holds."""
    if scores.per_example is None:
        raise ConfigError("these scores hold no per-example scores: score them with per_example=True "
                          "(methods that average over examples: circuitfind.methods.PER_EXAMPLE)")
    mask = scores.graph.edge_mask
    values = scores.per_example[:, mask]  # [n, edges]: off the graph a score is 0, its interval [0, 0]
    low, high = torch.zeros(mask.shape), torch.zeros(mask.shape)
    low[mask], high[mask] = mean_interval(values, resamples, seed, level)
    frequency, kept = None, []
    if k is not None:  # (never ranking an entry off the graph)
        frequency = torch.zeros(mask.shape)
        frequency[mask] = top_k_frequency(values, k, resamples, seed, keep=kept)
    return {"low": low, "high": high, "frequency": frequency, "level": level, "resamples": resamples,
            "seed": seed, "k": k, "circuits": pack(torch.cat(kept)) if kept else None}


def overlap_interval(a, b, level: float = LEVEL) -> tuple[float, float]:
    """The interval of the edge IoU of two runs' circuits (EdgeScores over one graph, each with the resampled
    circuits of `edge_intervals`) under resampling of each run's prompts."""
    if a.graph != b.graph:
        raise ConfigError("an IoU compares circuits of one graph; these scores are over different graphs")
    if any(s.intervals is None or s.intervals.get("circuits") is None for s in (a, b)):
        raise ConfigError("IoU intervals need both runs' resampled circuits: run discover with --resamples")
    edges = a.graph.n_edges
    return iou_interval(unpack(a.intervals["circuits"], edges), unpack(b.intervals["circuits"], edges), level)


def overlap_intervals(run_dirs, level: float = LEVEL) -> list[list[tuple[float, float]]] | None:
    """Pairwise edge-IoU intervals [i][j] of run directories whose scores hold resampled circuits (discover
    --resamples), or None where one does not."""
    from circuitfind.circuit import EdgeScores

    dirs = [Path(d) for d in run_dirs]
    if not all((d / "ci.safetensors").exists() and (d / "scores.json").exists() for d in dirs):
        return None
    scores = [EdgeScores.load(d) for d in dirs]
    if any(s.intervals is None or s.intervals.get("circuits") is None for s in scores):
        return None
    return [[overlap_interval(a, b, level) for b in scores] for a in scores]


def faithfulness_samples(circuit: Tensor, full: Tensor, empty: Tensor, w: Tensor) -> Tensor:
    """Bootstrap samples of faithfulness (m(C) − m(∅)) / (m(N) − m(∅)): per-example metrics circuit [..., n],
    full [n] and empty [n], resampled together by weights w [R, n] → [R, ...] (NaN where a resample's full and
    empty means agree)."""
    m_c = circuit.double() @ w.T  # [..., R]
    m_full, m_empty = w @ full.double(), w @ empty.double()  # [R]
    gap = m_full - m_empty
    f = (m_c - m_empty) / torch.where(gap == 0, torch.nan, gap)
    return f.movedim(-1, 0)


def faithfulness_interval(circuit: Tensor, full: Tensor, empty: Tensor, resamples: int = RESAMPLES,
                          seed: int = 0, level: float = LEVEL) -> tuple[float, float]:
    """The interval of a circuit's faithfulness from per-example metrics circuit, full and empty [n]."""
    w = resample_weights(circuit.shape[-1], resamples, seed)
    low, high = interval(faithfulness_samples(circuit, full, empty, w), level)
    return float(low), float(high)


def curve_intervals(signed: Tensor | None, absolute: Tensor | None, full: Tensor, empty: Tensor,
                    fractions: list[float], resamples: int = RESAMPLES, seed: int = 0,
                    level: float = LEVEL) -> dict:
    """Intervals of a faithfulness curve from per-example metrics [points, n] of its circuits (signed ranking,
    absolute ranking; either may be None) and of the full model and the empty circuit [n]: of each point's
    faithfulness, and of the areas CPR (signed) and CMD (|1 − f|, absolute), all from the same resamples."""
    w = resample_weights(full.shape[0], resamples, seed)
    dx = torch.tensor(fractions, dtype=torch.float64).diff()

    def area(ys: Tensor) -> Tensor:  # ys [R, points] → trapezoids over the fractions [R]
        return ((ys[:, 1:] + ys[:, :-1]) / 2 * dx).sum(1)

    out = {"level": level, "resamples": resamples, "seed": seed}
    for name, values, to_area in (("signed", signed, lambda f: f), ("absolute", absolute, lambda f: (1 - f).abs())):
        if values is None:
            continue
        f = faithfulness_samples(values, full, empty, w)  # [R, points]
        low, high = interval(f, level)
        out[f"faithfulness_{name}"] = [[float(a), float(b)] for a, b in zip(low, high)]
        a_low, a_high = interval(area(to_area(f)), level)
        out["cpr" if name == "signed" else "cmd"] = [float(a_low), float(a_high)]
    return out


# ---------------------------------------------------------------------- stability
@dataclass
class Stability:
    """Circuits of one size found on bootstrap resamples of a task's examples (and across its sampling
    seeds): their pairwise Jaccard overlaps, by edges and by nodes, and how often each edge is in."""

    circuits: list = field(repr=False)  # the Circuits, one per (seed, resample)
    jaccard_edges: list[float]
    jaccard_nodes: list[float]
    frequency: Tensor = field(repr=False)  # [dst, src]: the fraction of circuits holding each edge
    edge_names: list[str] = field(repr=False)  # the graph's edges, in the order of `frequency[graph.edge_mask]`
    level: float = LEVEL

    @property
    def always(self) -> list[str]:
        """Edges in every circuit."""
        return [n for n, f in zip(self.edge_names, self.frequency[self._mask].tolist()) if f == 1.0]

    @property
    def sometimes(self) -> list[str]:
        """Edges in some circuits but not all, most frequent first."""
        kept = [(f, n) for n, f in zip(self.edge_names, self.frequency[self._mask].tolist()) if 0 < f < 1]
        return [n for f, n in sorted(kept, key=lambda t: -t[0])]

    @property
    def _mask(self) -> Tensor:
        return self.circuits[0].graph.edge_mask

    def summary(self) -> dict:
        """Median and percentile interval of both Jaccard distributions, and the always / sometimes counts."""
        def stats(values):
            if not values:
                return {"median": float("nan"), "interval": [float("nan"), float("nan")]}
            t = torch.tensor(values, dtype=torch.float64)
            low, high = interval(t[:, None], self.level)
            return {"median": float(t.quantile(0.5)), "interval": [float(low[0]), float(high[0])]}  # (midpoint median)
        return {"circuits": len(self.circuits), "jaccard_edges": stats(self.jaccard_edges),
                "jaccard_nodes": stats(self.jaccard_nodes), "always": len(self.always),
                "sometimes": len(self.sometimes), "level": self.level}

    def __repr__(self) -> str:
        s = self.summary()
        e, nd = s["jaccard_edges"], s["jaccard_nodes"]
        return (f"Stability({s['circuits']} circuits: Jaccard of edges {e['median']:.3f} "
                f"[{e['interval'][0]:.3f}, {e['interval'][1]:.3f}], of nodes {nd['median']:.3f} "
                f"[{nd['interval'][0]:.3f}, {nd['interval'][1]:.3f}]; {s['always']} edges always in, "
                f"{s['sometimes']} sometimes)")


def jaccard(a: Tensor, b: Tensor) -> float:
    """|a ∩ b| / |a ∪ b| of two bool masks (1 for two empty ones)."""
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def resampled_task(task, indices: list[int]):
    """The task with these of its examples (drawn with replacement), for methods that must run again."""
    other = copy.copy(task)
    other._cache = {}
    base = task.examples

    def examples(model=None):
        pool = base(model)
        return [pool[i] for i in indices]
    other.examples = examples  # (an instance attribute: batch() and every method read the examples through it)
    return other


def stability(model, task, method: str = "eap-ig", *, edges: int | None = None, nodes: int | None = None,
              resamples: int = 20, seeds=(0,), ablation: str = "corrupted", seed: int = 0,
              level: float = LEVEL, quiet: bool = True, **options) -> Stability:
    """How much of a circuit is the prompts' noise: the circuit of `edges` (or `nodes`) edges found on
    `resamples` bootstrap resamples of the task's examples, for each of the task's sampling `seeds`.

    Methods that average over examples (`PER_EXAMPLE`) score once per seed, keeping each example's scores,
    and prune each resample's mean (no more forwards); the others (ACDC, edge pruning, ifr) run again on each
    resampled task. Returns the pairwise Jaccard overlaps of the circuits' edges and nodes, and each edge's
    frequency (`Stability`)."""
    import circuitfind.arguments as arguments
    from circuitfind.circuit import EdgeScores
    from circuitfind.methods import PER_EXAMPLE, score_edges
    from circuitfind.prune import prune
    from circuitfind.task import load_task

    arguments.check(model.graph, model=model, task=task, method=method, edges=edges, nodes=nodes,
                    resamples=resamples, seeds=list(seeds), ablation=ablation, seed=seed, level=level, quiet=quiet,
                    options=options)
    if (edges is None) == (nodes is None):
        raise ConfigError("give the circuit's size: edges=N or nodes=N (one of them)")
    if resamples < 1:  # (before any scoring: a bootstrap of no resample says nothing)
        raise ConfigError(f"stability needs at least one resample; got resamples={resamples}")
    task = load_task(task) if isinstance(task, str) else task
    circuits = []
    for task_seed in seeds:
        seeded = task if task_seed == task.seed else type(task)(n=task.n, seed=task_seed, split=task.split)
        if "metric" in vars(task):
            seeded.metric = task.metric
        n, draw_seed = len(seeded.examples(model)), seed + 7919 * task_seed
        if method in PER_EXAMPLE:
            scored = score_edges(model, seeded, method, ablation, seed=seed, per_example=True, **options)
            w = resample_weights(n, resamples, draw_seed)
            for r in range(resamples):
                mean = torch.einsum("n,nds->ds", w[r].float(), scored.per_example)
                circuits.append(prune(EdgeScores(mean, model.graph, method=method, config=scored.config),
                                      edges=edges, nodes=nodes))
        else:
            for draw in resample_draws(n, resamples, draw_seed).tolist():
                part = resampled_task(seeded, draw)
                scored = score_edges(model, part, method, ablation, seed=seed, quiet=quiet, **options)
                circuits.append(prune(scored, edges=edges, nodes=nodes))
    return stability_of(circuits, model.graph, level)


def stability_of(circuits: list, graph, level: float = LEVEL) -> Stability:
    """The Stability of circuits found on resamples: pairwise Jaccard of edges and of nodes, edge frequency."""
    masks = [c.mask for c in circuits]
    node_sets = [m.any(0) for m in masks]  # a node is in a circuit when one of its out-edges is
    pairs = list(itertools.combinations(range(len(masks)), 2))
    frequency = torch.stack(masks).float().mean(0)
    return Stability(circuits, [jaccard(masks[i], masks[j]) for i, j in pairs],
                     [jaccard(node_sets[i], node_sets[j]) for i, j in pairs], frequency,
                     graph.edge_names(), level)

