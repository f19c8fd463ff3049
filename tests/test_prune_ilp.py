"""prune(strategy="ilp"): the integer program's circuit against every subset of a tiny graph's edges."""

from __future__ import annotations

import itertools

import torch

import circuitfind as cf
from circuitfind.circuit import EdgeScores
from circuitfind.graph import Graph
from circuitfind.prune import without_dangling


def test_ilp_equals_brute_force_on_a_tiny_graph():
    g = Graph(1, 2)  # input, two heads, an MLP: 13 edges, 8192 subsets
    edges = g.edge_mask.nonzero().tolist()
    assert len(edges) == 13
    connected = []  # every subset with no dangling edge
    for bits in itertools.product([False, True], repeat=len(edges)):
        mask = torch.zeros_like(g.edge_mask)
        mask[tuple(torch.tensor(edges)[list(bits)].T)] = True
        if torch.equal(without_dangling(g, mask), mask):
            connected.append(mask)
    gen = torch.Generator().manual_seed(3)
    for trial in range(3):
        raw = torch.randn(g.n_receivers, g.n_senders, generator=gen) * g.edge_mask
        scores = EdgeScores(raw, g, method="eap", model="tiny", task="t", ablation="corrupted", config={})
        key = raw.abs()
        for n in (1, 3, 5, 8):
            best = max(float(key[m].sum()) for m in connected if int(m.sum()) <= n)
            circuit = cf.prune(scores, edges=n, strategy="ilp")
            assert circuit.mask.sum() <= n
            assert torch.equal(without_dangling(g, circuit.mask), circuit.mask)  # nothing dangles (none removed)
            assert abs(float(key[circuit.mask].sum()) - best) < 1e-6, (trial, n)
            assert circuit.provenance["dangling_removed"] == 0
    # top-n can do worse: its edges dangle and are removed (the ILP's total is ≥ that circuit's)
    topn = cf.prune(scores, edges=3)
    assert float(key[cf.prune(scores, edges=3, strategy="ilp").mask].sum()) >= float(key[topn.mask].sum()) - 1e-9
