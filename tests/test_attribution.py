"""Attribution: receiver gradients against finite differences, and EAP = exact where linear."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.engine.ablation import ablated_outputs
from circuitfind.engine.attribution import attribute
from circuitfind.engine.patching import Inputs, masked_forward
from tests.conftest import VOCAB, no_norm_model, tiny_hf, tiny_model


def _objective(logits):
    return (logits[:, 5] - logits[:, 7]).mean()


def _pair(batch=3, pos=7):
    g = torch.Generator().manual_seed(5)
    mask = torch.ones(batch, pos, dtype=torch.long)
    mask[0, :3] = 0  # a left-padded prompt
    return (Inputs.of(torch.randint(3, VOCAB, (batch, pos), generator=g), mask),
            Inputs.of(torch.randint(3, VOCAB, (batch, pos), generator=g), mask))


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama", "qwen2", "qwen3", "gemma2",
                                    "bloom", "mixtral", "olmo2", "gpt_oss", "qwen2_moe+experts"])
# ALiBi, experts, q/k norms over every head, attention sinks, the expert-level graph
def test_scores_are_minus_mask_gradients_and_match_finite_differences(family):
    model = tiny_model(family)
    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    scores = attribute(model, clean, abl, _objective).double()
    g = model.graph
    # the mask-gradient path goes through the mixing products, not the residual-stream hooks
    mask = torch.ones(g.n_receivers, g.n_senders, dtype=torch.float64, requires_grad=True)
    _objective(masked_forward(model, clean, abl, mask)).backward()
    assert torch.allclose(scores, -mask.grad * g.edge_mask, atol=1e-6)
    # finite differences: d objective / d mask[v, u] at mask = 1 equals -score[v, u]
    edges = g.edge_mask.nonzero()
    for dst, src in edges[torch.linspace(0, len(edges) - 1, 12).long()].tolist():
        eps = 1e-5
        up, down = torch.ones_like(mask.detach()), torch.ones_like(mask.detach())
        up[dst, src], down[dst, src] = 1 + eps, 1 - eps
        fd = (_objective(masked_forward(model, clean, abl, up)) - _objective(masked_forward(model, clean, abl, down))) / (2 * eps)
        assert abs(fd.item() + scores[dst, src].item()) <= 1e-4 * max(abs(fd.item()), 1e-3)


def _linear_model():
    """One layer, no norms, a linear MLP: everything downstream of v, m0 and logits is linear."""
    return no_norm_model(1, "identity")


def test_first_order_equals_exact_patching_where_linear():
    model = _linear_model()
    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    scores = attribute(model, clean, abl, _objective).double()
    g = model.graph
    base = _objective(masked_forward(model, clean, abl, torch.ones(g.n_receivers, g.n_senders, dtype=torch.float64)))
    linear_receivers = [g.qkv_receiver(0, "v", h) for h in range(2)] + [g.mlp_receiver(0), g.logits_receiver]
    checked = 0
    for dst in linear_receivers:
        for src in g.edge_mask[dst].nonzero()[:, 0].tolist():
            mask = torch.ones(g.n_receivers, g.n_senders, dtype=torch.float64)
            mask[dst, src] = 0
            exact = _objective(masked_forward(model, clean, abl, mask)) - base
            assert abs(exact.item() - scores[dst, src].item()) <= 1e-9 + 1e-7 * abs(exact.item())
            checked += 1
    assert checked == 2 * 1 + 3 + 4  # v←input ×2 heads, m0←{input, 2 heads}, logits←all 4 senders
    # and where it is not linear (queries), first order is only an approximation: the test can fail
    q = g.qkv_receiver(0, "q", 0)
    mask = torch.ones(g.n_receivers, g.n_senders, dtype=torch.float64)
    mask[q, 0] = 0
    exact = _objective(masked_forward(model, clean, abl, mask)) - base
    assert abs(exact.item() - scores[q, 0].item()) > 1e-6


def test_integrated_gradients_with_one_step_is_eap_and_steps_differ():
    model = cf.from_hf(tiny_hf("gpt2")).double()
    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    eap = attribute(model, clean, abl, _objective)
    assert torch.equal(attribute(model, clean, abl, _objective, alphas=[1.0]), eap)
    ig = attribute(model, clean, abl, _objective, alphas=[0.2, 0.4, 0.6, 0.8, 1.0])
    assert not torch.allclose(ig, eap, atol=1e-6)


def test_attribution_works_with_gradients_globally_off():
    model = cf.from_hf(tiny_hf("llama"))
    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    with_grad = attribute(model, clean, abl, _objective)
    with torch.no_grad():
        without = attribute(model, clean, abl, _objective)
    assert torch.equal(with_grad, without)


def test_receiver_gradients_score_like_a_plain_product():
    """Receiver gradients handed out during backward, kept and scored by a plain product, equal
    attribute()'s scoring inside the backward pass."""
    from circuitfind.engine.walk import Walk
    model = cf.from_hf(tiny_hf("gpt2")).double()
    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    g = model.graph
    grads = {}

    def keep(rows, grad, span):
        for r, row in zip(rows.tolist(), grad):  # pieces of positions, in a reused buffer: copy
            grads.setdefault(r, []).append((span or slice(0, None), row.detach().clone()))

    with torch.enable_grad():
        walk = Walk(model, clean, abl, None, on_grad=keep, record=True)
        _objective(walk.run()[0]).backward()
    D = walk.diffs().reshape(g.n_senders, -1)
    d = model.cfg.d_model
    whole = {r: torch.cat([row.view(-1, d) for _, row in sorted(pieces, key=lambda p: p[0].start)]).flatten()
             for r, pieces in grads.items()}
    manual = torch.stack([-(whole[r] @ D.T) for r in range(g.n_receivers)]) * g.edge_mask
    assert torch.allclose(manual, attribute(model, clean, abl, _objective).double(), atol=1e-6)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_gradients_handed_out_in_chunks_of_positions_score_the_same(family, monkeypatch):
    """q/k/v gradients arrive a chunk of positions at a time; one position per chunk must give the
    scores of one chunk for everything (layer norm and RMS norm)."""
    import circuitfind.engine.walk_grad as walk_grad
    model = cf.from_hf(tiny_hf(family)).double()
    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    whole = attribute(model, clean, abl, _objective)
    monkeypatch.setattr(walk_grad, "GRAD_CHUNK_ELEMENTS", 1)
    assert torch.allclose(attribute(model, clean, abl, _objective), whole, atol=1e-9)
    rows = 5 * 3 * model.cfg.n_heads * model.cfg.d_model  # 5 rows a chunk, 21 in all
    monkeypatch.setattr(walk_grad, "GRAD_CHUNK_ELEMENTS", rows)
    assert torch.allclose(attribute(model, clean, abl, _objective), whole, atol=1e-9)


