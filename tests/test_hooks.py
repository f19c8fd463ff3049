"""Hook points: cached values are what the forward computed; hooks can read and replace."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from tests.conftest import VOCAB, tiny_hf


@pytest.fixture
def model(family):
    return cf.from_hf(tiny_hf(family))


def test_cache_matches_forward(model):
    tokens = torch.randint(3, VOCAB, (2, 6))
    logits, cache = model.run_with_cache(tokens)
    assert torch.allclose(logits, model(tokens), atol=1e-5)  # pattern hooks use explicit softmax, not SDPA
    L = model.cfg.n_layers - 1
    # the last residual, normalised and unembedded, is the logits
    assert torch.allclose(model.unembed(cache[f"blocks.{L}.hook_resid_post"]), logits, atol=1e-5)
    # the residual stream is the sum of what the blocks wrote
    for l in range(model.cfg.n_layers):
        resid = cache[f"blocks.{l}.hook_resid_pre"] + cache[f"blocks.{l}.hook_attn_out"] + cache[f"blocks.{l}.hook_mlp_out"]
        assert torch.allclose(resid, cache[f"blocks.{l}.hook_resid_post"], atol=1e-5)
    # per-head results sum to the attention output (post-norm models: before the norm)
    attn = model.blocks[0].attn
    result = cache["blocks.0.attn.hook_result"].sum(-2)
    if attn.post_norm is None:
        out = result + (attn.b_o if attn.b_o is not None else 0)
        assert torch.allclose(out, cache["blocks.0.hook_attn_out"], atol=1e-5)
    pattern = cache["blocks.0.attn.hook_pattern"]
    if attn.sinks is None:
        assert torch.allclose(pattern.sum(-1), torch.ones_like(pattern.sum(-1)), atol=1e-5)
    else:  # (gpt-oss) each row's sink column, left out of the pattern, takes some of the mass
        assert bool((pattern.sum(-1) < 1).all()) and bool((pattern.sum(-1) > 0).all())


def test_identity_hook_changes_nothing(model):
    tokens = torch.randint(3, VOCAB, (2, 6))
    names = model.hook_names()
    with model.hooks([(n, lambda x, name: x) for n in names]):
        hooked = model(tokens)
    assert torch.allclose(hooked, model(tokens), atol=1e-6)


def test_zeroing_a_head_equals_zeroing_its_output_weights(model):
    tokens = torch.randint(3, VOCAB, (2, 6))
    head = 1

    def zero_head(z, name):
        z = z.clone()
        z[:, :, head] = 0
        return z

    with model.hooks({"blocks.1.attn.hook_z": zero_head}):
        hooked = model(tokens)
    w_o = model.blocks[1].attn.w_o
    saved = w_o.clone()
    d_head = model.cfg.d_head
    w_o.data[head * d_head:(head + 1) * d_head] = 0
    edited = model(tokens)
    w_o.data.copy_(saved)
    assert torch.allclose(hooked, edited, atol=1e-6)
    assert not torch.allclose(hooked, model(tokens), atol=1e-4)


def test_unknown_hook_name_raises(model):
    with pytest.raises(cf.ConfigError, match="unknown hook point"):
        with model.hooks({"blocks.0.hook_nope": lambda x, n: x}):
            pass
