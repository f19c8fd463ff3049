"""Every EAP-IG name against a slow re-derivation of its reference's quantity (tests/reference.py: plain autograd
on explicit receiver inputs, scores edge by edge), on tiny GPT-2, Llama (grouped-query) and NeoX (parallel) models."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.engine.ablation import ablated_outputs
from circuitfind.engine.attribution import attribute, edge_mask_integrated_gradients
from circuitfind.engine.node_ig import node_integrated_gradients
from circuitfind.engine.patching import Inputs, shared_prefix
from circuitfind.methods.eap_ig import EAPIGConfig, alphas
from tests.conftest import VOCAB, tiny_hf
from tests.reference import clean_outputs, reference_backward, reference_scores

STEPS = 3
RELATIVE = 1e-5  # what the issue asks; in float64 the agreement is ~1e-12


def _objective(logits):
    return (logits[:, 5] - logits[:, 7]).mean()


def _setup(family, pos=7):
    """family "mixtral+experts": the expert-level graph."""
    family, _, experts = family.partition("+")
    model = cf.from_hf(tiny_hf(family), experts=bool(experts)).double()
    g = torch.Generator().manual_seed(5)
    mask = torch.ones(3, pos, dtype=torch.long)
    mask[0, :2] = 0  # a left-padded prompt
    clean = Inputs.of(torch.randint(3, VOCAB, (3, pos), generator=g), mask)
    corrupt = Inputs.of(torch.cat([clean.tokens[:, :3], torch.randint(3, VOCAB, (3, pos - 3), generator=g)], 1), mask)
    return model, clean, corrupt, ablated_outputs(model, "corrupted", clean, corrupt)


def _relative(got, want):
    assert want.abs().max() > 1e-4  # a comparison of zeros would pass whatever the formulas
    return float((got.double() - want).abs().max() / want.abs().max())


def _node_groups(model):
    """The library's nodes: input, then per layer the attention output (all heads) and the MLP output."""
    g = model.graph
    groups = [[0]]
    for l in range(model.cfg.n_layers):
        groups += [[g.head_sender(l, h) for h in range(g.n_heads)], list(g.mlp_senders(l))]  # (experts together)
    return groups


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("points", ["right", "left"])
def test_eap_ig_inputs_match_the_slow_reference(family, points):
    """eap-ig: the input embedding at abl + (k/n)(clean − abl), k = 1..n (right, MIB) or 0..n−1 (left, the
    EAP-IG library), D from the clean run, the mean over the n passes."""
    model, clean, _, abl = _setup(family)
    ks = range(1, STEPS + 1) if points == "right" else range(STEPS)
    assert alphas(EAPIGConfig(steps=STEPS, points=points)) == [k / STEPS for k in ks]
    outs, D = clean_outputs(model, clean, abl)
    want = sum(reference_scores(model, clean, abl, _objective, D, replace={0: abl[0] + k / STEPS * D[0]})
               for k in ks) / STEPS
    got = attribute(model, clean, abl.clone(), _objective, alphas=alphas(EAPIGConfig(steps=STEPS, points=points)))
    assert _relative(got, want) <= RELATIVE


def test_left_points_with_one_step_is_the_gradient_at_the_corrupted_run():
    """points="left", steps=1: the one gradient is taken at k = 0, the corrupted run itself (corrupted
    ablation): its receiver gradients times the clean run's differences."""
    model, clean, corrupt, abl = _setup("gpt2")
    assert alphas(EAPIGConfig(steps=1, points="left")) == [0.0]
    _, D = clean_outputs(model, clean, abl)
    _, received, _ = reference_backward(model, corrupt, abl, _objective)  # the corrupted prompts, nothing patched
    g = model.graph
    want = torch.zeros(g.n_receivers, g.n_senders, dtype=torch.float64)
    for dst, src in g.edge_mask.nonzero().tolist():
        want[dst, src] = -(received[dst].grad * D[src]).sum()
    got = attribute(model, clean, abl, _objective, alphas=[0.0])
    assert _relative(got, want) <= RELATIVE
    eap = attribute(model, clean, abl, _objective)
    assert _relative(eap, want) > 1e-3  # and it is not EAP's gradient at the clean run


@pytest.mark.parametrize("family, steps", [("gpt2", STEPS), ("llama", STEPS), ("gpt_neox", 2), ("qwen2_moe", 2),
                                           ("qwen2_moe+experts", 2)])
