"""prune(strategy="ratio"): the positive-negative ratio selection against a plain sort by hand."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.circuit import EdgeScores
from circuitfind.errors import ConfigError
from tests.test_attribution import _linear_model


def _scores(model, values):
    g = model.graph
    raw = torch.zeros(g.n_receivers, g.n_senders)
    raw[g.edge_mask] = torch.tensor(values, dtype=torch.float32)
    return EdgeScores(raw, g, method="eap", model="m", task="t", ablation="corrupted", config={})


def _by_hand(values, n, ratio):
    """Edge indices (in edge_mask order): round(ratio·n) largest positives, the rest the most negative."""
    pos = sorted((i for i, v in enumerate(values) if v > 0), key=lambda i: -values[i])
    neg = sorted((i for i, v in enumerate(values) if v < 0), key=lambda i: values[i])
    k = min(round(ratio * n), len(pos))
    k = max(k, n - len(neg))
    return set(pos[:k]) | set(neg[: n - k])


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.8, 1.0])
def test_ratio_takes_the_share_of_positive_edges_and_the_most_negative_rest(ratio):
    model = _linear_model()
    g = model.graph
    gen = torch.Generator().manual_seed(3)
    values = (torch.randn(g.n_edges, generator=gen) * torch.linspace(0.1, 2, g.n_edges)).tolist()
    scores = _scores(model, values)
    for n in (1, 5, 12):
        circuit = cf.prune(scores, edges=n, strategy="ratio", ratio=ratio, remove_dangling=False)
        kept = set(circuit.mask[g.edge_mask].nonzero()[:, 0].tolist())
        assert kept == _by_hand(values, n, ratio)
        assert circuit.provenance["ratio"] == ratio


def test_ratio_one_takes_positives_over_larger_negatives():
    model = _linear_model()
    values = [0.1 * (i + 1) for i in range(model.graph.n_edges)]
    values[0] = -9.0  # the largest |score|: top-n takes it, ratio=1 does not
    scores = _scores(model, values)
    g = model.graph
    top = cf.prune(scores, edges=3, remove_dangling=False).mask[g.edge_mask]
    ratio = cf.prune(scores, edges=3, strategy="ratio", ratio=1.0, remove_dangling=False).mask[g.edge_mask]
    assert bool(top[0]) and not bool(ratio[0]) and int(ratio.sum()) == 3


def test_one_sign_short_is_filled_from_the_other():
    model = _linear_model()
    values = [0.0] * model.graph.n_edges
    values[:3] = [3.0, 2.0, 1.0]
    values[3:5] = [-1.0, -5.0]
    scores = _scores(model, values)
    kept = cf.prune(scores, edges=4, strategy="ratio", ratio=0.0, remove_dangling=False).mask[model.graph.edge_mask]
    assert kept.nonzero()[:, 0].tolist() == [0, 1, 3, 4]  # both negatives, then the best positives


def test_ratio_is_asked_for_and_checked():
    model = _linear_model()
    scores = _scores(model, [1.0] * model.graph.n_edges)
    with pytest.raises(ConfigError, match="takes ratio="):
        cf.prune(scores, edges=3, strategy="ratio")
    with pytest.raises(ConfigError, match="ratio= is for strategy='ratio'"):
        cf.prune(scores, edges=3, ratio=0.5)
    with pytest.raises(ConfigError, match=r"fraction in \[0, 1\]"):
        cf.prune(scores, edges=3, strategy="ratio", ratio=1.5)
    with pytest.raises(ConfigError, match="takes edges="):
        cf.prune(scores, threshold=0.1, strategy="ratio", ratio=0.5)
