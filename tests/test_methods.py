"""Methods, pruning and evaluation: each checked against an independent reference or invariant."""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
import torch

import circuitfind as cf
from circuitfind.circuit import Circuit, EdgeScores
from circuitfind.engine.ablation import ablated_outputs
from circuitfind.evaluate import MIB_FRACTIONS, _trapezoid
from circuitfind.graph import Graph
from circuitfind.prune import without_dangling
from circuitfind.task import Example, Task
from tests.conftest import tiny_hf, tiny_model
from tests.reference import reference_masked_logits
from tests.test_attribution import _linear_model


@pytest.fixture(scope="module")
def model():
    return cf.from_hf(tiny_hf("gpt2")).double()


class Copy(Task):
    """Token-level: the last token should repeat the first; corrupted prompts start elsewhere."""
    name = "copy"
    metric = "logit-diff"

    def example(self, rng, words):
        a, b, *rest = words.random_tokens(rng, 6)
        return Example(clean=[a] + rest, corrupt=[b] + rest, correct=a, wrong=b)


def test_eap_ig_with_one_step_is_eap(model):
    task = cf.load_task("induction", n=6, metric="logit-diff")  # not its KL: EAP's gradient of KL is 0
    eap = cf.score_edges(model, task, "eap")
    assert eap.scores.abs().max() > 1e-3  # a comparison of zeros would pass whatever the formulas
    assert torch.allclose(cf.score_edges(model, task, "eap-ig", steps=1).scores, eap.scores, atol=1e-6)
    # (eap-ig-activations with one step is not: each node's pass cuts that node from the backward, test_eap_ig.py)
    five = cf.score_edges(model, task, "eap-ig", steps=5).scores
    assert not torch.allclose(five, eap.scores, atol=1e-4)
    assert not torch.allclose(cf.score_edges(model, task, "clean-corrupted").scores, eap.scores, atol=1e-4)


def _reference_logit_diff(model, task):
    """mask [dst, src] → the task's mean logit-diff under that circuit, by the slow reference loop."""
    batch = task.batch(model)
    abl = ablated_outputs(model, "corrupted", batch.clean, batch.corrupt)

    def metric(mask):
        logits = reference_masked_logits(model, batch.clean.tokens, batch.clean.attention_mask,
                                         batch.clean.answer_pos, abl, mask)
        return cf.metrics.logit_diff(logits, batch.targets).mean()
    return metric


def test_exact_equals_slow_per_edge_patching(model):
    task = Copy(n=5)
    scores = cf.score_edges(model, task, "exact", max_masks=7)
    metric, g = _reference_logit_diff(model, task), model.graph
    full = g.edge_mask.double()
    base = metric(full)
    edges = g.edge_mask.nonzero()
    for dst, src in edges[torch.linspace(0, len(edges) - 1, 15).long()].tolist():
        mask = full.clone()
        mask[dst, src] = 0
        assert abs(scores.scores[dst, src].item() - (base - metric(mask)).item()) <= 1e-5  # loss of behaviour


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])  # learned positions; GQA and rotary; post-norms
def test_denoising_exact_equals_slow_patching_of_the_corrupted_run(family):
    """exact-denoising: in the corrupted run, each edge alone given its clean value; the score is the
    behaviour it restores. Checked against the slow reference loop run on the corrupted prompts, every
    edge reading its sender's corrupted output but the one given the clean output."""
    model = cf.from_hf(tiny_hf(family)).double()
    task = Copy(n=5)
    scores = cf.score_edges(model, task, "exact-denoising", max_masks=7)
    batch, g = task.batch(model), model.graph
    clean_out = ablated_outputs(model, "corrupted", batch.corrupt, batch.clean)  # the clean run's outputs

    def metric(mask):
        logits = reference_masked_logits(model, batch.corrupt.tokens, batch.corrupt.attention_mask,
                                         batch.corrupt.answer_pos, clean_out, mask)
        return cf.metrics.logit_diff(logits, batch.targets).mean()
    full = g.edge_mask.double()
    base = metric(full)  # the corrupted run itself
    edges = g.edge_mask.nonzero()
    noising = cf.score_edges(model, task, "exact").scores
    assert not torch.allclose(scores.scores, noising, atol=1e-3)  # another quantity, not the same one twice
    for dst, src in edges[torch.linspace(0, len(edges) - 1, 15).long()].tolist():
        mask = full.clone()
        mask[dst, src] = 0  # 0: the edge reads the "ablated" outputs, here the clean run's
        assert abs(scores.scores[dst, src].item() - (metric(mask) - base).item()) <= 1e-5  # behaviour restored
    nodes = cf.score_edges(model, task, "exact-node-denoising").scores
    src = g.senders.index("m0")
    mask = full.clone()
    mask[:, src] = 0  # m0 restored whole
    assert torch.allclose(nodes[:, src][g.edge_mask[:, src]], (metric(mask) - base).float(), atol=1e-5)
    with pytest.raises(cf.ConfigError, match="only corrupted ablation"):
        cf.score_edges(model, task, "exact-denoising", ablation="mean")
    with pytest.raises(cf.ConfigError, match="fixes direction='noising'.*exact-denoising"):
        cf.score_edges(model, task, "exact", direction="denoising")  # one way to do it: the method's name


