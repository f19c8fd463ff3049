"""The artifacts: `EdgeScores` (one float per edge) and `Circuit` (a set of edges), with provenance.

    scores.save("run/")          # run/scores.safetensors + run/scores.json
    EdgeScores.load("run/")
    circuit.save("run/circuit.json")   # edge names + provenance, readable by people and other tools
    Circuit.load("run/circuit.json")

How they are written and read (atomically; every damaged file named, never read): `circuitfind.files`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from circuitfind.errors import CircuitfindError, ConfigError, count
from circuitfind.files import (FORMAT_VERSION, INCOMPLETE,  # noqa: F401 — (INCOMPLETE: for discover)
                               _atomic_write, _read_scores, _spans_from, check_format,
                               graph_from, read_json, refuse_incomplete)
from circuitfind.graph import Graph
from circuitfind.spans import unit_index, unit_name

# the all-edges estimator `eap-ig-activations` named before it became the per-node one (issue 40)
OLD_EAP_IG_ACTIVATIONS = ("every edge scaled by alpha = 1/n..n/n at once, scored with the clean run's differences "
                          "(circuitfind's eap-ig-activations before issue 40; neither the EAP-IG library's nor MIB's "
                          "per-node estimator, nor auto-circuit's: see eap-ig-edges)")


def filled_config(method: str, config: dict) -> dict:
    """A saved method config with what a run made before a setting existed used, said: EAP-IG's `points`
    (missing: "right", gradients at k = 1..n), and the estimator of an eap-ig-activations run from before
    the per-node one (its variant "activations")."""
    config = dict(config)
    if "steps" in config and "variant" in config:  # an EAP-IG config
        config.setdefault("points", "right")
        if method == "eap-ig-activations" and config["variant"] == "activations":
            config.setdefault("estimator", OLD_EAP_IG_ACTIVATIONS)
    return config


def reproduces(method: str, config: dict) -> str | None:
    """Which reference's quantity an EAP-IG-family run computes (None for other methods)."""
    config = filled_config(method, config)
    if method in ("eap-ig", "eap-ig-node"):
        if config.get("points") == "left":
            return "EAP-IG library >= 2.0 (hannamw/EAP-IG) EAP-IG-inputs: gradients at k/n, k = 0..n-1"
        return "MIB circuit track (hannamw/MIB-circuit-track attribute.py) EAP-IG-inputs: gradients at k/n, k = 1..n"
    if method == "eap-ig-activations":
        if "estimator" in config:
            return None  # a run of before the per-node estimator: no reference's
        return "EAP-IG library and MIB circuit track EAP-IG-activations: one node's output at a time, k = 1..n"
    if method == "eap-ig-edges":
        return "auto-circuit mask_gradient_prune_scores(integrated_grad_samples=n), divided by its n + 1 samples"
    if method == "clean-corrupted":
        return "EAP-IG library clean-corrupted: gradients at the clean and the corrupted run"
    return None


def _graph_dict(g: Graph) -> dict:
    out = {"n_layers": g.n_layers, "n_heads": g.n_heads, "parallel": g.parallel}
    if g.n_experts:  # (node graphs keep the keys older readers know)
        out |= {"n_experts": g.n_experts, "shared_expert": g.shared_expert}
    return out


