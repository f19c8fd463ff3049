"""Every hub entry of the zoo, proven without a download: its published config gives the graph the
entry lists, and a scaled-down random model of the same shape (same family, head counts, GQA ratio,
RoPE scaling, soft-capping, sliding window...) converts with logits matching Hugging Face."""

from __future__ import annotations

import pytest
import torch
import transformers

import circuitfind as cf
from circuitfind.graph import Graph
from circuitfind.models.zoo import ZOO
from tests.conftest import _jitter

HUB = [e for e in ZOO.values() if e.source == "hub"]


def scaled_down(entry):
    """The entry's config with 2 layers, head_dim 8, a small vocabulary and context — quirks kept."""
    c = dict(entry.config)
    heads = c.get("n_head") or c.get("num_attention_heads") or c.get("num_heads") or c.get("n_heads")
    if c["model_type"] == "mpt":
        c |= {"n_layers": 2, "d_model": 8 * heads, "max_seq_len": 64}
    elif c["model_type"] in ("gpt2", "gptj", "gpt_bigcode"):
        c |= {"n_layer": 2, "n_embd": 8 * heads, "n_positions": 64}
        if "rotary_dim" in c:
            c["rotary_dim"] = 4  # of a head of 8: partial, as in the entry
    else:
        c |= {"num_hidden_layers": 2, "hidden_size": 8 * heads, "intermediate_size": 48,
              "max_position_embeddings": 64}
        if "head_dim" in c:
            c["head_dim"] = 8
        if "sliding_window" in c:
            c["sliding_window"] = 4
        if "sliding_window_pattern" in c:  # a sliding layer, then a global one
            c["sliding_window_pattern"] = 2
        if "query_pre_attn_scalar" in c:
            c["query_pre_attn_scalar"] = 8
        if "rope_scaling" in c:
            c["rope_scaling"] = c["rope_scaling"] | {"original_max_position_embeddings": 16}
        for key in ("ffn_dim", "moe_intermediate_size", "shared_expert_intermediate_size"):
            if key in c:
                c[key] = 24
        if "word_embed_proj_dim" in c:  # (OPT's, equal to the width where there is no projection)
            c["word_embed_proj_dim"] = c["hidden_size"]
        if "num_layers" in c:  # GPT-Neo: a global layer, then a local one with a short window
            c |= {"num_layers": 2, "attention_types": [[["global", "local"], 1]], "window_size": 4}
        if "partial_rotary_factor" in c:  # a whole, even number of rotary features of a head of 8
            c["partial_rotary_factor"] = 0.5
        for key in ("num_experts", "num_local_experts"):  # 8 experts at most, half of them routed to at most
            if key in c:
                c |= {key: min(c[key], 8), "num_experts_per_tok": min(c["num_experts_per_tok"], 4)}
        if "no_rope_layer_interval" in c:  # a layer with rotary, then one without
            c["no_rope_layer_interval"] = 2
    c |= {"vocab_size": 97, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    return transformers.AutoConfig.for_model(**c)


@pytest.mark.parametrize("entry", HUB, ids=[e.name for e in HUB])
def test_published_config_gives_the_listed_graph(entry):
    graph = Graph.from_config(entry.hf_config())
    assert (graph.n_layers, graph.n_heads, graph.parallel) == (entry.layers, entry.heads, entry.parallel)
    assert graph.n_edges == entry.n_edges


def test_known_edge_counts():
    assert Graph.from_config(ZOO["gpt2"].hf_config()).n_edges == 32491
    assert Graph.from_config(ZOO["Qwen2.5-0.5B"].hf_config()).n_edges == 179749


@pytest.mark.parametrize("entry", HUB, ids=[e.name for e in HUB])
def test_scaled_down_model_converts_exactly(entry):
    torch.manual_seed(0)
    cfg = scaled_down(entry)
    hf = _jitter(transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")).eval()
    model = cf.from_hf(hf, name=entry.name)
    assert model.graph.n_heads == entry.heads and model.graph.n_layers == 2
    tokens = torch.randint(3, 97, (2, 12))
    with torch.no_grad():
        expected = hf(input_ids=tokens).logits
        got = model(tokens)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("entry", HUB, ids=[e.name for e in HUB])
def test_uncached_hub_entry_says_how_to_fetch_it(entry, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(cf.ModelNotFoundError, match="download"):
        cf.load_model(entry.name)


def test_shipped_models_load_without_a_progress_bar(capfd):
    """A megabyte from the package: no 'Loading weights' bar in the output (the setting is restored)."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()  # on, as for a user; restored below whatever the environment set
    try:
        capfd.readouterr()
        cf.load_model("toy-lm")
        assert "Loading" not in capfd.readouterr().err
        assert hf_logging.is_progress_bar_enabled()
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()