def test_eap_ig_is_the_mean_of_noising_and_denoising_under_a_quadratic_metric():
    """Where the logits are affine in every edge (one-token prompts through a model without norms or a
    nonlinear MLP) and the metric is quadratic in the logits, the gradient of the metric is affine along
    the path EAP-IG integrates, so IG over the whole path is exactly the mean of the noising and
    denoising effects. EAP-IG's right Riemann sum with m steps is off by c/m, which 2·IG(2) − IG(1)
    cancels (IG(1) is EAP). Noising and denoising differ here by the curvature term, so EAP-IG can agree
    with neither, and only their mean is the quantity it estimates."""
    from circuitfind.metrics import logit_diff

    class Single(Task):
        name = "single"
        metric = staticmethod(lambda logits, targets: logit_diff(logits, targets) ** 2)

        def example(self, rng, words):
            a, b = words.random_tokens(rng, 2)
            return Example(clean=[a], corrupt=[b], correct=a, wrong=b)
    model, task = _linear_model(), Single(n=6)
    noising = cf.score_edges(model, task, "exact").scores.double()
    denoising = cf.score_edges(model, task, "exact-denoising").scores.double()
    assert (noising - denoising).abs().max() > 1e-2  # the curvature term is there
    eap = cf.score_edges(model, task, "eap").scores.double()
    ig2 = cf.score_edges(model, task, "eap-ig", steps=2).scores.double()
    assert torch.allclose(2 * ig2 - eap, (noising + denoising) / 2, atol=1e-5)
    assert not torch.allclose(ig2, (noising + denoising) / 2, atol=1e-3)  # (the step error is real)


def test_exact_node_equals_slow_ablation_of_each_node(model):
    """exact-node: each node ablated whole (all out-edges), the loss of behaviour on every out-edge."""
    task = Copy(n=5)
    scores = cf.score_edges(model, task, "exact-node")
    metric, g = _reference_logit_diff(model, task), model.graph
    full = g.edge_mask.double()
    base = metric(full)
    for src in range(g.n_senders):
        mask = full.clone()
        mask[:, src] = 0
        want = (base - metric(mask)).item()
        column = scores.scores[:, src][g.edge_mask[:, src]]
        assert torch.allclose(column, torch.full_like(column, want), atol=1e-5), g.senders[src]
    assert scores.level == "node"
    from circuitfind.engine.walk import Walk
    branch, sizes = Walk.branch, []

    def counted(self, masks, workspace=None):
        sizes.append(len(masks))
        return branch(self, masks, workspace)
    with mock.patch.object(Walk, "branch", counted):  # max_masks bounds each batch of nodes too
        assert torch.allclose(cf.score_edges(model, task, "exact-node", max_masks=2).scores, scores.scores, atol=1e-9)
    assert sizes and max(sizes) == 2
    with pytest.raises(cf.ConfigError, match="exact-node"):
        cf.score_edges(model, task, "exact", level="node")


def test_eap_equals_exact_on_a_linear_model():
    model = _linear_model()
    task = Copy(n=5)
    eap, exact = cf.score_edges(model, task, "eap"), cf.score_edges(model, task, "exact")
    g = model.graph
    for dst in [g.qkv_receiver(0, "v", 0), g.qkv_receiver(0, "v", 1), g.mlp_receiver(0), g.logits_receiver]:
        assert torch.allclose(eap.scores[dst], exact.scores[dst], atol=1e-5)


def test_scores_and_circuits_round_trip(model, tmp_path):
    scores = cf.score_edges(model, cf.load_task("induction", n=4, metric="logit-diff"), "eap")
    scores.save(tmp_path / "run")
    back = EdgeScores.load(tmp_path / "run")
    assert torch.equal(back.scores, scores.scores) and back.method == "eap" and back.task == "induction"
    circuit = cf.prune(scores, edges=20)
    circuit.save(tmp_path / "run" / "circuit.json")
    again = Circuit.load(tmp_path / "run" / "circuit.json")
    assert torch.equal(again.mask, circuit.mask) and again.provenance["edges"] == 20
    (tmp_path / "broken.json").write_text("{not json")
    for missing in (tmp_path / "none.json", tmp_path / "broken.json"):
        with pytest.raises(cf.ConfigError, match="none.json does not exist|broken.json is damaged: not JSON"):
            Circuit.load(missing)
    with pytest.raises(cf.ConfigError, match="count of edges"):
        scores.top(-1)


def test_topn_threshold_and_greedy(model):
    scores = cf.score_edges(model, cf.load_task("induction", n=4, metric="logit-diff"), "eap")
    g = model.graph
    raw = cf.prune(scores, edges=30, remove_dangling=False)
    assert raw.n_edges == 30
    kept = scores.scores.abs()[raw.mask]
    assert kept.min() >= scores.scores.abs()[g.edge_mask & ~raw.mask].max()
    thr = cf.prune(scores, threshold=float(kept.min()), remove_dangling=False)
    assert torch.equal(thr.mask, raw.mask)
    grown = cf.prune(scores, edges=30, strategy="greedy", remove_dangling=False)
    receivers = grown.mask.any(1).nonzero()[:, 0]
    nodes = g.receiver_node[receivers]
    assert grown.n_edges == 30 and bool(grown.mask[:, nodes[nodes >= 0]].any(0).all())  # grown from the logits
    best_into_logits = scores.scores[g.logits_receiver].abs().masked_fill(~g.edge_mask[g.logits_receiver], -1).argmax()
    assert grown.mask[g.logits_receiver, best_into_logits]  # the first edge taken
    greedy = cf.prune(scores, edges=30, strategy="greedy")  # then edges not reached from the input go
    assert not (greedy.mask & ~grown.mask).any() and greedy.provenance["dangling_removed"] == 30 - greedy.n_edges
    assert torch.equal(cf.prune(scores, edges=np.int64(30), remove_dangling=False).mask, raw.mask)


