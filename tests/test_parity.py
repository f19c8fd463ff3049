"""The canonical forward reproduces Hugging Face logits for every supported family."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from tests.conftest import VOCAB, tiny_hf

TOL = 1e-4


def _hf_logits(hf, tokens, mask):
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return hf(input_ids=tokens, attention_mask=mask, position_ids=positions).logits


def _padded_batch(lengths, side):
    g = torch.Generator().manual_seed(3)
    rows = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]
    from circuitfind.models.canonical import pad_token_ids
    return rows, *pad_token_ids(rows, 0, side, return_attention_mask=True)


@pytest.mark.parametrize("side", ["right", "left"])
def test_canonical_logits_match_hugging_face(family, side):
    hf = tiny_hf(family)
    model = cf.from_hf(hf)
    rows, tokens, mask = _padded_batch([11, 7, 3], side)
    expected = _hf_logits(hf, tokens, mask)
    got = model(tokens, mask)
    real = mask.bool()
    diff = (got[real] - expected[real]).abs().max().item()
    print(f"{family} {side}-padded max|Δlogits| = {diff:.2e}")  # (shown with pytest -s)
    assert diff <= TOL


def test_padded_prompt_equals_prompt_alone(family):
    model = cf.from_hf(tiny_hf(family))
    rows, tokens, mask = _padded_batch([12, 5], "left")
    alone = model(torch.tensor([rows[1]]))
    padded = model(tokens, mask)[1, -5:]
    assert (alone[0] - padded).abs().max().item() <= TOL
    rows, tokens, mask = _padded_batch([12, 5], "right")
    assert (alone[0] - model(tokens, mask)[1, :5]).abs().max().item() <= TOL


def test_sliding_window_changes_the_result():
    """A parity test that cannot fail on short windows would prove nothing: check the window bites."""
    hf = tiny_hf("mistral")
    model = cf.from_hf(hf)
    tokens = torch.randint(3, VOCAB, (1, 12))
    hf.config.sliding_window = None
    wide = cf.from_hf(hf)
    assert (model(tokens)[0, -1] - wide(tokens)[0, -1]).abs().max() > 1e-3


def test_dtype_round_trip():
    model = cf.from_hf(tiny_hf("llama"), dtype="bfloat16")
    assert model.W_E.dtype == torch.bfloat16
    assert model(torch.randint(3, VOCAB, (2, 6))).dtype == torch.bfloat16


@pytest.mark.parametrize("family", ["gpt2", "gemma2"])
def test_logits_at_one_position_per_prompt(family):
    """forward(..., at=pos) unembeds only those rows: the same logits as the full forward there."""
    model = cf.from_hf(tiny_hf(family))
    tokens = torch.randint(3, VOCAB, (3, 8))
    mask = torch.ones_like(tokens)
    mask[1, :3] = 0
    at = torch.tensor([7, 5, 2])
    assert torch.allclose(model(tokens, mask, at=at), model(tokens, mask)[torch.arange(3), at], atol=1e-6)
    for bad in (torch.tensor([7, 5]), torch.tensor([8, 5, 2]), torch.tensor([-1, 5, 2])):
        with pytest.raises(cf.ConfigError, match="one position per prompt"):
            model(tokens, mask, at=bad)


def test_gelu_tanh_equals_torchs_kernel():
    """The sigmoid form of GPT-2's gelu_new (CPU, no gradients) against torch's tanh kernel in float64,
    over the range where the tails saturate; with gradients it is torch's kernel itself."""
    import torch.nn.functional as F

    from circuitfind.models.layers import gelu_tanh
    x = torch.linspace(-30, 30, 20001, dtype=torch.float64)
    reference = F.gelu(x, approximate="tanh")
    assert torch.allclose(gelu_tanh(x), reference, rtol=1e-12, atol=1e-12)
    assert torch.allclose(gelu_tanh(x.float()).double(), reference, rtol=1e-6, atol=1e-6)
    leaf = x.clone().requires_grad_()
    gelu_tanh(leaf).sum().backward()
    expected = x.clone().requires_grad_()
    F.gelu(expected, approximate="tanh").sum().backward()
    assert torch.equal(leaf.grad, expected.grad)
