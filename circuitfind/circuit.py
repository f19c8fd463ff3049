"""The artifacts: `EdgeScores` (one float per edge) and `Circuit` (a set of edges), with provenance.

    scores.save("run/")          # run/scores.safetensors + run/scores.json
    EdgeScores.load("run/")
    circuit.save("run/circuit.json")   # edge names + provenance, readable by people and other tools
    Circuit.load("run/circuit.json")

Files are written to a temporary name and renamed, so an interrupted save leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from circuitfind.errors import ConfigError, count
from circuitfind.graph import Graph

FORMAT_VERSION = 1


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
    return {"n_layers": g.n_layers, "n_heads": g.n_heads, "parallel": g.parallel}


@dataclass
class EdgeScores:
    """Scores [dst, src] over a graph (zero off the graph) and what produced them."""

    scores: Tensor
    graph: Graph
    method: str = ""
    model: str = ""
    task: str = ""
    ablation: str = ""
    config: dict = field(default_factory=dict)

    def __post_init__(self):
        expected = (self.graph.n_receivers, self.graph.n_senders)
        if tuple(self.scores.shape) != expected:
            raise ConfigError(f"scores must be [dst, src] = {expected} for this graph; got {tuple(self.scores.shape)}")
        self.scores = self.scores.detach().float().cpu() * self.graph.edge_mask

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
        """The score of every edge, in `graph.edge_names()` order: [n_edges]."""
        return self.scores[self.graph.edge_mask]

    def top(self, n: int = 10, absolute: bool = True) -> list[tuple[str, float]]:
        """The n highest-scoring edges as (name, score)."""
        key = self.scores.abs() if absolute else self.scores
        key = key.masked_fill(~self.graph.edge_mask, float("-inf"))
        idx = key.flatten().topk(min(count(n, "n (the count of edges top() returns)"), self.graph.n_edges)).indices
        return [(self.graph.edge_name(*divmod(int(i), self.graph.n_senders)), float(self.scores.flatten()[i]))
                for i in idx]

    def metadata(self) -> dict:
        return {"format": FORMAT_VERSION, "kind": "edge-scores", "method": self.method, "model": self.model,
                "task": self.task, "ablation": self.ablation, "config": self.config, "graph": _graph_dict(self.graph)}

    def save(self, directory: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        d = Path(directory)
        _atomic_write(d / "scores.safetensors", lambda p: save_file({"scores": self.scores.contiguous()}, p))
        _atomic_write(d / "scores.json", lambda p: Path(p).write_text(json.dumps(self.metadata(), indent=2)))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "EdgeScores":
        from safetensors.torch import load_file

        d = Path(directory)
        if not (d / "scores.json").exists():
            raise ConfigError(f"{str(d)!r} holds no scores.json; is it a run directory?")
        meta = json.loads((d / "scores.json").read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ConfigError(f"{d}/scores.json has format {meta.get('format')}; this circuitfind reads {FORMAT_VERSION}")
        return cls(load_file(str(d / "scores.safetensors"))["scores"], Graph(**meta["graph"]), meta["method"],
                   meta["model"], meta["task"], meta["ablation"], filled_config(meta["method"], meta["config"]))

    def __repr__(self) -> str:  # not the tensor: a notebook cell showing a Run would print all of it
        made = " / ".join(part for part in (self.model, self.task, self.method) if part) or "unnamed"
        ablation = f", {self.ablation} ablation" if self.ablation else ""
        return f"EdgeScores({made}: {self.graph.n_edges} edges, {self.level} scores{ablation})"


@dataclass
class Circuit:
    """A boolean edge mask [dst, src] over a graph, and where it came from."""

    mask: Tensor
    graph: Graph
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        expected = (self.graph.n_receivers, self.graph.n_senders)
        if tuple(self.mask.shape) != expected:
            raise ConfigError(f"circuit mask must be [dst, src] = {expected}; got {tuple(self.mask.shape)}")
        self.mask = self.mask.bool().cpu() & self.graph.edge_mask

    @property
    def n_edges(self) -> int:
        return int(self.mask.sum())

    def edges(self) -> list[str]:
        return self.graph.edge_names(self.mask)

    def nodes(self) -> list[str]:
        """Senders with at least one edge in the circuit."""
        used = self.mask.any(0)
        return [n for n, u in zip(self.graph.senders, used.tolist()) if u]

    def save(self, path: str | os.PathLike) -> None:
        data = {"format": FORMAT_VERSION, "kind": "circuit", "graph": _graph_dict(self.graph),
                "n_edges": self.n_edges, "provenance": self.provenance, "edges": self.edges()}
        _atomic_write(Path(path), lambda p: Path(p).write_text(json.dumps(data, indent=1)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Circuit":
        """From a circuit file, or a run directory (its circuit.json)."""
        if Path(path).is_dir():
            path = Path(path) / "circuit.json"
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read a circuit from {str(path)!r}: {e}") from None
        if not isinstance(data, dict) or data.get("kind") != "circuit" or data.get("format") != FORMAT_VERSION:
            raise ConfigError(f"{path} is not a circuitfind circuit file of format {FORMAT_VERSION}")
        graph = Graph(**data["graph"])
        return cls(graph.mask_from_edges(data["edges"]), graph, data.get("provenance", {}))

    def __repr__(self) -> str:
        return f"Circuit({self.n_edges} of {self.graph.n_edges} edges, {len(self.nodes())} nodes)"

    # set algebra over the edges of one graph: a & b (shared), a | b (either), a - b (only in a)
    def _combine(self, other: "Circuit", op: str, mask: Tensor) -> "Circuit":
        return Circuit(mask, self.graph, {"combined": op, "a": self.provenance, "b": other.provenance})

    def __and__(self, other: "Circuit") -> "Circuit":
        return self._combine(other, "and", self.mask & _same_graph(self, other).mask)

    def __or__(self, other: "Circuit") -> "Circuit":
        return self._combine(other, "or", self.mask | _same_graph(self, other).mask)

    def __sub__(self, other: "Circuit") -> "Circuit":
        return self._combine(other, "minus", self.mask & ~_same_graph(self, other).mask)


def _same_graph(a: Circuit, b) -> Circuit:
    if not isinstance(b, Circuit):
        raise ConfigError(f"circuits combine with circuits, not {type(b).__name__}")
    if a.graph != b.graph:
        raise ConfigError(f"the circuits are over different graphs ({a.graph} and {b.graph}); compare circuits "
                          f"of one model")
    return b


def overlap(a: Circuit, b: Circuit) -> dict:
    """How much two circuits of one model agree, in edges and in nodes (senders with an edge):
    each one's count, the shared count and the intersection over union (1.0 for two empty circuits)."""
    _same_graph(a, b)

    def counts(x: set, y: set) -> dict:
        union = len(x | y)
        return {"a": len(x), "b": len(y), "shared": len(x & y), "iou": len(x & y) / union if union else 1.0}
    return {"edges": counts(set(a.edges()), set(b.edges())), "nodes": counts(set(a.nodes()), set(b.nodes()))}