@pytest.mark.parametrize("selection, message", [
    ({}, "exactly one of edges=, nodes= or threshold=; got none"),
    ({"edges": 5, "threshold": 0.1}, "got edges, threshold"),  # one of them would be ignored
    ({"edges": 2.5}, r"edges \(the circuit's size in edges\) must be a count"), ({"edges": True}, "must be a count"),
    ({"threshold": float("nan")}, r"threshold \(the score an edge must reach\) must be a finite number"),
    ({"threshold": 0.1, "strategy": "greedy"}, "greedy strategy takes edges="),
    ({"nodes": 2, "strategy": "threshold"}, "threshold strategy takes threshold="),
])
def test_prune_refuses_an_ambiguous_or_bad_size(model, selection, message):
    scores = EdgeScores(torch.rand(model.graph.edge_mask.shape), model.graph)
    with pytest.raises(cf.ConfigError, match=message):
        cf.prune(scores, **selection)


def test_dangling_edges_are_removed():
    g = Graph(2, 2)
    mask = torch.zeros(g.n_receivers, g.n_senders, dtype=torch.bool)
    on_path = ["input->a0.h0<v>", "a0.h0->a1.h1<q>", "a1.h1->logits"]
    dead_end = ["input->a0.h1<k>"]  # a0.h1 writes nowhere in the circuit
    orphan = ["a0.h1->m1"]  # a0.h1 is not reached from the input... and m1 reaches nothing
    for name in on_path + dead_end + orphan:
        mask[g.edge_index(name)] = True
    assert set(g.edge_names(without_dangling(g, mask))) == set(on_path)


def test_full_circuit_is_faithful_and_empty_is_not(model):
    task = cf.load_task("induction", n=6)
    g = model.graph
    full = cf.evaluate(model, task, Circuit(g.edge_mask, g))
    empty = cf.evaluate(model, task, Circuit(torch.zeros_like(g.edge_mask), g))
    assert full["faithfulness"] == pytest.approx(1.0) and empty["faithfulness"] == pytest.approx(0.0)
    # scores where a circuit belongs (and the reverse), or another model's circuit: said, not an AttributeError
    scores = cf.score_edges(model, task, "eap-ig", steps=2)
    with pytest.raises(cf.ConfigError, match="prune the scores first"):
        cf.evaluate(model, task, scores)
    with pytest.raises(cf.ConfigError, match="scores must be EdgeScores.*a circuit is one point of the curve"):
        cf.faithfulness_curve(model, task, Circuit(g.edge_mask, g))
    other = Graph(g.n_layers + 1, g.n_heads)
    with pytest.raises(cf.ConfigError, match="the model's graph is"):
        cf.evaluate(model, task, Circuit(other.edge_mask, other))


def test_faithfulness_curve_matches_separate_evaluations(model):
    task = cf.load_task("induction", n=6, metric="logit-diff")
    scores = cf.score_edges(model, task, "eap")
    curve = cf.faithfulness_curve(model, task, scores, chunk=5)
    assert curve.faithfulness_signed[-1] == pytest.approx(1.0) and curve.faithfulness_absolute[-1] == pytest.approx(1.0)
    for i in (3, 7):
        circuit = cf.prune(scores, edges=int(MIB_FRACTIONS[i] * model.graph.n_edges))
        alone = cf.evaluate(model, task, circuit)
        assert alone["faithfulness"] == pytest.approx(curve.faithfulness_absolute[i], abs=1e-9)
        assert alone["metric_circuit"] == pytest.approx(curve.metric_absolute[i], abs=1e-9)
        assert (alone["metric_full"], alone["metric_empty"]) == pytest.approx((curve.metric_full, curve.metric_empty))
    # the areas, by an independent rule (numpy's trapezoids) and by hand on a known curve
    assert curve.cmd == pytest.approx(np.trapezoid([abs(1 - f) for f in curve.faithfulness_absolute], MIB_FRACTIONS))
    assert curve.cpr == pytest.approx(np.trapezoid(curve.faithfulness_signed, MIB_FRACTIONS))
    assert _trapezoid([0.0, 0.5, 1.0], [0.0, 1.0, 1.0]) == pytest.approx(0.75)  # a left sum would give 0.5
    signed = cf.faithfulness_curve(model, task, scores, chunk=5, ranking="signed")
    absolute = cf.faithfulness_curve(model, task, scores, chunk=5, ranking="absolute")
    assert signed.faithfulness_signed == pytest.approx(curve.faithfulness_signed, abs=1e-9)
    assert signed.cpr == pytest.approx(curve.cpr)
    assert absolute.faithfulness_absolute == pytest.approx(curve.faithfulness_absolute, abs=1e-9)
    assert absolute.cmd == pytest.approx(curve.cmd)
    assert signed.faithfulness_absolute == [] and math.isnan(signed.cmd) and math.isnan(absolute.cpr)
    for fractions in ([0.5, 0.1, 1.0], [0.1, 2.0], [0.5]):  # the area needs increasing points in [0, 1]
        with pytest.raises(cf.ConfigError, match="increasing fractions"):
            cf.faithfulness_curve(model, task, scores, fractions=fractions)
    other = Graph(model.graph.n_layers + 1, model.graph.n_heads)
    with pytest.raises(cf.ConfigError, match="the scores are over a"):
        cf.faithfulness_curve(model, task, EdgeScores(torch.zeros(other.n_receivers, other.n_senders), other))
    with pytest.raises(cf.ConfigError, match="ranking"):
        cf.faithfulness_curve(model, task, scores, ranking="signd")


def test_roc_auc():
    g = Graph(2, 2)
    truth = ["input->a0.h0<v>", "a0.h0->a1.h1<q>", "a1.h1->logits"]
    perfect = g.mask_from_edges(truth).float() + 0.01 * g.edge_mask
    assert cf.roc_auc(EdgeScores(perfect, g), truth) == 1.0
    assert cf.roc_auc(EdgeScores(1 - perfect, g), truth) == 0.0
    assert cf.roc_auc(EdgeScores(g.edge_mask.float(), g), truth) == 0.5


