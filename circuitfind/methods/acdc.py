"""ACDC (Conmy et al. 2023): walk the receivers from the logits down; for each edge into a receiver,
remove it when removing it changes the metric by less than a threshold τ.

    Δ(e) = behaviour lost by removing e from the current circuit   (KL increase by default)
    remove e  ⇔  Δ(e) < τ

Batched: the edges into one receiver are tried in chunks. Chunk member j is the current circuit
minus the first j edges (every earlier edge assumed removed), all evaluated in one masked forward
that starts from the clean run below the receiver's layer. Decisions are then read off in order up
to the first edge that is kept; the rest of the chunk assumed its removal and is tried again. This
gives exactly the circuit of the one-forward-per-edge loop (`naive=True`, the reference).

Scores: each edge's Δ when it was decided (edges into nodes already cut off get 0), so
`prune(scores, threshold=τ, absolute=False)` is the ACDC circuit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from circuitfind.engine.patching import Workspace, masked_forward, prefix
from circuitfind.errors import ConfigError
from circuitfind.methods.common import prepare
from circuitfind.metrics import kl


@dataclass(frozen=True)
class ACDCConfig:
    threshold: float = 0.01
    metric: Literal["kl", "task"] = "kl"
    chunk: int = 16  # edges tried per forward
    naive: bool = False  # one full forward per edge (the reference loop)
    receivers: tuple[int, ...] | None = None  # sweep only these receivers (the rest stay whole)


def score(model, task, cfg: ACDCConfig, ablation: str = "corrupted", seed: int = 0, quiet: bool = True):
    if cfg.threshold <= 0 or cfg.chunk < 1 or cfg.metric not in ("kl", "task"):
        raise ConfigError(f"ACDC needs threshold > 0, chunk ≥ 1 and metric 'kl' or 'task'; got {cfg}")
    setup = prepare(model, task, ablation, seed)
    return _run(model, setup, cfg, quiet)


def _values(model, setup, cfg, masks, start=None, workspace=None):
    """Behaviour lost [k] by circuits masks [k, dst, src] (KL to the clean run, or −sign·Δmetric)."""
    with torch.no_grad():
        logits = masked_forward(model, setup.batch.clean, setup.ablated, masks, start=start,
                                workspace=workspace)  # [k, batch, vocab]
        if cfg.metric == "kl":
            k, b = logits.shape[:2]
            return kl(logits.reshape(k * b, -1), setup.targets.repeat(k)).view(k, b).mean(1)
        return -setup.sign * setup.per_mask(logits)


def _run(model, setup, cfg, quiet):
    g = model.graph
    full = g.edge_mask.to(model.device, model.dtype)
    circuit = full.clone()
    scores = torch.zeros(g.n_receivers, g.n_senders)
    current = float(_values(model, setup, cfg, circuit[None])[0])
    wanted = range(g.n_receivers) if cfg.receivers is None else cfg.receivers
    order = sorted(wanted, key=lambda r: (-int(g.receiver_layer[r]), -r))  # logits first
    prefixes, workspace = {}, Workspace()  # one workspace: the sweep's forwards run one at a time
    bar = tqdm(total=int(g.edge_mask[list(wanted)].sum()), desc="ACDC", unit="edge", disable=quiet)
    for dst in order:
        srcs = g.edge_mask[dst].nonzero()[:, 0].flip(0).tolist()  # latest sender first
        node = int(g.receiver_node[dst])
        if node >= 0 and not bool(circuit[:, node].any()):  # this node feeds nothing any more
            circuit[dst] = 0
            bar.update(len(srcs))
            continue
        layer = int(g.receiver_layer[dst])
        if not cfg.naive and layer not in prefixes:
            prefixes[layer] = prefix(model, setup.batch.clean, setup.ablated, layer)
        i = 0
        while i < len(srcs):
            chunk = srcs[i: i + (1 if cfg.naive else cfg.chunk)]
            masks = circuit.expand(len(chunk), -1, -1).clone()
            for j, src in enumerate(chunk):  # member j: the first j + 1 edges removed
                masks[j:, dst, src] = 0
            start = None if cfg.naive else prefixes[layer]
            values = _values(model, setup, cfg, masks, start, workspace).tolist()
            for j, src in enumerate(chunk):
                delta = values[j] - current
                scores[dst, src] = delta
                i += 1
                bar.update(1)
                if delta < cfg.threshold:  # remove, and go on with this circuit
                    circuit[dst, src] = 0
                    current = values[j]
                else:  # kept: later members assumed its removal; try them again
                    break
    bar.close()
    return scores