@pytest.mark.parametrize("alphas", [(1.0,), (0.25, 0.5, 0.75, 1.0), (0.0, 0.5)])
def test_consumed_ablation_gives_the_same_scores(alphas):
    """attribute(consume=True) writes D over the ablated outputs: the same scores as a separate
    buffer, for EAP and for integrated gradients (whose interpolated passes still need the input's
    ablated output), with or without the alpha = 1 pass."""
    model = cf.from_hf(tiny_hf("gpt2")).double()
    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    kept = attribute(model, clean, abl, _objective, alphas=alphas)
    given = abl.clone()
    consumed = attribute(model, clean, given, _objective, alphas=alphas, consume=True)
    assert torch.equal(kept, consumed)
    assert not torch.equal(given, abl)  # the buffer was used


@pytest.mark.parametrize("family", ["gpt2", "gemma2"])
def test_bfloat16_scores_follow_float32(family):
    """A bfloat16 model runs the same attribution path (its gradient buffers take the model's dtype)
    and its scores track float32's to bfloat16 precision."""
    hf = tiny_hf(family)
    wide, narrow = cf.from_hf(hf), cf.from_hf(hf, dtype="bfloat16")
    clean, corrupt = _pair()
    want = attribute(wide, clean, ablated_outputs(wide, "corrupted", clean, corrupt), _objective)
    got = attribute(narrow, clean, ablated_outputs(narrow, "corrupted", clean, corrupt), _objective, consume=True)
    edges = wide.graph.edge_mask
    a, b = want[edges], got[edges].float()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] >= 0.999
    assert (a - b).abs().max() <= 0.05 * a.abs().max()


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama"])
def test_integrated_gradients_input_column_matches_mask_gradients(family):
    """An interpolated pass is the masked run whose edges from the input all have mask alpha: there
    the mask gradient of an input edge is ⟨g_v(alpha), D_input⟩, so the input column of EAP-IG's scores
    is minus the mean of those gradients over the alphas (an independent path: the masked forward)."""
    model = cf.from_hf(tiny_hf(family)).double()
    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    alphas = (0.25, 0.5, 0.75, 1.0)
    ig = attribute(model, clean, abl, _objective, alphas=alphas).double()
    g = model.graph
    want = torch.zeros(g.n_receivers, dtype=torch.float64)
    for alpha in alphas:
        mask = torch.ones(g.n_receivers, g.n_senders, dtype=torch.float64)
        mask[:, 0] = alpha
        mask.requires_grad_(True)
        _objective(masked_forward(model, clean, abl, mask)).backward()
        want -= mask.grad[:, 0] / len(alphas)
    reads_input = g.edge_mask[:, 0]
    assert torch.allclose(ig[reads_input, 0], want[reads_input], atol=1e-9)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_walk_with_gradients_is_freed_after_its_pass(family):
    """The gradient hooks must not close a cycle through the autograd graph (walk → residual →
    graph → hook → walk): Python's collector cannot see into the graph, so such a walk — its stored
    D, its activations — would live on after every attribution pass."""
    import gc
    import weakref

    from circuitfind.engine.walk import Walk
    model = cf.from_hf(tiny_hf(family))
    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    with torch.enable_grad():
        walk = Walk(model, clean, abl, None, on_grad=lambda rows, grad, span: None, record=True)
        _objective(walk.run()[0]).backward()
    ref = weakref.ref(walk)
    del walk
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama", "gemma2", "gemma3_text"])
def test_a_shared_prefix_skipped_leaves_every_attribution_score(family):
    """Where the clean and corrupted prompts share their first positions, no edge has an effect there
    (D = 0): EAP, EAP-IG over the inputs (the clean-corrupted endpoints too) and over the activations
    skip them, given the corrupted run's outputs whole or past the prefix alone (written over, consume),
    and give the whole-prompt scores, equal to the mask gradients of the slow path."""
    from circuitfind.engine.patching import shared_prefix
    model = cf.from_hf(tiny_hf(family)).double()
    clean, corrupt = _pair(pos=9)
    corrupt = Inputs.of(torch.cat([clean.tokens[:, :5], corrupt.tokens[:, 5:]], 1), clean.attention_mask)
    shared = shared_prefix(model, clean, corrupt)
    assert shared.n == 5
    whole = ablated_outputs(model, "corrupted", clean, corrupt)
    for alphas, interpolate in (((1.0,), "inputs"), ((0.25, 0.5, 1.0), "inputs"), ((0.0, 1.0), "inputs"),
                                ((0.5, 1.0), "activations")):
        want = attribute(model, clean, whole, _objective, alphas=alphas, interpolate=interpolate).double()
        assert want.abs().max() > 1e-3
        got = attribute(model, clean, whole, _objective, alphas=alphas, interpolate=interpolate, shared=shared)
        assert torch.allclose(got.double(), want, atol=1e-6)
        past = ablated_outputs(model, "corrupted", clean, corrupt, shared=shared)
        assert past.shape[2] == 9 - 5
        before = past.clone()
        got = attribute(model, clean, past, _objective, alphas=alphas, interpolate=interpolate, consume=True,
                        shared=shared)
        assert torch.allclose(got.double(), want, atol=1e-6)
        assert torch.equal(past, before) == (interpolate == "activations")  # D written over it where it may be