def test_bad_method_or_option(model):
    with pytest.raises(cf.ConfigError, match="unknown method"):
        cf.score_edges(model, "induction", "magic")
    with pytest.raises(cf.ConfigError, match="no option 'stepz'"):
        cf.score_edges(model, "induction", "eap-ig", stepz=3)
    with pytest.raises(cf.ConfigError, match="unknown ablation"):
        cf.score_edges(model, "induction", "exact", ablation="banana")
    # a variant is a method of its own: asking eap-ig for another one must not run eap-ig silently
    with pytest.raises(cf.ConfigError, match="fixes variant='inputs'.*eap-ig-activations, clean-corrupted"):
        cf.score_edges(model, "induction", "eap-ig", variant="activations")
    with pytest.raises(cf.ConfigError, match="fixes level='node'; for another level use the method eap$"):
        cf.score_edges(model, "induction", "eap-node", level="edge")
    # option values are checked against the config's types before anything runs (the CLI passes
    # strings through when they are not numbers)
    with pytest.raises(cf.ConfigError, match="option steps of method 'eap-ig' must be an integer, got 'abc'"):
        cf.score_edges(model, "induction", "eap-ig", steps="abc")
    with pytest.raises(cf.ConfigError, match="must be one of 'divergence', 'kl', 'l2', 'task', got 'ce'"):
        cf.score_edges(model, "induction", "acdc", metric="ce")
    with pytest.raises(cf.ConfigError, match="max_masks must be at least 1"):
        cf.score_edges(model, "induction", "exact", max_masks=0)
    steps = cf.score_edges(model, cf.load_task("induction", n=2), "eap-ig", steps=np.int64(2)).config["steps"]
    assert steps == 2 and type(steps) is int  # saved as JSON with the scores


@pytest.mark.parametrize("method, options", [("eap", {}), ("eap-node", {}), ("eap-ig", {"steps": 1}),
                                             ("eap-ig-activations", {"steps": 1})])
def test_a_gradient_at_the_clean_run_alone_refuses_kl(model, method, options):
    """KL(clean ‖ run) is at its minimum at the clean run: its gradient there, and so every EAP score,
    is 0 (induction's metric is KL). Refused before anything runs, with what to use instead."""
    task = cf.load_task("induction", n=4)
    assert task.metric == "kl"
    ran = AssertionError("the method ran")
    with mock.patch("circuitfind.methods.eap.setups", side_effect=ran), \
            mock.patch("circuitfind.methods.eap_ig.setups", side_effect=ran):
        with pytest.raises(cf.ConfigError, match="minimum.*would be 0.*eap-ig with steps ≥ 2.*metric='logit-diff'"):
            cf.score_edges(model, task, method, **options)
    # gradients off the clean run, and exact patching, score KL
    for fine, extra in (("eap-ig", {"steps": 2}), ("clean-corrupted", {}), ("exact", {})):
        assert cf.score_edges(model, task, fine, **extra).scores.abs().max() > 1e-4


def test_all_zero_first_order_scores_are_said(caplog):
    """A metric the model already optimises at the clean run (tracr-xproportion's squared error: the
    compiled program is exact) has no gradient there either: EAP's scores are all 0, and it says so."""
    model = cf.load_model("tracr-xproportion")
    task = cf.load_task("tracr-xproportion", n=8)
    with caplog.at_level("WARNING", logger="circuitfind.methods.common"):
        zeros = cf.score_edges(model, task, "eap")
    assert zeros.scores.abs().max() < 1e-20 and "every eap score of task 'tracr-xproportion' is 0" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="circuitfind.methods.common"):
        assert cf.score_edges(model, task, "eap-ig").scores.any()
    assert "is 0" not in caplog.text


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "qwen2_moe+experts"])
def test_acdc_batched_equals_naive(family):
    model = tiny_model(family)
    task = cf.load_task("induction", n=6)
    from circuitfind.methods.acdc import ACDCConfig, _values
    from circuitfind.methods.common import prepare
    setup = prepare(model, task, "corrupted")
    empty = float(_values(model, [setup], ACDCConfig(metric="kl"), torch.zeros(1, *model.graph.edge_mask.shape).double())[0])
    for threshold in (empty / 100, empty / 20):
        batched = cf.score_edges(model, task, "acdc", threshold=threshold, chunk=5)
        naive = cf.score_edges(model, task, "acdc", threshold=threshold, naive=True)
        kept_b = cf.prune(batched, threshold=threshold, absolute=False, remove_dangling=False)
        kept_n = cf.prune(naive, threshold=threshold, absolute=False, remove_dangling=False)
        assert torch.equal(kept_b.mask, kept_n.mask)
        assert 0 < kept_b.n_edges < model.graph.n_edges  # a real decision was made
        assert torch.allclose(batched.scores, naive.scores, atol=1e-8)


