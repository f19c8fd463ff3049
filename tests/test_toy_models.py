"""The shipped trained toy model: loads offline, does its task, and its known circuit is found."""

from __future__ import annotations

import json

import pytest
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


TOY_LM_TASKS = ["ioi", "greater-than", "sva", "gendered-pronoun", "capital-country", "arithmetic", "docstring", "mcqa",
                "induction"]


@pytest.fixture(scope="module")
def toy_lm():
    return cf.load_model("toy-lm")


@pytest.mark.parametrize("task", TOY_LM_TASKS)
def test_toy_lm_does_every_built_in_task(toy_lm, task):
    """≥ 90% on the test split: the correct answer beats every wrong one (the task's own contrast)."""
    assert cf.task_accuracy(toy_lm, cf.load_task(task, n=100, split="test")) >= 0.9


def test_toy_lm_loads_with_transformers_too(toy_lm):
    import transformers

    from circuitfind.models.zoo import SHIPPED

    directory = SHIPPED / "toy-lm"
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory, local_files_only=True).eval()
    tok = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    tokens = toy_lm.to_tokens("When Mary and John went to the store , John gave a drink to")
    with torch.no_grad():
        torch.testing.assert_close(toy_lm(tokens), hf(input_ids=tokens).logits, atol=1e-4, rtol=1e-4)
    assert tok.decode(hf(input_ids=tokens).logits[0, -1].argmax()).strip() == "Mary"
    meta = json.loads((directory / "training.json").read_text())
    assert meta["script"] == "scripts/train_toy_lm.py" and all(a >= 0.9 for a in meta["accuracy_test_split"].values())
