"""AtP*: the QK fix against exact patching and a per-key-position loop through the model's own attention;
GradDrop's dropped-layer gradient against a masked forward holding that layer constant."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.engine.ablation import ablated_outputs
from circuitfind.engine.attribution import attribute
from circuitfind.engine.patching import masked_forward, sender_outputs
from circuitfind.engine.qk_fix import attention_run, qk_fixed
from circuitfind.errors import ConfigError
from circuitfind.task import Example, Task
from tests.conftest import tiny_hf
from tests.test_attribution import _linear_model, _objective, _pair
from tests.test_methods import Copy


class Last(Task):
    """Token-level: the prompts differ at the last position alone, where the answer is read (the query row)."""
    name = "last"
    metric = "logit-diff"

    def example(self, rng, words):
        a, b, *rest = words.random_tokens(rng, 6)
        return Example(clean=rest + [a], corrupt=rest + [b], correct=a, wrong=b)


@pytest.mark.parametrize("task", [Copy(n=5), Last(n=5)], ids=["first", "last"])
def test_qk_fixed_query_and_key_edges_equal_exact_patching_where_attention_is_the_only_non_linearity(task):
    model = _linear_model()  # one layer, no norms, linear MLP; logit-diff is linear in the logits
    star = cf.score_edges(model, task, "atp-star", graddrop=False).scores
    exact = cf.score_edges(model, task, "exact").scores
    eap = cf.score_edges(model, task, "eap").scores
    g = model.graph
    qk = [g.qkv_receiver(0, t, h) for t in "qk" for h in range(2)]
    assert exact[qk].abs().max() > 1e-3  # (the task's position is read by these edges)
    assert torch.allclose(star[qk], exact[qk], atol=1e-9)
    assert not torch.allclose(eap[qk], exact[qk], atol=1e-4)  # the first order alone is not exact here
    assert torch.allclose(star, exact, atol=1e-9)  # and every other edge is linear: EAP, exact


def _slow_qk(model, inputs, D, objective):
    """Each (layer, head, sender, key position) patched alone through `Attention.attend` with its own norms and
    rotation, the effect ⟨∂objective/∂z, Δz⟩ summed over key positions; each query row re-attended likewise."""
    g, cfg = model.graph, model.cfg
    run = attention_run(model, inputs, objective, None)
    positions = model.positions(inputs.attention_mask)
    out = torch.zeros(g.n_receivers, g.n_senders, dtype=torch.float64)
    for l, (x, q, k, v, _, z, gz) in enumerate(run):
        attn, block = model.blocks[l].attn, model.blocks[l]
        rope = tuple(t[:, None] for t in model.rope(positions, l))
        allowed = model.allowed(inputs.attention_mask, l)
        for h in range(cfg.n_heads):
            kv = h // cfg.group_size
            heads = torch.tensor([h])
            for u in range(g.senders_before(l)):
                xn = block.ln1(x - D[u])
                qn = (xn @ attn.W_Q[h] + (0 if attn.b_q is None else attn.b_q.view(-1, cfg.d_head)[h]))[:, None]
                kn = (xn @ attn.W_K[kv] + (0 if attn.b_k is None else attn.b_k.view(-1, cfg.d_head)[kv]))[:, None]
                z_q, _ = attn.attend(qn, k[:, kv: kv + 1], v[:, kv: kv + 1], rope, allowed, True, heads=heads)
                out[g.qkv_receiver(l, "q", h), u] = ((z_q - z[:, h: h + 1]) * gz[:, h: h + 1]).sum()
                total = 0.0
                for t in range(x.shape[1]):
                    kt = k[:, kv: kv + 1].clone()
                    kt[:, :, t] = kn[:, :, t]
                    z_k, _ = attn.attend(q[:, h: h + 1], kt, v[:, kv: kv + 1], rope, allowed, True, heads=heads)
                    total += ((z_k - z[:, h: h + 1]) * gz[:, h: h + 1]).sum()
                out[g.qkv_receiver(l, "k", h), u] = total
    return out


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2"])  # rotary + GQA, per-head q/k norms, soft cap
def test_qk_fix_equals_a_per_key_position_loop_through_the_models_attention(family):
    model = cf.from_hf(tiny_hf(family)).double()
    clean, corrupt = _pair()
    D = sender_outputs(model, clean) - ablated_outputs(model, "corrupted", clean, corrupt)
    fast, rows = qk_fixed(model, clean, D, _objective)
    slow = _slow_qk(model, clean, D, _objective).float() * model.graph.edge_mask
    assert slow[rows].abs().max() > 1e-4
    assert torch.allclose(fast[rows], slow[rows], atol=1e-6, rtol=1e-5)


def test_a_dropped_layers_gradient_equals_the_mask_gradient_with_that_layer_held_constant():
    model = cf.from_hf(tiny_hf("gpt2")).double()
    g = model.graph
    clean, corrupt = _pair()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    outs = sender_outputs(model, clean)
    for layer in range(model.cfg.n_layers):
        dropped = attribute(model, clean, abl, _objective, drop_layer=layer)
        layer_senders = list(g.mlp_senders(layer)) + [g.head_sender(layer, h) for h in range(g.n_heads)]
        # layer's senders carry their clean outputs as constants (mask 0, "ablated" = clean): the same forward,
        # no gradient through them; the mask gradient of every other edge is ⟨g_v, D_u⟩ = −score
        held = abl.expand(-1, clean.batch, clean.tokens.shape[1], -1).clone()
        held[layer_senders] = outs[layer_senders]
        mask = g.edge_mask.to(torch.float64).clone()
        mask[:, layer_senders] = 0
        mask.requires_grad_(True)
        _objective(masked_forward(model, clean, held, mask)).backward()
        reference = -mask.grad * g.edge_mask
        keep = torch.ones(g.n_senders, dtype=torch.bool)
        keep[layer_senders] = False  # their own out-edges' mask gradients are ⟨g, 0⟩ there
        assert reference[:, keep].abs().max() > 1e-4
        assert torch.allclose(dropped[:, keep].double(), reference[:, keep], atol=1e-6)
        into = [r for r in range(g.n_receivers) if int(g.receiver_layer[r]) == layer]
        assert dropped[into].abs().max() == 0  # nothing reaches a dropped layer's receivers
        full = attribute(model, clean, abl, _objective)
        assert not torch.allclose(dropped, full, atol=1e-5) or layer == model.cfg.n_layers - 1


def test_graddrop_is_the_mean_magnitude_over_dropped_layers_and_one_layer_is_refused():
    model = cf.from_hf(tiny_hf("gpt2")).double()
    task = cf.load_task("induction", n=4, metric="logit-diff")
    star = cf.score_edges(model, task, "atp-star", qk_fix=False).scores
    s = next(iter(cf.methods.common.setups(model, task, "corrupted")))
    parts = [attribute(model, s.batch.clean, s.ablated, s.objective, drop_layer=l).abs() for l in range(2)]
    assert star.min() >= 0 and star.max() > 1e-3
    logits = model.graph.logits_receiver
    assert torch.allclose(star[:logits], sum(parts)[:logits] / 1, atol=1e-6)  # into a layer: L − 1 = 1
    assert torch.allclose(star[logits], sum(parts)[logits] / 2, atol=1e-6)  # into the logits: in no layer, L = 2
    with pytest.raises(ConfigError, match="graddrop=false"):
        cf.score_edges(_linear_model(), Copy(n=3), "atp-star")


def test_graddrop_is_the_magnitude_of_eap_on_edges_no_dropped_layer_reaches():
    """The paper's normalisation, (1/(L − 1)) Σ_l over a node's L − 1 non-zero terms, leaves a score that no pass
    changes at |ĉ|: so edges into the last layer and into the logits (whose gradients no dropped layer cuts)
    score |EAP| exactly, the logits' too (mean over all L of its passes, none zero)."""
    model = cf.from_hf(tiny_hf("gpt2")).double()  # (two layers)
    task = cf.load_task("induction", n=4, metric="logit-diff")
    star = cf.score_edges(model, task, "atp-star", qk_fix=False).scores
    eap = cf.score_edges(model, task, "eap").scores
    g = model.graph
    last = [r for r in range(g.n_receivers) if int(g.receiver_layer[r]) >= model.cfg.n_layers - 1]
    assert g.logits_receiver in last and eap[last].abs().max() > 1e-3
    assert torch.allclose(star[last], eap[last].abs(), atol=1e-6)
