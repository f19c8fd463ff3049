"""Error bars: per-example scores from the same passes, the bootstrap, circuit stability."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.engine.ablation import ablated_outputs
from circuitfind.engine.attribution import attribute
from circuitfind.engine.node_ig import node_integrated_gradients
from circuitfind.engine.patching import Inputs, edge_effects
from circuitfind.methods import PER_EXAMPLE
from tests.conftest import VOCAB, tiny_hf, tiny_model


@pytest.fixture(scope="module")
def model():
    return cf.from_hf(tiny_hf("gpt2")).double()


def _inputs(batch=4, pos=7):
    g = torch.Generator().manual_seed(2)
    mask = torch.ones(batch, pos, dtype=torch.long)
    mask[1, :2] = 0  # a left-padded prompt
    clean = torch.randint(3, VOCAB, (batch, pos), generator=g)
    corrupt = torch.cat([clean[:, :2], torch.randint(3, VOCAB, (batch, pos - 2), generator=g)], 1)
    return Inputs.of(clean, mask), Inputs.of(corrupt, mask)


def _metric(logits):  # logits [..., batch, vocab] → [..., batch]
    return logits[..., 3] - logits[..., 5]


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2_moe+experts"])
def test_each_examples_part_is_that_example_scored_alone(family, monkeypatch):
    """attribute / node IG / exact patching with per_example: example i's part equals the method run on example
    i alone (its objective that example's metric over the batch size), and the parts sum to the scores. Tiny
    gradient chunks make q/k/v gradients arrive in spans that begin and end inside examples."""
    from circuitfind.engine import walk_grad
    monkeypatch.setattr(walk_grad, "GRAD_CHUNK_ELEMENTS", 3 * 4 * 32 * 5)  # 5 token rows a chunk (pos 7)
    model = tiny_model(family)
    clean, corrupt = _inputs()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    b = clean.batch
    mean = lambda logits: _metric(logits).mean(-1)  # noqa: E731
    for run in (lambda i, a, o, **k: attribute(model, i, a, o, alphas=(0.5, 1.0), **k),
                lambda i, a, o, **k: node_integrated_gradients(model, i, a, o, steps=2, **k)):
        scores, parts = run(clean, abl.clone(), mean, per_example=True)
        assert parts.shape == (b, *scores.shape) and parts.abs().max() > 1e-3
        assert (parts.sum(0) - scores).abs().max() <= 1e-6 * scores.abs().max()
        for i in range(b):
            alone = run(clean.rows(slice(i, i + 1)), abl[:, i:i + 1].clone(), lambda logits: mean(logits) / b)
            assert (parts[i] - alone).abs().max() <= 1e-6 * scores.abs().max()
    effects = edge_effects(model, clean, abl, _metric, per_example=True)  # [dst, src, batch]
    assert (effects.mean(-1) - edge_effects(model, clean, abl, mean)).abs().max() <= 1e-6  # (float32 effects)
    one = edge_effects(model, clean.rows(slice(2, 3)), abl[:, 2:3], mean)
    assert (effects[..., 2] - one).abs().max() <= 1e-6 and one.abs().max() > 1e-3


@pytest.mark.parametrize("method", PER_EXAMPLE)
def test_the_mean_of_per_example_scores_is_the_methods_scores(model, method):
    task = cf.load_task("induction", n=6, metric="logit-diff")
    scores = cf.score_edges(model, task, method, per_example=True)
    assert scores.per_example.shape == (6, *scores.scores.shape)
    assert scores.scores.abs().max() > 1e-4
    assert (scores.per_example.mean(0) - scores.scores).abs().max() <= 1e-6 * scores.scores.abs().max()
    assert not torch.allclose(scores.per_example[0], scores.per_example[1])  # examples do differ
    if method in ("eap", "exact"):  # a batch at a time: the same examples' scores, in order
        split = cf.score_edges(model, task, method, per_example=True, batch_size=4)
        assert (split.per_example - scores.per_example).abs().max() <= 1e-6 * scores.scores.abs().max()


def test_methods_that_do_not_average_have_no_per_example_scores(model):
    task = cf.load_task("induction", n=4, metric="logit-diff")
    for method in ("acdc", "edge-pruning", "ifr"):
        with pytest.raises(cf.ConfigError, match="does not average over examples"):
            cf.score_edges(model, task, method, per_example=True)
    with pytest.raises(cf.ConfigError, match="not each example's"):
        cf.score_edges(model, task, "eap-ig-edges", per_example=True)
    with pytest.raises(cf.ConfigError, match="per_example"):
        cf.score_edges(model, task, "eap", per_example="yes")


def test_per_example_scores_past_the_memory_bound_live_in_a_mapped_file(model, monkeypatch):
    from circuitfind.methods import common
    task = cf.load_task("induction", n=4, metric="logit-diff")
    in_memory = cf.score_edges(model, task, "eap", per_example=True).per_example
    monkeypatch.setattr(common, "EXAMPLE_MEMORY_BOUND", 1024)
    mapped = cf.score_edges(model, task, "eap", per_example=True).per_example
    assert torch.equal(mapped, in_memory)
    assert mapped.untyped_storage().filename is not None  # (a file mapping, not the heap)