def test_acdc_predicted_chains_equal_the_loop_on_a_trained_model():
    """On toy-lm, where dozens of edges are kept, batched chains mispredict and retry (counted), run on
    into the next group of the layer, cutting off heads under their predictions, stretch to finish a
    layer and take a few left over on with the layer below (each seen): the
    circuit and every Δ still equal the one-forward-per-edge loop's, for several chunk sizes."""
    import circuitfind.methods.acdc as acdc
    model = cf.load_model("toy-lm").double()
    task = cf.load_task("ioi", n=4)
    naive = cf.score_edges(model, task, "acdc", threshold=0.01, naive=True)
    kept_naive = cf.prune(naive, threshold=0.01, absolute=False, remove_dangling=False)
    assert 20 < kept_naive.n_edges < model.graph.n_edges / 2
    forwards = []
    for chunk in (16, 5):
        with mock.patch.object(acdc, "_values", wraps=acdc._values) as values, \
                mock.patch.object(acdc, "_chain_masks", wraps=acdc._chain_masks) as chains:
            batched = cf.score_edges(model, task, "acdc", threshold=0.01, chunk=chunk)
        forwards.append(values.call_count)
        chunks = [call.args[1] for call in chains.call_args_list]
        entered_with_cuts = [item for items in chunks for i, item in enumerate(items)
                             if isinstance(item, acdc._Enter) and item.cut
                             and any(isinstance(member, tuple) for member in items[:i])]
        assert entered_with_cuts  # a chunk ran on into a group whose heads it had predicted cut off
        # the logits' 21 edges: one forward at chunk 16 (stretched by up to half to finish the layer), 5 at a time at 5
        first = sum(isinstance(member, tuple) for member in chunks[0])
        assert first == (model.graph.n_senders if chunk == 16 else 5)
        layers = [{int(model.graph.receiver_layer[m[0]]) for m in items if isinstance(m, tuple)} for items in chunks]
        assert chunk == 5 or any(len(both) == 2 for both in layers)  # a few left over ran on with the layer below
        assert torch.equal(cf.prune(batched, threshold=0.01, absolute=False, remove_dangling=False).mask,
                           kept_naive.mask)
        assert torch.allclose(batched.scores, naive.scores, atol=1e-8)
    assert forwards[0] < kept_naive.n_edges  # fewer forwards than kept edges: predictions held


def test_acdc_first_guess_keeps_the_kinds_of_edge_usually_kept(model):
    """Before any Δ is measured, an edge is guessed removed, but for an MLP's edge from a head or MLP a
    receiver above the MLP's layer still reads, the logits' edge from an MLP and a value's edge from the
    token embedding; a measured guess overrides it."""
    from circuitfind.methods.acdc import _Guesses
    g = model.graph
    circuit = g.edge_mask.clone().float()
    a0 = g.head_sender(0, 0)
    circuit[g.receiver_layer > 0, a0] = 0  # nothing above layer 0 reads head a0.h0 any more
    guess = _Guesses(g, circuit)
    assert not guess((g.mlp_receiver(0), g.head_sender(0, 1)))  # read above: kept
    assert guess((g.mlp_receiver(0), a0))  # read by nothing above: removed
    assert guess((g.qkv_receiver(1, "q", 0), g.head_sender(0, 1)))  # not an MLP: removed
    assert guess((g.mlp_receiver(1), 0))  # from the embedding: removed
    assert not guess((g.logits_receiver, g.mlp_sender(0))) and guess((g.logits_receiver, g.head_sender(1, 0)))
    assert not guess((g.qkv_receiver(1, "v", 0), 0)) and guess((g.qkv_receiver(1, "k", 0), 0))
    guess[(g.mlp_receiver(0), g.head_sender(0, 1))] = True
    assert guess((g.mlp_receiver(0), g.head_sender(0, 1)))


def test_acdc_receivers_by_index_or_name(model):
    """receivers= takes indices or the graph's names (one alone too, as `--option receivers=m1` gives it);
    an index out of range, a negative one (Python's -1 would be the logits by accident) or none at all
    is refused before any forward, as is a threshold that is not a finite positive number."""
    g, task = model.graph, Copy(n=4)
    by_index = cf.score_edges(model, task, "acdc", threshold=0.05, receivers=[g.logits_receiver, g.mlp_receiver(1)])
    by_name = cf.score_edges(model, task, "acdc", threshold=0.05, receivers=["logits", "m1"])
    assert torch.equal(by_index.scores, by_name.scores)
    swept = by_name.scores != 0
    assert swept[[g.logits_receiver, g.mlp_receiver(1)]].any() and not swept[: g.mlp_receiver(1)].any()
    alone = cf.score_edges(model, task, "acdc", threshold=0.05, receivers="logits")
    assert torch.equal(alone.scores[g.logits_receiver], by_name.scores[g.logits_receiver])
    for bad in ([g.n_receivers], [-1], ["m9"], [], [True]):
        with pytest.raises(cf.ConfigError, match="receivers"):
            cf.score_edges(model, task, "acdc", receivers=bad)
    for threshold in (float("nan"), float("inf"), 0.0):
        with pytest.raises(cf.ConfigError, match="finite threshold"):
            cf.score_edges(model, task, "acdc", threshold=threshold)


def test_acdc_with_the_task_metric(model):
    scores = cf.score_edges(model, Copy(n=5), "acdc", threshold=0.05, metric="task")
    assert (scores.scores != 0).any()


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "qwen2_moe+experts"])
def test_ifr_shares_against_a_loop(family):
    """Each receiver's weights are normalised proximities of its senders to its input (a plain loop)."""
    from circuitfind.methods.ifr import contribution_graph
    model = tiny_model(family)
    tokens = torch.randint(3, 90, (7,))
    w = contribution_graph(model, tokens, position=-1)
    g = model.graph
    _, cache = model.run_with_cache(tokens[None])
    from circuitfind.engine.patching import Inputs, sender_outputs
    y = sender_outputs(model, Inputs.of(tokens[None]))[:, 0, -1]  # [src, d]
    for l, dst in ((1, g.qkv_receiver(1, "k", 1)), (1, g.mlp_receiver(1))):
        mlp_reads = "hook_resid_pre" if model.cfg.parallel else "hook_resid_mid"
        x = cache[f"blocks.{l}.hook_resid_pre" if dst != g.mlp_receiver(l) else f"blocks.{l}.{mlp_reads}"][0, -1]
        senders = g.edge_mask[dst].nonzero()[:, 0]
        prox = torch.stack([(x.abs().sum() - (x - y[u]).abs().sum()).clamp(min=0) for u in senders])
        assert torch.allclose(w[dst, senders], prox / prox.sum(), atol=1e-9)
    x = cache[f"blocks.{g.n_layers - 1}.hook_resid_post"][0, -1]
    prox = torch.stack([(x.abs().sum() - (x - y[u]).abs().sum()).clamp(min=0) for u in range(g.n_senders)])
    assert torch.allclose(w[g.logits_receiver], prox / prox.sum(), atol=1e-9)