def test_eap_ig_activations_matches_the_slow_reference(family, steps):
    """eap-ig-activations: each of the 1 + 2L nodes (input, attention output of a layer with all its heads,
    MLP output) at abl + (k/n)(clean − abl), k = 1..n, as a constant; every pass scores every edge with the
    clean D; the mean over all passes. The engine's suffix runs, batched steps and one shared backward give
    the same; so does skipping the prefix the prompts share."""
    model, clean, corrupt, abl = _setup(family)
    outs, D = clean_outputs(model, clean, abl)
    want, passes = 0, 0
    for group in _node_groups(model):
        for k in range(1, steps + 1):
            replace = {s: abl[s].expand_as(outs[s]) + k / steps * D[s] for s in group}
            want = want + reference_scores(model, clean, abl, _objective, D, replace=replace)
            passes += 1
    want = want / passes
    assert passes == (1 + 2 * model.cfg.n_layers) * steps
    got = node_integrated_gradients(model, clean, abl, _objective, steps=steps)
    assert _relative(got, want) <= RELATIVE
    shared = shared_prefix(model, clean, corrupt)
    assert shared is not None and shared.n == 3
    past = ablated_outputs(model, "corrupted", clean, corrupt, shared=shared)
    assert _relative(node_integrated_gradients(model, clean, past, _objective, steps=steps, shared=shared), want) \
        <= RELATIVE
    # one step: each node's pass is the clean run with that node cut from the backward, not EAP
    one = node_integrated_gradients(model, clean, abl, _objective, steps=1)
    assert _relative(one, attribute(model, clean, abl, _objective)) > 1e-3


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_eap_ig_edges_matches_the_slow_reference(family):
    """eap-ig-edges: every edge's mask at m = k/n, k = 0..n (both endpoints), the edge carrying m·(its sender's
    output in that run) + (1 − m)·abl; minus the mask gradient, averaged over the n + 1 points."""
    model, clean, _, abl = _setup(family)
    g = model.graph
    want = torch.zeros(g.n_receivers, g.n_senders, dtype=torch.float64)
    for k in range(STEPS + 1):
        mask = (k / STEPS * g.edge_mask.double()).requires_grad_(True)
        reference_backward(model, clean, abl, _objective, mask=mask)
        want -= mask.grad * g.edge_mask / (STEPS + 1)
    got = edge_mask_integrated_gradients(model, clean, abl, _objective, steps=STEPS)
    assert _relative(got, want) <= RELATIVE


def test_old_runs_and_sweep_rows_say_what_they_used(tmp_path):
    """Scores saved before `points` existed took gradients at k = 1..n: loaded, they say points="right" (and
    which reference that is); an eap-ig-activations run or sweep row from before the per-node estimator says
    which estimator it ran. A new eap-ig-activations job has a key of its own, so a sweep reruns it."""
    from circuitfind.circuit import OLD_EAP_IG_ACTIVATIONS, EdgeScores, reproduces
    from circuitfind.graph import Graph
    from circuitfind.sweep import filled_job_config
    from circuitfind.sweep.jobs import Job, expand
    g = Graph(2, 2)
    old = {"steps": 5, "variant": "inputs", "level": "edge", "seed": 0, "n": 4, "seconds": 1.0}  # as saved before
    EdgeScores(torch.randn(g.n_receivers, g.n_senders), g, method="eap-ig", config=old).save(tmp_path / "a")
    loaded = EdgeScores.load(tmp_path / "a")
    assert loaded.config["points"] == "right" and "MIB" in reproduces("eap-ig", loaded.config)
    assert "k = 0..n-1" in reproduces("eap-ig", {**old, "points": "left"})
    before = {**old, "variant": "activations"}
    EdgeScores(torch.randn(g.n_receivers, g.n_senders), g, method="eap-ig-activations", config=before).save(
        tmp_path / "b")
    assert EdgeScores.load(tmp_path / "b").config["estimator"] == OLD_EAP_IG_ACTIVATIONS
    assert reproduces("eap-ig-activations", before) is None
    assert "per-node" not in OLD_EAP_IG_ACTIVATIONS.split(";")[0]
    row = {"schema": 1, "method": "eap-ig", "options": {"steps": 10}}
    assert filled_job_config(row)["options"] == {"points": "right", "steps": 10}
    assert filled_job_config({"method": "eap-ig", "options": {"points": "left"}})["options"]["points"] == "left"
    assert filled_job_config({"method": "eap-ig-activations", "options": {}})["estimator"] == OLD_EAP_IG_ACTIVATIONS
    # --option eap-ig:points=left on the command line
    job = expand("toy-induction", "induction", "eap-ig", options={"eap-ig": {"points": "left"}})[0]
    assert job.options == {"points": "left"} and job.key != expand("toy-induction", "induction", "eap-ig")[0].key
    new = Job("toy-lm", "ioi", "eap-ig-activations", "corrupted", 0)
    assert filled_job_config(new.config())["estimator"] == "node-outputs"
    assert new.key != Job("toy-lm", "ioi", "eap-ig", "corrupted", 0).key


def test_points_reach_the_method_the_run_and_the_export(tmp_path):
    """points= is an option of eap-ig (the command line's --option points=left, a sweep's eap-ig:points=left):
    recorded with the scores, in result.json's provenance with the reference it reproduces, and in the EAP-IG
    graph JSON; refused where the variant takes its reference's own points."""
    from circuitfind.interop import from_eap_ig, to_eap_ig
    model = cf.load_model("toy-induction")
    task = cf.load_task("induction", n=4, metric="logit-diff")
    left = cf.score_edges(model, task, "eap-ig", steps=1, points="left")
    assert left.config["points"] == "left"
    data = to_eap_ig(left)
    assert data["circuitfind"]["config"]["points"] == "left" and "library" in data["circuitfind"]["reproduces"]
    assert from_eap_ig(data)[0].config["from"]["config"]["points"] == "left"
    with pytest.raises(cf.ConfigError, match="fixes points='right'"):
        cf.score_edges(model, task, "eap-ig-activations", points="left")
    with pytest.raises(cf.ConfigError, match="points is for eap-ig"):
        cf.score_edges(model, task, "clean-corrupted", points="left")
    run = cf.discover(model, task, "eap-ig", n=4, edges=4, report=False, quiet=True, steps=2, points="left")
    assert "library" in run.result["provenance"]["reproduces"]
    assert run.result["provenance"]["options"] == {"steps": 2, "points": "left"}