@dataclass
class EdgeScores:
    """Scores [dst, src] over a graph (zero off the graph) and what produced them; position-aware scores
    (`score_edges(..., positions=)`) are [dst, src, T, T] over (query span, key span), on their `units`."""

    scores: Tensor
    graph: Graph
    method: str = ""
    model: str = ""
    task: str = ""
    ablation: str = ""
    config: dict = field(default_factory=dict)
    # each example's scores [n, dst, src], whose mean is `scores` (score_edges(..., per_example=True)); not saved
    per_example: Tensor | None = field(default=None, repr=False, compare=False)
    # bootstrap intervals of the scores (`uncertainty.edge_intervals`): "low", "high" [dst, src], "frequency"
    # [dst, src] or None (how often each edge is in a resample's top k), "level", "resamples", "seed", "k";
    # saved as ci.safetensors beside the scores
    intervals: dict | None = field(default=None, repr=False, compare=False)
    # position-aware scores: the span names (T), "spans" or "tokens", and which (edge, t, s) units exist
    # (bool [dst, src, T, T]: a query span reads a key span somewhere in the task)
    spans: tuple[str, ...] = ()
    positions: str | None = None
    units: Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        expected = (self.graph.n_receivers, self.graph.n_senders)
        if self.spans:
            self.spans, T = tuple(self.spans), len(self.spans)
            full = expected + (T, T)
            if self.units is None or tuple(self.units.shape) != full or tuple(self.scores.shape) != full:
                raise ConfigError(f"position-aware scores and units must be [dst, src, T, T] = {full}; got "
                                  f"{tuple(self.scores.shape)}")
            self.units = self.units.bool().cpu() & self.graph.edge_mask[..., None, None]
            self.scores = self.scores.detach().float().cpu() * self.units
            return
        if tuple(self.scores.shape) != expected:
            raise ConfigError(f"scores must be [dst, src] = {expected} for this graph; got {tuple(self.scores.shape)}")
        self.scores = self.scores.detach().float().cpu() * self.graph.edge_mask
        if self.per_example is not None and (self.per_example.ndim != 3 or tuple(self.per_example.shape[1:]) != expected):
            raise ConfigError(f"per-example scores must be [n, dst, src] with [dst, src] = {expected}; got "
                              f"{tuple(self.per_example.shape)}")

    @property
    def unit_mask(self) -> Tensor:
        """Where a score may be: the graph's edges [dst, src], or the (edge, span) units [dst, src, T, T]."""
        return self.units if self.spans else self.graph.edge_mask

    @property
    def n_edges(self) -> int:
        """How many edges (position-aware: (edge, span) units) the scores cover."""
        return int(self.unit_mask.sum())

    @property
    def level(self) -> str:
        """"node" for node scores (`eap-node`, `eap-ig-node`: each node's score on all its out-edges), else "edge"."""
        return self.config.get("level", "edge")

    def node_values(self) -> Tensor:
        """The score of every node [src] of node scores (the one each node wrote on all its out-edges)."""
        if self.level != "node":
            raise ConfigError("edge scores hold no one score per node; node methods (eap-node, eap-ig-node, "
                              "exact-node) do")
        return self.scores.sum(0) / self.graph.edge_mask.sum(0)

    def values(self) -> Tensor:
        """The score of every edge, in `graph.edge_names()` order: [n_edges] (position-aware: of every unit)."""
        return self.scores[self.unit_mask]

    def top(self, n: int = 10, absolute: bool = True) -> list[tuple[str, float]]:
        """The n highest-scoring edges (position-aware: units) as (name, score)."""
        key = self.scores.abs() if absolute else self.scores
        key = key.masked_fill(~self.unit_mask, float("-inf"))
        idx = key.flatten().topk(min(count(n, "n (the count of edges top() returns)"), self.n_edges)).indices
        return [(self.name_of(int(i)), float(self.scores.flatten()[i])) for i in idx]

    def name_of(self, flat: int) -> str:
        """The name of the edge (or unit) at this index of the flattened scores."""
        if not self.spans:
            return self.graph.edge_name(*divmod(flat, self.graph.n_senders))
        return unit_name(self.graph, self.spans, *_unravel(flat, self.scores.shape))

    def metadata(self) -> dict:
        meta = {"format": FORMAT_VERSION, "kind": "edge-scores", "method": self.method, "model": self.model,
                "task": self.task, "ablation": self.ablation, "config": self.config, "graph": _graph_dict(self.graph)}
        return meta | ({"spans": list(self.spans), "positions": self.positions} if self.spans else {})

    def save(self, directory: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        bad = int((~self.scores.isfinite()).sum())
        if bad:  # never written: a reader would take them for scores
            raise ConfigError(f"{bad} of the {self.method or 'edge'} scores are NaN or infinite; they are not saved "
                              "(the model's activations may overflow: load it in float32 or bfloat16)")
        d = Path(directory)
        tensors = {"scores": self.scores.contiguous()}
        if self.spans:
            tensors["units"] = self.units.to(torch.uint8).contiguous()
        _atomic_write(d / "scores.safetensors", lambda p: save_file(tensors, p))
        meta = self.metadata()
        if self.intervals is not None:
            tensors = {k: self.intervals[k].contiguous() for k in ("low", "high", "frequency", "circuits")
                       if self.intervals.get(k) is not None}
            _atomic_write(d / "ci.safetensors", lambda p: save_file(tensors, p))
            meta["intervals"] = {k: self.intervals[k] for k in INTERVAL_FIELDS}
        _atomic_write(d / "scores.json", lambda p: Path(p).write_text(json.dumps(meta, indent=2)))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "EdgeScores":
        """From a run directory's scores.json and scores.safetensors (checked: named if damaged)."""
        d = Path(directory)
        if not d.is_dir():
            raise ConfigError(f"{str(d)!r} is not a directory; scores are read from a run directory")
        refuse_incomplete(d)
        if not (d / "scores.json").exists():
            raise ConfigError(f"{str(d)!r} holds no scores.json; is it a run directory?")
        meta_path = d / "scores.json"
        meta = read_json(meta_path, "edge-score metadata")
        check_format(meta, meta_path, "edge-scores")
        graph = graph_from(meta, meta_path)
        names = {k: meta.get(k, "") for k in ("method", "model", "task", "ablation")}
        if not all(isinstance(v, str) for v in names.values()) or not isinstance(meta.get("config", {}), dict):
            raise ConfigError(f"{meta_path} is damaged: method, model, task and ablation must be strings and "
                              "config an object")
        shape = (graph.n_receivers, graph.n_senders)
        spans, positions = _spans_from(meta, meta_path)
        if spans:
            scores, units = _read_scores(d / "scores.safetensors", shape + (len(spans),) * 2, with_units=True)
            return cls(scores, graph, **names, config=meta.get("config", {}), spans=spans, positions=positions,
                       units=units)
        scores = _read_scores(d / "scores.safetensors", shape)
        return cls(scores, graph, **names, config=filled_config(names["method"], meta.get("config", {})),
                   intervals=_read_intervals(d, meta, shape))

    def __repr__(self) -> str:  # not the tensor: a notebook cell showing a Run would print all of it
        made = " / ".join(part for part in (self.model, self.task, self.method) if part) or "unnamed"
        ablation = f", {self.ablation} ablation" if self.ablation else ""
        at = f" at {len(self.spans)} spans ({self.n_edges} units)" if self.spans else ""
        return f"EdgeScores({made}: {self.graph.n_edges} edges{at}, {self.level} scores{ablation})"


INTERVAL_FIELDS = ("level", "resamples", "seed", "k")  # scores.json's "intervals": what made ci.safetensors


def _read_intervals(d: Path, meta: dict, shape: tuple[int, int]) -> dict | None:
    """The scores' bootstrap intervals (ci.safetensors, described by scores.json's "intervals"), checked; None
    for a run without them."""
    described = meta.get("intervals")
    if described is None:
        return None
    path = d / "ci.safetensors"
    if not isinstance(described, dict) or set(described) != set(INTERVAL_FIELDS) or not path.exists():
        raise ConfigError(f"{d / 'scores.json'} describes score intervals that {path} does not hold (or is damaged); "
                          "rerun discover with --resamples to write them again")
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 — safetensors raises several kinds for a damaged file
        raise ConfigError(f"{path} is damaged ({e}); rerun discover with --resamples to write it again") from None
    circuits = tensors.pop("circuits", None)  # packed bits [r, ⌈edges / 8⌉]
    if not {"low", "high"} <= set(tensors) or any(tuple(t.shape) != shape or not bool(t.isfinite().all())
                                                  for t in tensors.values()) \
            or (circuits is not None and (circuits.dtype != torch.uint8 or circuits.ndim != 2)):
        raise ConfigError(f"{path} is damaged: it needs finite 'low' and 'high' (and 'frequency') of shape {shape}")
    return {"low": tensors["low"], "high": tensors["high"], "frequency": tensors.get("frequency"),
            "circuits": circuits} | described


def _unravel(flat: int, shape) -> tuple[int, ...]:
    out = []
    for size in reversed(shape):
        flat, i = divmod(flat, size)
        out.append(i)
    return tuple(reversed(out))


@dataclass
class Circuit:
    """A boolean edge mask [dst, src] over a graph, and where it came from; a position-aware circuit's mask is
    [dst, src, T, T] over (query span, key span) units (`spans`, `positions`)."""

    mask: Tensor
    graph: Graph
    provenance: dict = field(default_factory=dict)
    spans: tuple[str, ...] = ()
    positions: str | None = None

    def __post_init__(self):
        expected = (self.graph.n_receivers, self.graph.n_senders) + (len(self.spans),) * 2 * bool(self.spans)
        if tuple(self.mask.shape) != expected:
            raise ConfigError(f"circuit mask must be {'[dst, src, T, T]' if self.spans else '[dst, src]'} = "
                              f"{expected}; got {tuple(self.mask.shape)}")
        self.spans = tuple(self.spans)
        edges = self.graph.edge_mask[..., None, None] if self.spans else self.graph.edge_mask
        self.mask = self.mask.bool().cpu() & edges

    @property
    def n_edges(self) -> int:
        """Edges kept (position-aware: (edge, span) units)."""
        return int(self.mask.sum())

    @property
    def edge_mask(self) -> Tensor:
        """The node graph's edges [dst, src] kept at some span (the mask itself without positions)."""
        return self.mask.any(-1).any(-1) if self.spans else self.mask

    def edges(self) -> list[str]:
        if not self.spans:
            return self.graph.edge_names(self.mask)
        return [unit_name(self.graph, self.spans, *map(int, i)) for i in self.mask.nonzero().tolist()]

    def nodes(self) -> list[str]:
        """Senders with at least one edge in the circuit."""
        used = self.edge_mask.any(0)
        return [n for n, u in zip(self.graph.senders, used.tolist()) if u]

    def save(self, path: str | os.PathLike) -> None:
        data = {"format": FORMAT_VERSION, "kind": "circuit", "graph": _graph_dict(self.graph),
                "n_edges": self.n_edges, "provenance": self.provenance, "edges": self.edges()}
        if self.spans:
            data |= {"spans": list(self.spans), "positions": self.positions}
        _atomic_write(Path(path), lambda p: Path(p).write_text(json.dumps(data, indent=1)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Circuit":
        """From a circuit file, or a run directory (its circuit.json); a damaged file is named, never read."""
        if Path(path).is_dir():
            refuse_incomplete(Path(path))
            path = Path(path) / "circuit.json"
        data = read_json(path, "a circuitfind circuit (circuit.json)")
        check_format(data, path, "circuit")
        graph = graph_from(data, path)
        spans, positions = _spans_from(data, path)
        edges = data.get("edges")
        if not isinstance(edges, list) or not all(isinstance(e, str) for e in edges):
            raise ConfigError(f"{path} is damaged: 'edges' must be a list of edge names, got {type(edges).__name__}")
        try:
            if spans:
                mask = torch.zeros(graph.n_receivers, graph.n_senders, len(spans), len(spans), dtype=torch.bool)
                for name in edges:
                    mask[unit_index(graph, spans, name)] = True
            else:
                mask = graph.mask_from_edges(edges)
        except CircuitfindError as e:
            raise ConfigError(f"{path} is damaged: {e}") from None
        provenance = data.get("provenance", {})
        return cls(mask, graph, provenance if isinstance(provenance, dict) else {}, spans, positions)

    def __repr__(self) -> str:
        if self.spans:
            return (f"Circuit({self.n_edges} (edge, span) units at {len(self.spans)} spans, on "
                    f"{int(self.edge_mask.sum())} of {self.graph.n_edges} edges, {len(self.nodes())} nodes)")
        return f"Circuit({self.n_edges} of {self.graph.n_edges} edges, {len(self.nodes())} nodes)"

    # set algebra over the edges of one graph: a & b (shared), a | b (either), a - b (only in a)
    def _combine(self, other: "Circuit", op: str, mask: Tensor) -> "Circuit":
        return Circuit(mask, self.graph, {"combined": op, "a": self.provenance, "b": other.provenance}, self.spans,
                       self.positions)

    def __and__(self, other: "Circuit") -> "Circuit":
        return self._combine(other, "and", self.mask & _same_graph(self, other).mask)

    def __or__(self, other: "Circuit") -> "Circuit":
        return self._combine(other, "or", self.mask | _same_graph(self, other).mask)

    def __sub__(self, other: "Circuit") -> "Circuit":
        return self._combine(other, "minus", self.mask & ~_same_graph(self, other).mask)


def _same_graph(a, b) -> Circuit:
    if not isinstance(a, Circuit):
        raise ConfigError(f"circuits combine with circuits, not {type(a).__name__} (cf.prune, or Circuit.load)")
    if not isinstance(b, Circuit):
        raise ConfigError(f"circuits combine with circuits, not {type(b).__name__}")
    if a.graph != b.graph:
        raise ConfigError(f"the circuits are over different graphs ({a.graph} and {b.graph}); compare circuits "
                          f"of one model")
    if a.spans != b.spans:
        raise ConfigError(f"the circuits are over different spans ({', '.join(a.spans) or 'none'} and "
                          f"{', '.join(b.spans) or 'none'}); compare circuits of one positions setting")
    return b


def depth_profile(circuit: Circuit, bins: int = 5) -> dict:
    """Where a circuit's nodes sit, comparable across models of any depth: for heads and for MLPs, the
    fraction of the graph's nodes of that kind in the circuit within each of `bins` equal slices of depth
    (layer / n_layers): {"heads": [bins], "mlps": [bins], "bins": bins}."""
    g, kept = circuit.graph, circuit.edge_mask.any(0)  # a node is in when one of its out-edges is
    out = {"heads": [0.0] * bins, "mlps": [0.0] * bins, "bins": bins}
    totals = {"heads": [0] * bins, "mlps": [0] * bins}
    for l in range(g.n_layers):
        at = min(bins - 1, l * bins // g.n_layers)
        for kind, senders in (("heads", [g.head_sender(l, h) for h in range(g.n_heads)]),
                              ("mlps", list(g.mlp_senders(l)))):
            out[kind][at] += float(kept[senders].sum())
            totals[kind][at] += len(senders)
    for kind in ("heads", "mlps"):
        out[kind] = [v / t if t else float("nan") for v, t in zip(out[kind], totals[kind])]
    return out


def overlap(a: Circuit, b: Circuit) -> dict:
    """How much two circuits of one model agree, in edges and in nodes (senders with an edge):
    each one's count, the shared count and the intersection over union (1.0 for two empty circuits)."""
    _same_graph(a, b)

    def counts(x: set, y: set) -> dict:
        union = len(x | y)
        return {"a": len(x), "b": len(y), "shared": len(x & y), "iou": len(x & y) / union if union else 1.0}
    return {"edges": counts(set(a.edges()), set(b.edges())), "nodes": counts(set(a.nodes()), set(b.nodes()))}