def test_ifr_method_scores_are_shares(model):
    scores = cf.score_edges(model, cf.load_task("induction", n=4), "ifr")
    g = model.graph
    sums = scores.scores.sum(1)
    assert torch.allclose(sums[sums > 0], torch.ones_like(sums[sums > 0]), atol=1e-5)
    routes = cf.prune(scores, threshold=0.04, absolute=False)
    assert 0 < routes.n_edges < g.n_edges


def test_node_scores_are_first_order_node_ablations(model):
    """A node's EAP score equals the first-order effect of ablating all its out-edges: the sum of theirs."""
    task = Copy(n=5)
    edge = cf.score_edges(model, task, "eap")
    node = cf.score_edges(model, task, "eap-node")
    g = model.graph
    assert torch.allclose(node.scores, g.edge_mask * edge.scores.sum(0, keepdim=True), atol=1e-6)
    circuit = cf.prune(node, nodes=3, remove_dangling=False)
    assert len(circuit.nodes()) == 3 and torch.equal(circuit.mask, g.nodes_to_edges(
        torch.isin(torch.arange(g.n_senders), torch.tensor([g.senders.index(n) for n in circuit.nodes()]))))
    assert cf.score_edges(model, task, "eap-ig-node", steps=1).scores.allclose(node.scores, atol=1e-6)


