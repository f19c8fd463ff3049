"""The shipped trained toy model: loads offline, does its task, and its known circuit is found."""

from __future__ import annotations

import torch

import circuitfind as cf


def _pattern(model, tokens, layer):
    _, cache = model.run_with_cache(tokens, names_filter=[f"blocks.{layer}.attn.hook_pattern"])
    return cache[f"blocks.{layer}.attn.hook_pattern"][:, 0]  # [batch, q, k] (one head)


def test_toy_induction_does_induction():
    model = cf.load_model("toy-induction")
    batch = cf.load_task("induction", n=100, split="test").batch(model)
    with torch.no_grad():
        logits = model(batch.clean.tokens)[torch.arange(100), batch.clean.answer_pos]
    assert (logits.argmax(-1) == batch.targets.correct[:, 0]).float().mean() >= 0.9


def test_toy_induction_heads_are_what_the_ground_truth_says():
    """a0.h0 attends to the previous token; a1.h0 to the token after the previous occurrence."""
    model = cf.load_model("toy-induction")
    L = 8
    tokens = torch.cat([torch.randint(0, 64, (64, L))] * 2, dim=1)[:, :-1]
    q = torch.arange(L, 2 * L - 1)
    assert _pattern(model, tokens, 0)[:, q, q - 1].mean() > 0.5
    assert _pattern(model, tokens, 1)[:, q, q - L + 1].mean() > 0.3
    assert "a0.h0->a1.h0<k>" in model.ground_truth["induction"]


def test_discovery_finds_the_induction_circuit():
    model = cf.load_model("toy-induction")
    task = cf.load_task("induction", n=40)
    scores = cf.score_edges(model, task, "eap-ig")
    top = [name for name, _ in scores.top(4)]
    assert "a0.h0->a1.h0<k>" in top  # previous-token head → induction head, through the keys
    circuit = cf.prune(scores, edges=4)
    assert cf.evaluate(model, task, circuit)["faithfulness"] >= 0.9
    # the query (the current token) is the same in clean and corrupted prompts, so corrupted ablation
    # cannot see input->a1.h0<q>; against every edge it can see, the ranking is perfect
    visible = [e for e in model.ground_truth["induction"] if e != "input->a1.h0<q>"]
    assert cf.roc_auc(scores, visible) == 1.0
