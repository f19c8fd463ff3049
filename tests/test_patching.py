"""The masked forward against invariants and against the slow per-edge reference."""

from __future__ import annotations

import dataclasses
from unittest import mock

import pytest
import torch

import circuitfind as cf
from circuitfind.engine.ablation import ablated_outputs
from circuitfind.engine import store
from circuitfind.engine.patching import (Inputs, Workspace, clean_logits, masked_forward, prefix, prefixes,
                                        sender_outputs)
from tests.conftest import VOCAB, tiny_hf, tiny_model
from tests.reference import reference_masked_logits

ENGINE_FAMILIES = ["gpt2", "gpt_neox", "llama", "gemma2", "gemma3_text"]


@pytest.fixture(params=ENGINE_FAMILIES)
def model(request):
    return cf.from_hf(tiny_hf(request.param)).double()


def _pair(batch=3, pos=7, left_pad=True):
    g = torch.Generator().manual_seed(5)
    clean = torch.randint(3, VOCAB, (batch, pos), generator=g)
    corrupt = torch.randint(3, VOCAB, (batch, pos), generator=g)
    mask = torch.ones(batch, pos, dtype=torch.long)
    if left_pad:
        mask[1, :2] = 0
        clean[1, :2] = corrupt[1, :2] = 0
    return Inputs.of(clean, mask), Inputs.of(corrupt, mask)