def test_node_scores_sized_in_edges_make_node_circuits(model):
    """edges=N on node scores takes the most top nodes whose circuit fits in N edges. The top N edges of
    such scores were out-edges of a few nodes that nothing fed: dangling, so the circuit was empty."""
    node = cf.score_edges(model, Copy(n=5), "eap-node")
    sizes = [cf.prune(node, nodes=k).n_edges for k in range(model.graph.n_senders + 1)]  # by brute force
    first = next(size for size in sizes if size > 0)  # the smallest circuit with a path to the logits
    for n in (1, first, first + 1, model.graph.n_edges // 2, model.graph.n_edges):
        circuit = cf.prune(node, edges=n)
        k = max(k for k, size in enumerate(sizes) if size <= n)
        assert circuit.provenance["nodes"] == k and circuit.provenance["strategy"] == "top-nodes"
        assert torch.equal(circuit.mask, cf.prune(node, nodes=k).mask)
    assert cf.prune(node, edges=first).n_edges == first
    t = float(node.scores.abs().max()) / 2  # a threshold stays one per edge
    by_value = cf.prune(node, threshold=t, remove_dangling=False)
    assert by_value.provenance["strategy"] == "threshold"
    assert by_value.n_edges == int((node.scores.abs() >= t)[model.graph.edge_mask].sum()) > 0


def test_discover_with_node_scores_finds_a_circuit_smaller_than_the_model():
    """On toy-lm IOI, the node methods' curve reaches the target below the whole graph (it stayed at 0
    up to 10 % of edges, so discover returned every edge)."""
    model = cf.load_model("toy-lm")
    run = cf.discover(model, "ioi", "eap-ig-node", n=40, quiet=True, report=False)
    assert run.result["sized_by"] == "target" and run.result["n_edges"] < model.graph.n_edges
    assert run.result["faithfulness"] >= 0.9 and run.circuit.provenance["strategy"] == "top-nodes"


def test_induction_circuit_is_found_on_the_hand_weighted_model():
    """Previous-token head → induction head (through its keys) is found; ≤ 5% of edges are faithful."""
    from tests.induction_model import induction_model
    model = induction_model().double()
    task = cf.load_task("induction", n=40)
    batch = task.batch(model)
    with torch.no_grad():
        predicted = model(batch.clean.tokens)[torch.arange(40), batch.clean.answer_pos].argmax(-1)
    assert torch.equal(predicted, batch.targets.correct[:, 0])  # the construction does induction
    scores = cf.score_edges(model, task, "eap-ig")
    assert "a0.h0->a1.h0<k>" in [name for name, _ in scores.top(5)]
    circuit = cf.prune(scores, edges=int(0.05 * model.graph.n_edges))
    assert "a0.h0->a1.h0<k>" in circuit.edges()
    assert cf.evaluate(model, task, circuit)["faithfulness"] >= 0.9


@pytest.mark.parametrize("name", ["ioi", "sva", "gendered-pronoun", "capital-country", "arithmetic", "docstring",
                                  "greater-than", "induction"])
def test_eap_ig_scores_track_exact_patching_on_the_trained_toy_lm(name):
    """Pearson(EAP-IG, exact) ≥ 0.9 on toy-lm, both scored on logit-diff. Under the saturating metrics
    (greater-than's prob-diff, induction's KL at the clean run) the same scores fall to 0.54 / 0.73
    against noising, where edges interact; they track the mean of noising and denoising there (the next
    test). mcqa (logit-diff already) is left out at 0.88 (`benchmarks/correlation.py`)."""
    model = cf.load_model("toy-lm")
    task = cf.load_task(name, n=20, metric="logit-diff")  # the metric the MIB circuit track attributes with
    exact = cf.score_edges(model, task, "exact").values()
    eap_ig = cf.score_edges(model, task, "eap-ig").values()
    assert torch.corrcoef(torch.stack([eap_ig, exact]))[0, 1] >= 0.9


@pytest.mark.parametrize("name", ["greater-than", "induction"])
def test_eap_ig_tracks_the_mean_of_noising_and_denoising_under_saturating_metrics(name):
    """Under their own metrics (prob-diff, KL) toy-lm's greater-than and induction edges interact:
    noising and denoising exact effects disagree (r 0.16 and 0.75 at n = 20), so EAP-IG, which integrates
    along the path between the two runs, tracks neither alone (against noising r = 0.40 and 0.74) but
    their mean (0.95, 0.98), as it does exactly where the metric is quadratic along the path (the test
    above). `benchmarks/correlation.py` gives the figures for every toy task."""
    model = cf.load_model("toy-lm")
    task = cf.load_task(name, n=20)
    noising = cf.score_edges(model, task, "exact").values()
    denoising = cf.score_edges(model, task, "exact-denoising").values()
    eap_ig = cf.score_edges(model, task, "eap-ig").values()

    def r(a, b):
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    assert r(noising, denoising) < 0.9  # the case this test is about: edges that interact
    assert r(eap_ig, (noising + denoising) / 2) >= 0.9


def test_eap_ig_scores_track_exact_patching_on_a_tracr_model():
    model = cf.load_model("tracr-xproportion")
    task = cf.load_task("tracr-xproportion", n=20)
    exact = cf.score_edges(model, task, "exact", ablation="zero").values()
    eap_ig = cf.score_edges(model, task, "eap-ig", ablation="zero").values()
    assert torch.corrcoef(torch.stack([eap_ig, exact]))[0, 1] >= 0.9


def test_a_loss_given_as_a_function_scores_like_the_builtin_loss():
    """A metric function counts as higher-is-better unless the task says otherwise; a loss written
    out by hand must then score exactly like the built-in "ce" (the sign convention of every method)."""
    from circuitfind.metrics import cross_entropy
    from circuitfind.tasks.induction import Induction

    model = cf.load_model("toy-induction").double()
    builtin = type("CE", (Induction,), {"metric": "ce"})(n=6)
    as_loss = type("Loss", (Induction,), {"metric": staticmethod(cross_entropy), "higher_is_better": False})(n=6)
    as_gain = type("Gain", (Induction,), {"metric": staticmethod(cross_entropy)})(n=6)
    want = cf.score_edges(model, builtin, "eap").scores
    assert want.abs().max() > 0
    torch.testing.assert_close(cf.score_edges(model, as_loss, "eap").scores, want)
    torch.testing.assert_close(cf.score_edges(model, as_gain, "eap").scores, -want)


def test_circuits_combine_and_overlap_as_edge_sets(model, tmp_path, capsys):
    from circuitfind.cli import main

    g = model.graph
    names = g.edge_names(g.edge_mask)
    a = Circuit(g.mask_from_edges(names[:6]), g, {"method": "x"})
    b = Circuit(g.mask_from_edges(names[3:10]), g, {"method": "y"})
    assert (a & b).edges() == names[3:6] and (a | b).edges() == names[:10] and (a - b).edges() == names[:3]
    o = cf.overlap(a, b)
    assert o["edges"] == {"a": 6, "b": 7, "shared": 3, "iou": 3 / 10}
    nodes_a, nodes_b = set(a.nodes()), set(b.nodes())
    assert o["nodes"] == {"a": len(nodes_a), "b": len(nodes_b), "shared": len(nodes_a & nodes_b),
                          "iou": len(nodes_a & nodes_b) / len(nodes_a | nodes_b)}
    empty = Circuit(torch.zeros_like(g.edge_mask), g)
    assert cf.overlap(empty, empty)["edges"]["iou"] == 1.0 and cf.overlap(a, empty)["edges"]["iou"] == 0.0
    other = Graph(g.n_layers + 1, g.n_heads)
    with pytest.raises(cf.ConfigError, match="different graphs"):
        cf.overlap(a, Circuit(other.edge_mask, other))
    with pytest.raises(cf.ConfigError, match="combine with circuits"):
        a & g.edge_mask
    # the command line: run directories or files, two (shared, IoU, the edges only in each) or more (matrices)
    a.save(tmp_path / "a" / "circuit.json")
    b.save(tmp_path / "b.json")
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b.json"), "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "edges: 3 shared, IoU 0.300" in out and "(x): 6 edges" in out
    assert f"only in A (3): {names[0]}, {names[1]}, ... (1 more)" in out and f"only in B (4): {names[6]}" in out
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b.json"), str(tmp_path / "a")]) == 0
    rows = capsys.readouterr().out.split("edges IoU:")[1].splitlines()[2:5]
    assert rows[0].split()[1:] == ["1.000", "0.300", "1.000"]
    assert main(["compare", str(tmp_path / "a")]) == 2
    Circuit(other.edge_mask, other).save(tmp_path / "other.json")  # another model's: no IoU, where nodes sit
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "other.json")]) == 0
    out, err = capsys.readouterr()
    assert "by fifth of depth" in out and "IoU" not in out
    with pytest.raises(cf.ConfigError, match="different graphs"):  # (in Python, set algebra still refuses)
        cf.overlap(Circuit.load(tmp_path / "a"), Circuit.load(tmp_path / "other.json"))


BATCHED_CASES = [("eap", {}), ("eap-node", {}), ("eap-ig", {"steps": 3}), ("eap-ig-activations", {"steps": 2}),
                 ("eap-ig-node", {"steps": 2}), ("clean-corrupted", {}), ("exact", {}), ("exact-node", {}),
                 ("ifr", {}), ("ifr", {"over": "answer"}), ("acdc", {"threshold": 0.01})]


