"""EAP-GP: GradPath's points and the scores taken on them against a slow re-derivation (tests/reference.py:
plain autograd through the loop forward, the input embedding a leaf; scores edge by edge), on tiny GPT-2 and
Llama (grouped-query, rotary) models with a left-padded prompt."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.engine.ablation import ablated_outputs
from circuitfind.engine.attribution import attribute
from circuitfind.engine.gradient_path import gradient_path
from circuitfind.engine.patching import Inputs
from circuitfind.errors import ConfigError
from tests.conftest import VOCAB, tiny_hf
from tests.reference import clean_outputs, reference_run, reference_scores

STEPS = 3


def _objective(logits):
    return (logits[:, 5] - logits[:, 7]).mean()


def _setup(family, pos=7):
    model = cf.from_hf(tiny_hf(family)).double()
    g = torch.Generator().manual_seed(11)
    mask = torch.ones(3, pos, dtype=torch.long)
    mask[0, :2] = 0  # a left-padded prompt
    clean = Inputs.of(torch.randint(3, VOCAB, (3, pos), generator=g), mask)
    corrupt = Inputs.of(torch.cat([clean.tokens[:, :3], torch.randint(3, VOCAB, (3, pos - 3), generator=g)], 1), mask)
    return model, clean, ablated_outputs(model, "corrupted", clean, corrupt)


def _reference_path(model, inputs, abl, steps, step):
    """Eq. 8 by hand: the loop forward's logits with the input embedding replaced, its autograd gradient."""
    def run(x):
        logits, _, outs = reference_run(model, inputs.tokens, inputs.attention_mask, inputs.answer_pos, abl,
                                        replace={0: x})
        return logits, outs[0]

    target = run(abl[0].expand(*inputs.tokens.shape, -1))[0].detach()
    gamma = model.embed(inputs.tokens, model.positions(inputs.attention_mask)).detach()
    path = []
    for _ in range(steps):
        logits, leaf = run(gamma)
        (logits - target).pow(2).sum().backward()
        grad = leaf.grad
        gamma = gamma - step * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1)
        path.append(gamma.detach())
    return path


def _relative(got, want):
    assert want.abs().max() > 1e-4  # a comparison of zeros would pass whatever the formulas
    return float((got.double() - want).abs().max() / want.abs().max())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_gradient_path_and_its_scores_match_the_slow_reference(family):
    """γ_j = γ_{j−1} − step·g/‖g‖ from the clean input, g the gradient of ‖G(γ) − G(x')‖² (each example its own
    norm); the scores −⟨D_u, mean_j g_v(γ_j)⟩ with D from the clean run."""
    model, clean, abl = _setup(family)
    step = 0.5
    want_path = _reference_path(model, clean, abl, STEPS, step)
    path = gradient_path(model, clean, abl, STEPS, step)
    assert len(path) == STEPS
    for got, want in zip(path, want_path):
        assert float((got - want).abs().max()) <= 1e-9
    moved = [float((b - a).flatten(1).norm(dim=1).max()) for a, b in zip(path, path[1:])]
    assert moved == pytest.approx([step] * (STEPS - 1))  # each example moves by `step` a step
    _, D = clean_outputs(model, clean, abl)
    want = sum(reference_scores(model, clean, abl, _objective, D, replace={0: x}) for x in want_path) / STEPS
    got = attribute(model, clean, abl, _objective, input_points=path)
    assert _relative(got, want) <= 1e-6
    straight = attribute(model, clean, abl, _objective, alphas=[k / STEPS for k in range(1, STEPS + 1)])
    assert _relative(straight, want) > 1e-3  # and the path is not EAP-IG's line


def test_eap_gp_through_score_edges_per_example_and_batches():
    """The method: batches give the task's mean; each example's scores sum to it; bad options refused first."""
    model = cf.load_model("toy-lm").double()
    task = cf.load_task("ioi", n=6)
    whole = cf.score_edges(model, task, "eap-gp", steps=2)
    batched = cf.score_edges(model, task, "eap-gp", steps=2, batch_size=4)
    assert torch.allclose(whole.values(), batched.values(), atol=1e-10)
    assert bool((whole.values().abs() > 1e-6).any())
    ig = cf.score_edges(model, task, "eap-ig", steps=2)
    assert not torch.allclose(whole.values(), ig.values(), atol=1e-6)
    per = cf.score_edges(model, task, "eap-gp", steps=2, per_example=True)
    assert torch.allclose(per.per_example.mean(0), per.scores, atol=1e-10)
    for bad in ({"step": 0.0}, {"step": float("nan")}, {"steps": 0}):
        with pytest.raises(ConfigError, match="step"):
            cf.score_edges(model, task, "eap-gp", **bad)
