"""Tokenizer helpers: BOS as the family does, padding, strings back."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from tests.test_tasks import _word_model


@pytest.fixture(scope="module")
def model():
    return _word_model()  # GPT-2 family: circuitfind prepends BOS, as TransformerLens does


def test_to_tokens_prepends_bos_once(model):
    bos = model.tokenizer.bos_token_id
    tokens = model.to_tokens("Mary and John")
    assert tokens.shape == (1, 4) and tokens[0, 0] == bos
    assert model.to_tokens("Mary and John", prepend_bos=False).shape == (1, 3)
    assert (model.to_tokens(["Mary", "Mary and John"]) == model.pad_token_id).sum() == 2  # right padding


def test_attention_mask_and_left_padding(model):
    tokens, mask = model.to_tokens(["Mary", "Mary and John"], padding_side="left", return_attention_mask=True)
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert torch.equal(tokens[0, 2:], model.to_tokens("Mary")[0])


def test_strings_back(model):
    assert model.to_str_tokens("Mary and John") == ["[BOS]", "Mary", "and", "John"]
    tokens = model.to_tokens("Mary and John", prepend_bos=False)
    assert model.to_string(tokens[0]) == "Mary and John"
    assert model.to_string(tokens) == ["Mary and John"]


def test_text_needs_a_tokenizer():
    from tests.conftest import tiny_hf
    bare = cf.from_hf(tiny_hf("gpt2"))
    with pytest.raises(cf.ConfigError, match="no tokenizer"):
        bare.to_tokens("hello")
    with pytest.raises(cf.ConfigError, match="integer tensor"):
        bare(torch.zeros(1, 3))