@pytest.mark.parametrize("ablation", ["corrupted", "mean", "mean-positional", "zero"])
def test_scores_a_batch_of_examples_at_a_time_equal_the_whole_task(ablation):
    """batch_size splits the task (8 examples into 3 + 3 + 2): every method's scores, the evaluation
    and the curve are the task's means all the same (mean ablations still average the whole task)."""
    model = cf.load_model("toy-lm").double()
    task = cf.load_task("ioi", n=8, seed=1)  # prompts of several lengths: padding inside the batches
    denoising = [("exact-denoising", {}), ("exact-node-denoising", {})]
    for method, options in BATCHED_CASES + (denoising if ablation == "corrupted" else []):
        whole = cf.score_edges(model, task, method, ablation, **options).scores
        parts = cf.score_edges(model, task, method, ablation, batch_size=3, **options)
        assert whole.abs().max() > 1e-6 and parts.config["batch_size"] == 3
        # (EdgeScores keep float32: equal to its rounding)
        assert torch.allclose(parts.scores, whole, rtol=1e-6, atol=1e-6 * float(whole.abs().max())), method
    scores = cf.score_edges(model, task, "eap", ablation)
    circuit = cf.prune(scores, edges=30)
    one, split = (cf.evaluate(model, task, circuit, ablation=ablation, split="train", batch_size=b) for b in (None, 3))
    assert split == pytest.approx(one, abs=1e-10)
    curves = [cf.faithfulness_curve(model, task, scores, ablation=ablation, split="train", batch_size=b)
              for b in (None, 3)]
    assert curves[1].faithfulness_absolute == pytest.approx(curves[0].faithfulness_absolute, abs=1e-9)
    assert curves[1].metric_signed == pytest.approx(curves[0].metric_signed, abs=1e-10)


def test_batch_size_is_refused_where_it_cannot_hold(model):
    task = cf.load_task("induction", n=6)
    with pytest.raises(cf.ConfigError, match="method 'edge-pruning' takes the task whole"):  # training does
        cf.score_edges(model, task, "edge-pruning", batch_size=2)
    with pytest.raises(cf.ConfigError, match="resample ablation draws each example's donor from the whole task"):
        cf.score_edges(model, task, "exact", "resample", batch_size=2)
    assert cf.score_edges(model, task, "exact", "resample", batch_size=6).scores.any()  # one batch: the task
    for bad in (0, 2.5):
        with pytest.raises(cf.ConfigError, match="batch_size"):
            cf.score_edges(model, task, "eap-ig", batch_size=bad)


def test_exact_scores_of_a_bfloat16_model_are_not_rounding():
    """A metric reads float32 logits whatever the model's dtype: in bfloat16 logits (a step of 0.03 at
    a logit of 8) most of toy-lm's exact IOI effects, median |effect| 0.004, were rounding; the median
    error against float32 was 0.012, and is 0.003 with float32 logits."""
    task = cf.load_task("ioi", n=12)
    model = cf.load_model("toy-lm")
    want = cf.score_edges(model, task, "exact").scores[model.graph.edge_mask]
    half = cf.load_model("toy-lm", dtype="bfloat16")
    got = cf.score_edges(half, task, "exact").scores[model.graph.edge_mask]
    assert float((got - want).abs().median()) < 0.006 < float(want.abs().median()) * 2
    batch = task.batch(half).clean
    assert half(batch.tokens, batch.attention_mask, at=batch.answer_pos).dtype == torch.float32
    assert half(batch.tokens, batch.attention_mask).dtype == torch.bfloat16  # whole-sequence logits stay narrow


def test_methods_skip_the_prefix_clean_and_corrupted_share_without_changing_a_result():
    """On toy-lm greater-than the prompts agree on their first 8 of 13 positions: exact patching (both
    directions), EAP, EAP-IG, ACDC and the faithfulness curve skip them (setups finds the prefix, and
    makes the corrupted run's outputs past it alone) and give what the walk over whole prompts gives."""
    import circuitfind.methods.common as common
    from circuitfind.engine.shared_prefix import clean_run
    model = cf.load_model("toy-lm").double()
    task = cf.load_task("greater-than", n=8)
    setup = next(iter(common.setups(model, task, "corrupted")))
    assert setup.shared.n == 8 and setup.ablated.shape[2] == 13 - 8
    assert next(iter(common.setups(model, task, "mean"))).shared is None  # only the corrupted run shares it

    def run():
        scores = {m: cf.score_edges(model, task, m).scores
                  for m in ("exact", "exact-denoising", "exact-node", "eap", "eap-ig", "eap-ig-activations")}
        acdc = cf.score_edges(model, task, "acdc", threshold=0.002)
        curve = cf.faithfulness_curve(model, task, cf.score_edges(model, task, "eap"), ranking="signed")
        return scores, acdc, curve
    skipped = run()
    with mock.patch.object(common, "clean_run", lambda model, inputs, other=None: clean_run(model, inputs, None)):
        assert next(iter(common.setups(model, task, "corrupted"))).shared is None
        whole = run()
    for method, s in whole[0].items():
        assert s.abs().max() > 1e-3 and torch.allclose(skipped[0][method], s, atol=1e-6), method
    kept = [cf.prune(a, threshold=0.002, absolute=False, remove_dangling=False) for a in (skipped[1], whole[1])]
    assert torch.equal(kept[0].mask, kept[1].mask) and 0 < kept[0].n_edges < model.graph.n_edges
    assert all(abs(a - b) < 1e-6 for a, b in zip(skipped[2].faithfulness_signed, whole[2].faithfulness_signed))
