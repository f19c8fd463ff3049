"""The shared task's ensembles: the normalised average of methods, and edge pruning warm-started from one."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.errors import ConfigError
from tests.conftest import tiny_hf


@pytest.fixture(scope="module")
def setting():
    return cf.from_hf(tiny_hf("gpt2")).double(), cf.load_task("induction", n=4, metric="logit-diff")


def test_ensemble_is_the_mean_of_each_members_scores_over_its_largest_magnitude(setting):
    model, task = setting
    mask = model.graph.edge_mask
    members = {m: cf.score_edges(model, task, m).scores for m in ("eap", "eap-ig", "eap-ig-activations")}
    by_hand = sum(s / s[mask].abs().max() for s in members.values()) / 3
    ensemble = cf.score_edges(model, task, "ensemble").scores
    assert torch.allclose(ensemble, by_hand, atol=1e-6)
    assert not torch.allclose(ensemble, members["eap"] / members["eap"][mask].abs().max(), atol=1e-3)
    two = cf.score_edges(model, task, "ensemble", methods=["eap", "exact"]).scores
    eap, exact = members["eap"], cf.score_edges(model, task, "exact").scores
    assert torch.allclose(two, (eap / eap[mask].abs().max() + exact / exact[mask].abs().max()) / 2, atol=1e-6)
    with pytest.raises(ConfigError, match="unknown method"):
        cf.score_edges(model, task, "ensemble", methods=["eap", "nope"])
    with pytest.raises(ConfigError, match="itself"):
        cf.score_edges(model, task, "ensemble", methods=["ensemble"])


def test_edge_pruning_warm_started_from_a_method_starts_from_its_top_edges(setting):
    model, task = setting
    g = model.graph
    k = round(0.2 * g.n_edges)
    warm = cf.score_edges(model, task, "eap-ig").scores
    top = cf.prune(cf.score_edges(model, task, "eap-ig"), edges=k, remove_dangling=False).mask
    # one step at a tiny learning rate: the gates are still where the warm start put them
    started = cf.score_edges(model, task, "edge-pruning", init="eap-ig", sparsity=0.8, steps=1, lr=1e-6).scores
    assert torch.equal(started > 0.5, top & g.edge_mask) and warm.abs().max() > 0
    cold = cf.score_edges(model, task, "edge-pruning", sparsity=0.8, steps=1, lr=1e-6).scores
    assert bool((cold[g.edge_mask] > 0.9).all())  # the default start: every gate open
    with pytest.raises(ConfigError, match="neither a logit nor a method"):
        cf.score_edges(model, task, "edge-pruning", init="nope")
    with pytest.raises(ConfigError, match="itself"):
        cf.score_edges(model, task, "edge-pruning", init="edge-pruning")