def _random_mask(g, density=0.5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    m = (torch.rand(g.n_receivers, g.n_senders, generator=gen) < density).double()
    return m * g.edge_mask


def test_all_ones_gives_clean_and_all_zeros_gives_corrupted(model):
    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    g = model.graph
    ones = torch.ones(g.n_receivers, g.n_senders, dtype=torch.float64)
    assert torch.allclose(masked_forward(model, clean, abl, ones), clean_logits(model, clean), atol=1e-10)
    assert torch.allclose(masked_forward(model, clean, abl, ones * 0), clean_logits(model, corrupt), atol=1e-10)


@pytest.mark.parametrize("ablation", ["corrupted", "mean", "zero", "resample", "mean-positional"])
def test_random_masks_match_slow_reference(model, ablation):
    clean, corrupt = _pair()
    abl = ablated_outputs(model, ablation, clean, corrupt)
    for seed, density in ((0, 0.5), (1, 0.9), (2, 0.1)):
        mask = _random_mask(model.graph, density, seed)
        got = masked_forward(model, clean, abl, mask)
        want = reference_masked_logits(model, clean.tokens, clean.attention_mask, clean.answer_pos, abl, mask)
        assert (got - want).abs().max().item() <= 1e-5


def test_resample_draws_each_prompt_from_another_that_is_real_where_it_is():
    """Prompts of different lengths (right padding, as tasks batch them): a donor shorter than its
    receiver would hand over its padding's outputs."""
    model = cf.from_hf(tiny_hf("gpt2")).double()
    lengths = [7, 4, 7, 5, 6, 4]
    tokens = torch.randint(3, VOCAB, (len(lengths), 7), generator=torch.Generator().manual_seed(0))
    real = torch.arange(7)[None] < torch.tensor(lengths)[:, None]
    inputs = Inputs.of(tokens * real, real.long())
    outs = sender_outputs(model, inputs)  # [src, batch, pos, d]
    for seed in range(5):
        abl = ablated_outputs(model, "resample", inputs, seed=seed)
        assert torch.equal(abl, ablated_outputs(model, "resample", inputs, seed=seed))  # seeded
        for i, n in enumerate(lengths):
            donors = [j for j in range(len(lengths)) if j != i and torch.equal(abl[:, i, :n], outs[:, j, :n])]
            assert donors and all(lengths[j] >= n for j in donors)
    alone = Inputs.of(tokens[:3] * real[:3], torch.tensor([[1] * 7, [1] * 6 + [0], [1] * 5 + [0] * 2]))
    with pytest.warns(UserWarning, match="1 prompt.s. .up to 7 tokens. have no other prompt as long"):
        abl = ablated_outputs(model, "resample", alone)
    assert torch.isfinite(abl).all()
    # mean-positional: where one prompt alone is real, its mean is its own output (nothing ablated)
    with pytest.warns(UserWarning, match="1 position.s., from 6, are real in one prompt only"):
        mean = ablated_outputs(model, "mean-positional", alone)
    assert torch.equal(mean[:, 0, 6], sender_outputs(model, alone)[:, 0, 6])


def test_batches_of_masks_and_per_example_masks(model):
    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    masks = torch.stack([_random_mask(model.graph, d, s) for s, d in enumerate((0.3, 0.6, 0.95, 1.0))])
    batched = masked_forward(model, clean, abl, masks)
    for i in range(len(masks)):
        assert torch.allclose(batched[i], masked_forward(model, clean, abl, masks[i]), atol=1e-10)
    per_ex = masked_forward(model, clean, abl, masks[:3], per_example=True)
    for i in range(3):
        assert torch.allclose(per_ex[i], masked_forward(model, clean, abl, masks[i])[i], atol=1e-10)


def test_masks_sharing_lower_layers_and_prefix(model):
    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    g = model.graph
    top = g.receiver_layer >= 1
    masks = torch.ones(5, g.n_receivers, g.n_senders, dtype=torch.float64)
    for i in range(5):
        masks[i, top] = _random_mask(g, 0.5, i)[top]
    pre = prefix(model, clean, abl, layer=1)
    from_prefix = masked_forward(model, clean, abl, masks, start=pre)
    full = masked_forward(model, clean, abl, masks)
    assert torch.allclose(from_prefix, full, atol=1e-10)
    with pytest.raises(cf.ConfigError, match="prefix"):
        masked_forward(model, clean, abl, _random_mask(g, 0.5), start=pre)


def test_prefixes_of_one_pass_equal_prefixes_run_apart(model):
    """Snapshots of one recorded pass (ACDC's starts) must not see what the pass stores after them:
    each layer's, branched twice and used top-down, equals the forward without a prefix."""
    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    g = model.graph
    starts, logits = prefixes(model, clean, abl)
    assert len(starts) == model.cfg.n_layers + 1
    assert torch.allclose(logits, clean_logits(model, clean), atol=1e-10)
    for layer in reversed(range(model.cfg.n_layers + 1)):
        assert starts[layer].layer == layer
        above = g.receiver_layer >= layer
        masks = torch.ones(3, g.n_receivers, g.n_senders, dtype=torch.float64)
        for i in range(3):
            masks[i, above] = _random_mask(g, 0.5, 10 * layer + i)[above]
        want = masked_forward(model, clean, abl, masks)
        for _ in range(2):
            assert torch.allclose(masked_forward(model, clean, abl, masks, start=starts[layer]), want, atol=1e-10)


def test_sparse_node_circuit_skips_nodes_exactly(model):
    """A circuit touching few nodes: skipped nodes must equal their ablated output."""
    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    g = model.graph
    nodes = torch.zeros(g.n_senders, dtype=torch.bool)
    nodes[[0, g.head_sender(0, 1), g.mlp_sender(1)]] = True
    mask = g.nodes_to_edges(nodes).double()
    want = reference_masked_logits(model, clean.tokens, clean.attention_mask, clean.answer_pos, abl, mask)
    assert (masked_forward(model, clean, abl, mask) - want).abs().max().item() <= 1e-5


def test_node_circuits_match_slow_reference(model):
    """In a node circuit every kept receiver reads the same senders, so a layer's receivers share one
    input per mask (mixed once and projected fused): a batch of node circuits, and one alone."""
    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    g = model.graph
    gen = torch.Generator().manual_seed(11)
    kept = [torch.rand(g.n_senders, generator=gen) < p for p in (0.3, 0.6, 0.9, 1.1)]
    for k in kept:
        k[0] = True  # the input, so that paths exist
    masks = torch.stack([g.nodes_to_edges(k) for k in kept]).double()
    got = masked_forward(model, clean, abl, masks)
    for i, mask in enumerate(masks):
        want = reference_masked_logits(model, clean.tokens, clean.attention_mask, clean.answer_pos, abl, mask)
        assert (got[i] - want).abs().max() < 1e-9
        assert (masked_forward(model, clean, abl, mask) - want).abs().max() < 1e-9


def test_receivers_reading_no_sender_match_slow_reference(model):
    """Heads whose q/k/v read no sender, and MLPs that read none, get the ablated outputs plus biases
    (the receiver's constant columns only): exact for one mask and for a batch of masks that differ
    below them (each copy with its own residual above), parallel blocks included."""
    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    g = model.graph
    base = _random_mask(g, 0.7, 3)
    for l in range(g.n_layers):
        for t in "qkv":
            base[g.qkv_receiver(l, t, 0)] = 0  # head 0 of every layer reads nothing
    base[g.mlp_receiver(0)] = base[g.mlp_receiver(g.n_layers - 1)] = 0
    base[g.qkv_receiver(1, "q", 1)] = 0  # head 1 of layer 1: only its query reads nothing
    masks = base.expand(4, -1, -1).clone()
    layer0 = (g.receiver_layer == 0).nonzero()[:, 0]
    for i in range(1, 4):  # the copies differ from layer 0 on
        masks[i, layer0[i], 0] = 1 - masks[i, layer0[i], 0]
    batched = masked_forward(model, clean, abl, masks)
    for i in range(4):
        want = reference_masked_logits(model, clean.tokens, clean.attention_mask, clean.answer_pos, abl, masks[i])
        assert (batched[i] - want).abs().max().item() <= 1e-5
        assert (masked_forward(model, clean, abl, masks[i]) - want).abs().max().item() <= 1e-5


def test_inputs_shared_by_masks_that_differ_below_are_computed_once_and_exact(model, monkeypatch):
    """Masks that differ from layer 0 on, over a pruned top layer whose queries read nothing and
    whose keys read only the embeddings (the same in every mask): the top layer's q and k are mixed
    and projected once, its values per mask, and a head that reads only the embeddings is computed
    once, its D written into every mask's copy. Each copy must still match the slow reference."""
    from circuitfind.engine.walk import Walk

    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    g = model.graph
    top = g.n_layers - 1
    base = _random_mask(g, 0.7, 4)
    for h in range(g.n_heads):
        base[g.qkv_receiver(top, "q", h)] = 0
        base[g.qkv_receiver(top, "k", h)] = 0
        base[g.qkv_receiver(top, "k", h), 0] = 1  # the input sender: stored once for all masks
        base[g.qkv_receiver(top, "v", h), 0] = 1  # values read the input and layer-0 senders that differ
    base[g.qkv_receiver(top, "v", 0)] = 0
    base[g.qkv_receiver(top, "v", 0), 0] = 1  # head 0 reads the input alone: computed once for all masks
    base[g.logits_receiver, g.head_sender(top, 0)] = 1
    masks = base.expand(4, -1, -1).clone()
    layer0 = (g.receiver_layer == 0).nonzero()[:, 0]
    for i in range(1, 4):  # the copies differ from layer 0 on
        masks[i, layer0[-i]] = 1 - masks[i, layer0[-i]]
    masks *= g.edge_mask
    by_kind, groups = [], []
    split, head_groups = Walk._split_by_kind, Walk._head_groups
    monkeypatch.setattr(Walk, "_split_by_kind", lambda self, *a: by_kind.append(split(self, *a)) or by_kind[-1])
    monkeypatch.setattr(Walk, "_head_groups", lambda self, *a: groups.append(head_groups(self, *a)) or groups[-1])
    batched = masked_forward(model, clean, abl, masks)
    # both ways of sharing were taken (not with Gemma 2's post-norms: a layer's heads share one normaliser)
    assert (any(by_kind) and any(len(gr) == 2 for gr in groups)) != model.cfg.post_norms
    for i in range(4):
        want = reference_masked_logits(model, clean.tokens, clean.attention_mask, clean.answer_pos, abl, masks[i])
        assert (batched[i] - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("plan", ["gemm", "rows", "sparse"])
def test_every_mixing_plan_matches_slow_reference(model, plan, monkeypatch):
    """Receiver inputs mixed by one product, by a product over the receivers that read any sender,
    or by one row addition per mask entry (`_mix_plan` picks by cost; here each is forced), with
    fractional mask values, receivers reading nothing, one mask and a batch of them, and one
    workspace reused by every call."""
    real = store._mix_plan
    monkeypatch.setattr(store, "_mix_plan", lambda M, W: (plan, real(M, W)[1]))
    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    g = model.graph
    workspace = Workspace()
    masks = []
    for seed, density in ((0, 0.05), (1, 0.3), (2, 0.9)):
        mask = _random_mask(g, density, seed) * torch.rand(g.n_receivers, g.n_senders, dtype=torch.float64,
                                                            generator=torch.Generator().manual_seed(seed))
        mask[g.qkv_receiver(1, "k", 0)] = 0
        mask[g.mlp_receiver(0)] = 0
        masks.append(mask)
        want = reference_masked_logits(model, clean.tokens, clean.attention_mask, clean.answer_pos, abl, mask)
        assert (masked_forward(model, clean, abl, mask, workspace=workspace) - want).abs().max().item() <= 1e-5
    batched = masked_forward(model, clean, abl, torch.stack(masks), workspace=workspace)
    for i, mask in enumerate(masks):
        assert torch.allclose(batched[i], masked_forward(model, clean, abl, mask), atol=1e-10)


def test_mix_rows_against_a_product():
    """Each plan of `_mix_rows` equals M @ D, rows reading nothing included, into a dirty buffer."""
    gen = torch.Generator().manual_seed(0)
    D = torch.randn(9, 50, generator=gen, dtype=torch.float64)
    M = torch.randn(6, 9, generator=gen, dtype=torch.float64) * (torch.rand(6, 9, generator=gen) < 0.3)
    M[[1, 4]] = 0
    for plan in ("gemm", "rows", "sparse"):
        original = store._mix_plan
        store._mix_plan = lambda M, W, plan=plan: (plan, original(M, W)[1])
        try:
            out = store._mix_rows(M, D, torch.full((6, 50), float("nan"), dtype=torch.float64))
        finally:
            store._mix_plan = original
        assert torch.allclose(out, M @ D, atol=1e-12), plan


def test_workspace_reuse_across_calls_shapes_and_prefixes(model):
    """One workspace through calls of different batch sizes, a prefix's branches, and another dtype:
    every result equals a fresh call's."""
    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    g = model.graph
    workspace = Workspace()
    single = [_random_mask(g, d, s) for s, d in enumerate((0.2, 0.7))]
    fresh = [masked_forward(model, clean, abl, m) for m in single]
    for _ in range(2):
        for m, want in zip(single, fresh):
            assert torch.equal(masked_forward(model, clean, abl, m, workspace=workspace), want)
        assert torch.equal(masked_forward(model, clean, abl, torch.stack(single), workspace=workspace),
                           masked_forward(model, clean, abl, torch.stack(single)))
    top = g.receiver_layer >= 1
    masks = torch.ones(3, g.n_receivers, g.n_senders, dtype=torch.float64)
    for i in range(3):
        masks[i, top] = _random_mask(g, 0.5, i)[top]
    pre = prefix(model, clean, abl, layer=1)
    for _ in range(2):
        assert torch.equal(masked_forward(model, clean, abl, masks, start=pre, workspace=workspace),
                           masked_forward(model, clean, abl, masks, start=pre))
    low = model.float()
    got = masked_forward(low, clean, abl.float(), single[0].float(), workspace=workspace)
    assert got.dtype == torch.float32 and torch.allclose(got.double(), fresh[0], atol=1e-4)


def test_masks_are_differentiable(model):
    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    g = model.graph
    mask = (_random_mask(g, 0.7) * 0.8).requires_grad_(True)
    loss = masked_forward(model, clean, abl, mask)[:, 5].sum()
    (grad,) = torch.autograd.grad(loss, mask)
    # finite differences on a few edges
    for dst, src in g.edge_mask.nonzero()[torch.tensor([3, 50, -1, -7])].tolist():
        eps = 1e-6
        plus, minus = mask.detach().clone(), mask.detach().clone()
        plus[dst, src] += eps
        minus[dst, src] -= eps
        fd = (masked_forward(model, clean, abl, plus)[:, 5].sum() - masked_forward(model, clean, abl, minus)[:, 5].sum()) / (2 * eps)
        assert abs(fd.item() - grad[dst, src].item()) <= 1e-4 * max(1.0, abs(fd.item()))


def test_bad_mask_shape_and_unequal_lengths(model):
    clean, _ = _pair()
    abl = ablated_outputs(model, "zero", clean)
    with pytest.raises(cf.ConfigError, match="mask must be"):
        masked_forward(model, clean, abl, torch.ones(3, 3))
    with pytest.raises(cf.ConfigError, match="a batch of at least one"):  # an IndexError deep in the walk before
        masked_forward(model, clean, abl, torch.ones(0, model.graph.n_receivers, model.graph.n_senders))
    short = Inputs.of(torch.randint(3, VOCAB, (3, 4)))
    with pytest.raises(cf.ConfigError, match="equal token length"):
        ablated_outputs(model, "corrupted", clean, short)
    with pytest.raises(cf.ConfigError, match="unknown ablation"):
        ablated_outputs(model, "banana", clean)


def test_edge_effects_equal_one_masked_forward_per_edge(model):
    from circuitfind.engine.patching import edge_effects
    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    g = model.graph

    def objective(logits):  # [k, batch, vocab] → [k]
        return (logits[..., 5] - logits[..., 7]).mean(-1)

    effects = edge_effects(model, clean, abl, objective, max_masks=5)
    ones = g.edge_mask.double()
    base = objective(masked_forward(model, clean, abl, ones)[None])
    edges = g.edge_mask.nonzero()
    for dst, src in edges[torch.linspace(0, len(edges) - 1, 25).long()].tolist():
        mask = ones.clone()
        mask[dst, src] = 0
        want = objective(reference_masked_logits(model, clean.tokens, clean.attention_mask, clean.answer_pos, abl, mask)[None]) - base
        assert abs(effects[dst, src].item() - want.item()) <= 1e-6
    assert bool((effects[~g.edge_mask] == 0).all())
    some = [g.logits_receiver, g.mlp_receiver(0)]  # receivers=: those rows alone, the rest 0
    part = edge_effects(model, clean, abl, objective, receivers=some, max_masks=5)
    assert torch.equal(part[some], effects[some]) and not part[some].eq(0).all()
    others = torch.ones(g.n_receivers, dtype=torch.bool)
    others[some] = False
    assert bool((part[others] == 0).all())


def test_node_effects_equal_the_reference_with_each_node_ablated(model):
    """Each node's out-edges all off, against the slow reference loop (input, every head, every MLP)."""
    from circuitfind.engine.patching import node_effects
    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    g = model.graph

    def objective(logits):  # [k, batch, vocab] → [k]
        return (logits[..., 5] - logits[..., 7]).mean(-1)

    effects = node_effects(model, clean, abl, objective)
    ones = g.edge_mask.double()
    base = objective(reference_masked_logits(model, clean.tokens, clean.attention_mask, clean.answer_pos, abl,
                                             ones)[None])
    for src in range(g.n_senders):
        mask = ones.clone()
        mask[:, src] = 0
        want = objective(reference_masked_logits(model, clean.tokens, clean.attention_mask, clean.answer_pos, abl,
                                                 mask)[None]) - base
        assert abs(effects[src].item() - want.item()) <= 1e-6, g.senders[src]


def test_mlp_read_only_by_the_logits_is_exact(model):
    """Such an MLP is computed at the answer positions only; the result must not change."""
    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    g = model.graph
    mask = _random_mask(g, 0.6, seed=3)
    s = g.mlp_sender(0)
    mask[:, s] = 0
    mask[g.logits_receiver, s] = 1
    want = reference_masked_logits(model, clean.tokens, clean.attention_mask, clean.answer_pos, abl, mask)
    assert (masked_forward(model, clean, abl, mask) - want).abs().max().item() <= 1e-5
    masks = torch.stack([mask, _random_mask(g, 0.9, seed=4) * (torch.arange(g.n_senders) != s)])
    masks[1, g.logits_receiver, s] = 1
    for i in range(2):
        want = reference_masked_logits(model, clean.tokens, clean.attention_mask, clean.answer_pos, abl, masks[i])
        assert (masked_forward(model, clean, abl, masks)[i] - want).abs().max().item() <= 1e-5


def test_heads_read_at_the_answer_positions_alone_are_exact(model):
    """A head read only by the logits and by last-layer queries is computed with its queries at the
    answer positions alone (so is every last-layer head, but under post-norms): against the reference,
    at answer positions inside the prompts, for one mask, masks that share the head's inputs or not,
    and per-example masks."""
    from circuitfind.engine.walk import Walk
    clean, corrupt = _pair(left_pad=False)
    clean = Inputs(clean.tokens, clean.attention_mask, torch.tensor([3, 6, 4]))  # not each prompt's last token
    corrupt = Inputs(corrupt.tokens, corrupt.attention_mask, clean.answer_pos)
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    g, L = model.graph, model.cfg.n_layers
    mask = _random_mask(g, 0.6, seed=7)
    s = g.head_sender(0, 1)
    mask[:, s] = 0
    mask[[g.logits_receiver, g.qkv_receiver(L - 1, "q", 2)], s] = 1
    walk = Walk(model, clean, abl, mask[None])
    last = [g.head_sender(L - 1, h) for h in range(g.n_heads)]
    assert bool(walk.answer_only[[s] + last].all()) != model.cfg.post_norms  # the path under test runs
    assert not bool(walk.answer_only[g.head_sender(0, 0)])
    masks = torch.stack([mask, mask.clone(), mask.clone()])
    masks[1, g.qkv_receiver(0, "q", 1), 0] = 0  # the head's own query input differs
    masks[2, g.qkv_receiver(L - 1, "k", 2)] = _random_mask(g, 0.5, seed=8)[g.qkv_receiver(L - 1, "k", 2)]
    masks[2, g.qkv_receiver(L - 1, "k", 2), s] = 0  # keys differ, still not reading the head
    want = torch.stack([reference_masked_logits(model, clean.tokens, clean.attention_mask, clean.answer_pos, abl, m)
                        for m in masks])
    assert (masked_forward(model, clean, abl, masks[0]) - want[0]).abs().max().item() <= 1e-8
    assert (masked_forward(model, clean, abl, masks) - want).abs().max().item() <= 1e-8
    per_example = masked_forward(model, clean, abl, masks, per_example=True)
    for i in range(3):
        assert (per_example[i] - want[i, i]).abs().max().item() <= 1e-8


def test_mean_ablations_average_the_real_tokens():
    """mean: every sender's output averaged over every real (unpadded) token of every prompt;
    mean-positional: over the prompts real at each position; both also a batch of prompts at a time."""
    from circuitfind.engine.ablation import mean_outputs

    model = cf.from_hf(tiny_hf("gpt2")).double()
    clean, _ = _pair(batch=4, pos=6)  # prompt 1 left-padded by two
    outs, real = sender_outputs(model, clean), clean.attention_mask.bool()  # [src, batch, pos, d], [batch, pos]
    want = torch.stack([outs[:, b, p] for b in range(4) for p in range(6) if real[b, p]]).mean(0)  # [src, d]
    assert torch.allclose(ablated_outputs(model, "mean", clean)[:, 0, 0], want)
    for p in (0, 1, 5):
        at = torch.stack([outs[:, b, p] for b in range(4) if real[b, p]]).mean(0)
        assert torch.allclose(ablated_outputs(model, "mean-positional", clean)[:, 0, p], at)
    halves = [clean.rows(slice(0, 3)), clean.rows(slice(3, 4))]
    assert torch.allclose(mean_outputs(model, halves, positional=False)[:, 0, 0], want)


def _sharing_pair(batch=3, pos=9, n=4):
    """Clean and corrupted prompts equal on their first n positions (prompt 1 left-padded by two)."""
    clean, corrupt = _pair(batch, pos)
    tokens = corrupt.tokens.clone()
    tokens[:, :n] = clean.tokens[:, :n]
    return clean, Inputs.of(tokens, clean.attention_mask)


def test_a_shared_prefix_is_skipped_without_changing_any_logit(model):
    """Positions before the first clean/corrupted difference are the clean run's under every mask: a
    walk that skips them (attention reading their keys and values) gives the slow reference's logits,
    for random and fractional masks, per-example masks, branches of prefixes, and exact patching; on
    rotary, GQA, parallel, post-norm, sliding-window and q/k-norm models, with left padding."""
    from circuitfind.engine.patching import edge_effects, node_effects, shared_prefix
    clean, corrupt = _sharing_pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    shared = shared_prefix(model, clean, corrupt)
    assert shared.n == 4 and shared.keys[0].shape[2] == 4
    g = model.graph
    masks = torch.stack([_random_mask(g, d, seed) for seed, d in ((0, 0.5), (1, 0.9), (2, 0.1))])
    masks[1] *= torch.rand(masks[1].shape, generator=torch.Generator().manual_seed(3))  # fractional
    got = masked_forward(model, clean, abl, masks, shared=shared)
    for mask, logits in zip(masks, got):
        want = reference_masked_logits(model, clean.tokens, clean.attention_mask, clean.answer_pos, abl, mask)
        assert (logits - want).abs().max().item() <= 1e-5
    assert (got - masked_forward(model, clean, abl, masks)).abs().max().item() <= 1e-10
    past = ablated_outputs(model, "corrupted", clean, corrupt, shared=shared)  # the outputs past the prefix alone
    assert past.shape[2] == 9 - 4
    assert (masked_forward(model, clean, past, masks, shared=shared) - got).abs().max() <= 1e-10
    per = masks.clone()  # one mask per example
    assert (masked_forward(model, clean, abl, per, per_example=True, shared=shared)
            - masked_forward(model, clean, abl, per, per_example=True)).abs().max().item() <= 1e-10
    starts, logits = prefixes(model, clean, abl, shared=shared)
    assert (logits - clean_logits(model, clean)).abs().max().item() <= 1e-10
    above = masks.clone()
    above[:, g.receiver_layer < 1] = g.edge_mask[g.receiver_layer < 1].double()
    assert (masked_forward(model, clean, abl, above, start=starts[1])
            - masked_forward(model, clean, abl, above)).abs().max().item() <= 1e-10

    def obj(lg):  # logits [k, batch, vocab] → [k]
        return (lg[..., 5] - lg[..., 7]).sum(-1)
    for effects in (edge_effects, node_effects):
        skipped, whole = effects(model, clean, abl, obj, shared=shared), effects(model, clean, abl, obj)
        assert whole.abs().max() > 1e-3 and (skipped - whole).abs().max() <= 1e-6


def test_shared_prefix_only_where_there_is_one(model):
    """None when the prompts differ from the first position, or the model attends both ways; never past
    an answer position; and a prefix's walk refuses a second shared prefix."""
    from circuitfind.engine.patching import shared_prefix
    clean, corrupt = _pair(left_pad=False)
    assert shared_prefix(model, clean, corrupt) is None
    clean, corrupt = _sharing_pair(n=6)
    early = Inputs.of(clean.tokens, clean.attention_mask, torch.tensor([8, 3, 8]))
    assert shared_prefix(model, early, Inputs.of(corrupt.tokens, corrupt.attention_mask, early.answer_pos)).n == 3
    with mock.patch.object(model, "cfg", dataclasses.replace(model.cfg, causal=False)):
        assert shared_prefix(model, clean, corrupt) is None
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    shared = shared_prefix(model, clean, corrupt)
    starts, _ = prefixes(model, clean, abl)
    with pytest.raises(cf.ConfigError, match="mean ablation has none"):
        ablated_outputs(model, "mean", clean, corrupt, shared=shared)
    with pytest.raises(cf.ConfigError, match="not these prompts'"):  # another batch's prefix
        masked_forward(model, clean.rows(slice(0, 2)), abl[:, :2], model.graph.edge_mask.double(), shared=shared)
    with pytest.raises(cf.ConfigError, match="carries its own"):
        masked_forward(model, clean, abl, model.graph.edge_mask.double(), start=starts[1], shared=shared)


@pytest.mark.parametrize("family", ["bloom", "mixtral", "olmo2", "gpt_oss", "qwen2_moe+experts"])
def test_alibi_experts_and_norms_over_all_heads_follow_the_slow_reference(family):
    """ALiBi and gpt-oss's attention sinks (position terms of each head's scores, not senders), a mixture of
    experts (one MLP node, its router included, routed exactly on whatever input the mask gives it; or, with
    experts=True, each expert a sender routed from a router input of its own) and OLMo 2's q/k norms over every
    head's projection of a receiver's input (with norms after the blocks alone): the engine against the
    slow reference on the checks above that exercise attention inputs and positions and MLP inputs, at a
    fraction of the cost of the whole list."""
    model = tiny_model(family)
    test_all_ones_gives_clean_and_all_zeros_gives_corrupted(model)
    test_random_masks_match_slow_reference(model, "mean")
    test_node_circuits_match_slow_reference(model)
    if not model.graph.n_experts:  # (experts keep every position, so the heads they read do too)
        test_heads_read_at_the_answer_positions_alone_are_exact(model)
    if family in ("bloom", "qwen2_moe+experts"):  # a prefix's keys read at their positions (the costliest check)
        test_a_shared_prefix_is_skipped_without_changing_any_logit(model)
