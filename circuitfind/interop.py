"""Exchange formats: the EAP-IG graph JSON (also what the MIB circuit track reads) and the MIB
submission layout.

EAP-IG graph JSON:
    {"cfg": {"n_layers", "n_heads", "parallel_attn_mlp", "d_model"},
     "nodes": {"input": {"in_graph": bool}, "a0.h0": ..., "m0": ..., "logits": ...},
     "edges": {"input->a0.h0<q>": {"score": float, "in_graph": bool}, ...},
     "circuitfind": {"method", "ablation", "config" (EAP-IG's steps and points included), "reproduces"}}
The last key (extra to the format, which readers ignore) says what made the scores and which reference's
quantity they are.
Edge and node names are circuitfind's own (the same graph as EAP-IG and MIB), so nothing is renamed.

MIB submission: one folder per task and model, `<task>_<model>/`, holding one importance-score file
(`importances.json`, the graph JSON with every edge's score).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from circuitfind.circuit import Circuit, EdgeScores, _atomic_write, filled_config, graph_from, read_json, reproduces
from circuitfind.errors import ConfigError


def to_eap_ig(scores: EdgeScores, circuit: Circuit | None = None, d_model: int | None = None) -> dict:
    """The graph JSON of scores; `in_graph` from the circuit (all False without one)."""
    g = scores.graph
    if g.n_experts:
        raise ConfigError("the EAP-IG / MIB graph format has no expert nodes: export scores of the node graph "
                          "(the model loaded without experts=True)")
    if scores.spans:
        raise ConfigError("the EAP-IG / MIB graph format has no positions: export a run scored without positions "
                          "(its scores summed over the spans are those: EdgeScores(scores.scores.sum((-1, -2)), ...))")
    mask = circuit.mask if circuit is not None else torch.zeros_like(g.edge_mask)
    if circuit is not None and circuit.graph != g:
        raise ConfigError("the circuit and the scores are over different graphs")
    used = mask.any(0).tolist() + [bool(mask[g.logits_receiver].any())]
    cfg = {"n_layers": g.n_layers, "n_heads": g.n_heads, "parallel_attn_mlp": g.parallel}
    if d_model is not None:
        cfg["d_model"] = d_model
    nodes = {name: {"in_graph": bool(u)} for name, u in zip([*g.senders, "logits"], used)}
    edges = {g.edge_name(d, s): {"score": float(scores.scores[d, s]), "in_graph": bool(mask[d, s])}
             for d, s in g.edge_mask.nonzero().tolist()}
    data = {"cfg": cfg, "nodes": nodes, "edges": edges}
    if scores.method:  # what made the scores (readers of the format look at cfg, nodes and edges alone)
        config = filled_config(scores.method, scores.config)
        data["circuitfind"] = {"method": scores.method, "ablation": scores.ablation, "config": config,
                               "reproduces": reproduces(scores.method, config)}
    return data


def from_eap_ig(data: dict | str | os.PathLike) -> tuple[EdgeScores, Circuit]:
    """Scores and circuit (the edges marked in_graph) from a graph JSON (dict or path); a damaged or foreign
    file is refused, naming it and what is wrong."""
    where = "the EAP-IG graph" if isinstance(data, dict) else str(data)
    if not isinstance(data, dict):
        data = read_json(data, "an EAP-IG / MIB graph JSON ({'cfg': ..., 'nodes': ..., 'edges': ...})")
    cfg, edges = data.get("cfg"), data.get("edges")
    if not isinstance(cfg, dict) or not isinstance(edges, dict):
        missing = "cfg" if not isinstance(cfg, dict) else "edges"
        raise ConfigError(f"{where} is not an EAP-IG graph JSON (no {missing!r} object)")
    g = graph_from({"graph": {"n_layers": cfg.get("n_layers"), "n_heads": cfg.get("n_heads"),
                              "parallel": cfg.get("parallel_attn_mlp", False)}}, where)
    scores = torch.zeros(g.n_receivers, g.n_senders)
    mask = torch.zeros(g.n_receivers, g.n_senders, dtype=torch.bool)
    for name, e in edges.items():
        try:
            d, s = g.edge_index(name)
        except ConfigError as error:
            raise ConfigError(f"{where} is damaged or of another model: {error}") from None
        score = e.get("score") if isinstance(e, dict) else None
        if not isinstance(e, dict) or not (score is None or isinstance(score, (int, float))) or isinstance(score, bool) \
                or not math.isfinite(score or 0.0) or not isinstance(e.get("in_graph", False), bool):
            raise ConfigError(f"{where} is damaged: edge {name!r} is {e!r}, not {{'score': number, 'in_graph': bool}}")
        scores[d, s] = float(score or 0.0)
        mask[d, s] = e.get("in_graph", False)
    if len(edges) != g.n_edges:
        raise ConfigError(f"{where} lists {len(edges)} edges but a {g} has {g.n_edges}")
    made = data.get("circuitfind") or {}
    return (EdgeScores(scores, g, method="imported", ablation=made.get("ablation", ""),
                       config={"from": made} if made else {}),
            Circuit(mask, g, {"kind": "circuit", "source": "eap-ig json"}))


def save_eap_ig(path, scores: EdgeScores, circuit: Circuit | None = None, d_model: int | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_eap_ig(scores, circuit, d_model)
    _atomic_write(path, lambda p: Path(p).write_text(json.dumps(data)))
    return path


def mib_path(directory, task: str, model: str) -> Path:
    """Where a MIB submission keeps a task's and model's scores: `<directory>/<task>_<model>/importances.json`."""
    if "_" in task or "_" in model or "/" in task or "/" in model:
        raise ConfigError(f"MIB folder names are <task>_<model>; {task!r} / {model!r} must not contain '_' or '/'")
    return Path(directory) / f"{task}_{model}" / "importances.json"


def mib_task_name(task: str) -> str:
    """A task's name in a MIB submission's folder: MIB's data read from disk ("mib:ioi", "mib:arc-easy/<column>")
    go under MIB's own task name (ioi, arc-easy, ...); every other task under its own."""
    return task.removeprefix("mib:").split("/")[0] if task.startswith("mib:") else task


def write_mib_submission(directory, entries: dict[tuple[str, str], EdgeScores]) -> list[Path]:
    """entries: {(task, model): scores} → `mib_path(directory, task, model)` each."""
    return [save_eap_ig(mib_path(directory, task, model), scores) for (task, model), scores in entries.items()]


def read_mib_submission(directory) -> dict[tuple[str, str], EdgeScores]:
    """A MIB submission folder read back: {(task, model): scores}, one `<task>_<model>/*.json` each."""
    if not Path(directory).is_dir():
        raise ConfigError(f"{str(directory)!r} is not a directory; a MIB submission is a folder of <task>_<model>/")
    found = {}
    for folder in sorted(Path(directory).iterdir()):
        files = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if not files:
            continue
        if len(files) != 1:
            raise ConfigError(f"{folder} holds {len(files)} JSON files; an importance submission has one")
        task, _, model = folder.name.partition("_")
        found[(task, model)] = from_eap_ig(files[0])[0]
    return found
