"""ablation="optimal" (Li & Janson 2024): each sender's trained constant against its mean, the loss it minimises
against the slow loop reference, and the cache per (model, task)."""

from __future__ import annotations

import torch

import circuitfind as cf
from circuitfind.engine.ablation import mean_outputs, optimal_outputs, single_ablation_losses
from tests.reference import reference_masked_logits


def _setup(n=6):
    model = cf.load_model("toy-lm").double()
    task = cf.load_task("ioi", n=n)
    return model, task, task.batch(model).clean


def test_each_senders_optimal_constant_loses_no_more_than_its_mean():
    model, _, clean = _setup(n=3)
    mean = mean_outputs(model, [clean], positional=False)
    best = optimal_outputs(model, [clean], steps=4, checks=2)
    at_mean, at_best = single_ablation_losses(model, [clean], mean), single_ablation_losses(model, [clean], best)
    assert bool((at_best <= at_mean + 1e-12).all())
    assert float((at_mean - at_best).max()) > 1e-3  # the mean is not optimal: training moved some constant
    assert float(at_mean.max()) > 1e-3


def test_the_loss_is_kl_from_the_clean_run_with_one_sender_ablated_by_the_slow_loop():
    model, _, clean = _setup(n=3)
    g = model.graph
    ablated = mean_outputs(model, [clean], positional=False) + 0.1 * torch.randn(g.n_senders, 1, 1, model.cfg.d_model,
                                                                                  dtype=model.dtype)
    got = single_ablation_losses(model, [clean], ablated)
    full = g.edge_mask.to(model.dtype)
    target = torch.log_softmax(reference_masked_logits(model, clean.tokens, clean.attention_mask, clean.answer_pos,
                                                       ablated, full), -1)
    for u in (0, 3, g.n_senders - 1):
        mask = full.clone()
        mask[:, u] = 0
        logp = torch.log_softmax(reference_masked_logits(model, clean.tokens, clean.attention_mask, clean.answer_pos,
                                                         ablated, mask), -1)
        want = (target.exp() * (target - logp)).sum(-1).mean()
        assert abs(float(got[u]) - float(want)) <= 1e-6 * max(1.0, float(want)) and float(want) > 1e-6


def test_score_edges_under_optimal_ablation_trains_once_per_model_and_task(monkeypatch):
    import circuitfind.engine.ablation as ablation

    monkeypatch.setattr(ablation, "OPTIMAL_STEPS", 2)  # (the training's quality is the first test's)
    model, task, _ = _setup(n=3)
    first = cf.score_edges(model, task, "eap", ablation="optimal")
    cache = task.__dict__["_optimal_ablation"]
    held = next(iter(cache.values()))
    again = cf.score_edges(model, task, "eap", ablation="optimal")
    assert len(cache) == 1 and next(iter(cache.values())) is held
    assert torch.equal(first.scores, again.scores) and first.scores.abs().max() > 0
    assert not torch.equal(first.scores, cf.score_edges(model, task, "eap", ablation="mean").scores)
