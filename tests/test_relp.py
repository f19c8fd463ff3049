"""RelP (relevance patching): EAP where its LRP rules are the gradient, and a slow re-derivation elsewhere —
autograd through tests/reference.py's loop forward with the norms' scales, the activations' coefficients, gates
and (AH-rule) attention patterns detached by hand, scores edge by edge."""

from __future__ import annotations

import types

import pytest
import torch

import circuitfind as cf
from circuitfind.engine.attribution import attribute
from circuitfind.errors import ConfigError
from tests.conftest import no_norm_model
from tests.conftest import tiny_model
from tests.reference import clean_outputs, reference_scores
from tests.test_attribution import _linear_model
from tests.test_eap_ig import _objective, _relative, _setup
from tests.test_methods import Copy


def _relu_model():
    """Two layers, no norms, ReLU MLPs (whose LRP rule is their gradient, as in the paper's code)."""
    return no_norm_model(2, "relu")


def test_relp_is_eap_where_its_rules_are_the_gradient():
    """No norms, ReLU MLPs: every LRP rule is the gradient (attention through the softmax, its default)."""
    model, task = _relu_model(), Copy(n=6)
    relp = cf.score_edges(model, task, "relp").scores
    eap = cf.score_edges(model, task, "eap").scores
    assert relp.abs().max() > 1e-3
    assert torch.equal(relp, eap)


def test_the_identity_rule_on_a_linear_mlp_is_its_gradient_up_to_the_papers_stabiliser():
    """act(x) = x: the coefficient x/(x + 1e-6·sign x), 1 but for the stabiliser the paper's code adds."""
    model, task = _linear_model(), Copy(n=6)
    relp = cf.score_edges(model, task, "relp").scores
    eap = cf.score_edges(model, task, "eap").scores
    assert 0 < (relp - eap).abs().max() <= 1e-4 * eap.abs().max()


def test_the_ah_rule_zeroes_query_and_key_edges_and_keeps_the_rest_of_eap():
    model, task = _relu_model(), Copy(n=6)
    relp = cf.score_edges(model, task, "relp", ah_rule=True).scores
    eap = cf.score_edges(model, task, "eap").scores
    g = model.graph
    qk = [g.qkv_receiver(l, t, h) for l in range(2) for t in "qk" for h in range(2)]
    assert eap[qk].abs().max() > 1e-3 and relp[qk].abs().max() == 0
    top = [g.qkv_receiver(1, "v", h) for h in range(2)] + [g.mlp_receiver(1), g.logits_receiver]
    assert torch.equal(relp[top], eap[top])  # nothing downstream of them goes through a softmax's q or k
    assert not torch.allclose(relp, eap, atol=1e-4)


def _stabilised(x):
    return x + ((x == 0).to(x) + x.sign()) * 1e-6


def _by_hand(model, ah_rule: bool):
    """The model's norms, MLPs (and attention) as instance forwards with RelP's factors detached, written here
    from the paper's rules, not from the library's: x/σ(x).detach(), act(x)/x as a constant coefficient, a
    gate's product half through each factor, softmax(·).detach()."""
    def norm_forward(norm):
        def forward(x, *_):
            if norm.kind == "layernorm":
                c = x - x.mean(-1, keepdim=True)
                return c / torch.sqrt(c.pow(2).mean(-1, keepdim=True) + norm.eps).detach() * norm.w + norm.b
            return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps).detach() * (norm.offset + norm.w)
        return forward

    def mlp_forward(mlp):
        def forward(x, *_):
            up = x @ mlp.w_in + (0 if mlp.b_in is None else mlp.b_in)
            pre = up if mlp.w_gate is None else x @ mlp.w_gate
            coefficient = (mlp.act(pre) / _stabilised(pre)).detach()
            hidden = mlp.act(pre).detach() + coefficient * (pre - pre.detach())
            if mlp.w_gate is not None:
                product = hidden * up
                hidden = product / 2 + (product / 2).detach()
            return hidden @ mlp.w_out
        return forward

    def attend(attn):
        def forward(q, k, v, rope, allowed, want_pattern=False, q_rope=None, heads=None):
            scores = (q @ k.transpose(-1, -2)) * model.cfg.scale
            pattern = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1).detach()
            return pattern @ v, pattern
        return forward

    for block in model.blocks:
        for norm in (block.ln1, block.ln2):
            norm.forward = types.MethodType(lambda self, x, *a, f=norm_forward(norm): f(x), norm)
        block.mlp.forward = types.MethodType(lambda self, x, *a, f=mlp_forward(block.mlp): f(x), block.mlp)
        if ah_rule:
            block.attn.attend = attend(block.attn)
    model.ln_final.forward = types.MethodType(lambda self, x, *a, f=norm_forward(model.ln_final): f(x), model.ln_final)
    return model


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama"])  # LayerNorm + GELU, parallel, RMSNorm + SwiGLU
def test_relp_matches_autograd_through_a_forward_with_its_factors_detached_by_hand(family):
    model, clean, _, abl = _setup(family)
    got = attribute(model, clean, abl.clone(), _objective, relevance="lrp")
    eap = attribute(model, clean, abl.clone(), _objective)
    _, D = clean_outputs(model, clean, abl)
    want = reference_scores(_by_hand(model, ah_rule=False), clean, abl, _objective, D)
    assert _relative(got, want) <= 1e-6  # (the scores are accumulated in float32)
    assert _relative(eap, want) > 1e-3  # the rules change the scores: the comparison can fail


def test_relp_with_the_ah_rule_matches_the_slow_re_derivation():
    model, clean, _, abl = _setup("gpt2")  # learned positions: the hand-written attention needs no rotation
    got = attribute(model, clean, abl.clone(), _objective, relevance="lrp-ah")
    _, D = clean_outputs(model, clean, abl)
    want = reference_scores(_by_hand(model, ah_rule=True), clean, abl, _objective, D)
    assert _relative(got, want) <= 1e-6  # (the scores are accumulated in float32)


def test_relp_refuses_model_quirks_its_rules_do_not_cover():
    with pytest.raises(ConfigError, match="q/k norms.*use eap"):
        cf.score_edges(tiny_model("qwen3"), Copy(n=3), "relp")
