"""Loading: local directories, state dicts, safety, and clear errors for bad input."""

from __future__ import annotations

import pickle

import pytest
import torch

import circuitfind as cf
from tests.conftest import VOCAB, tiny_config, tiny_hf


def test_local_directory_round_trip(tmp_path):
    hf = tiny_hf("qwen2")
    hf.save_pretrained(tmp_path / "ckpt")
    model = cf.load_model(str(tmp_path / "ckpt"))
    tokens = torch.randint(3, VOCAB, (2, 5))
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max() < 1e-4


def test_state_dict_with_config(tmp_path):
    hf = tiny_hf("gpt2")
    tokens = torch.randint(3, VOCAB, (2, 5))
    for sd in (hf.state_dict(), tmp_path / "w.pt"):
        if not isinstance(sd, dict):
            torch.save(hf.state_dict(), sd)
        model = cf.load_model(state_dict=sd, config=hf.config)
        with torch.no_grad():
            assert (model(tokens) - hf(tokens).logits).abs().max() < 1e-4


class _Evil:
    def __reduce__(self):
        return (exec, ("open('/tmp/circuitfind-pwned', 'w').write('x')",))


def test_malicious_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"transformer.wte.weight": _Evil()}))
    with pytest.raises(cf.ModelLoadError, match="refused"):
        cf.load_model(state_dict=path, config=tiny_config("gpt2"))
    assert not __import__("os").path.exists("/tmp/circuitfind-pwned")


def test_state_dict_shape_mismatch_names_the_tensor():
    sd = tiny_hf("gpt2").state_dict()
    sd["transformer.h.1.mlp.c_fc.weight"] = torch.zeros(3, 3)
    with pytest.raises(cf.ModelLoadError, match="transformer.h.1.mlp.c_fc.weight"):
        cf.load_model(state_dict=sd, config=tiny_config("gpt2"))


@pytest.mark.parametrize("bad, error, match", [
    ("/no/such/dir", cf.ModelNotFoundError, "does not exist"),
    ("not a model name!", cf.ModelNotFoundError, "neither a zoo name"),
])
def test_bad_names(bad, error, match):
    with pytest.raises(error, match=match):
        cf.load_model(bad)


def test_directory_without_config(tmp_path):
    with pytest.raises(cf.ModelNotFoundError, match="no config.json"):
        cf.load_model(str(tmp_path))


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(cf.UnsupportedModelError, match="supported: gpt2"):
        cf.load_model(str(tmp_path))


def test_unsupported_architecture_names_the_closest_form_and_what_it_needs(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "deepseek_v3"}')
    with pytest.raises(cf.UnsupportedModelError, match="closest supported form is 'qwen2_moe'.*latent attention"):
        cf.load_model(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "gpt_neox_japanese"}')
    with pytest.raises(cf.UnsupportedModelError, match="closest supported name is 'gpt_neox'"):
        cf.load_model(str(tmp_path))


def test_unhandled_config_option_is_named():
    with pytest.raises(cf.UnsupportedModelError, match="scale_attn_by_inverse_layer_idx"):
        cf.from_hf(tiny_hf("gpt2", scale_attn_by_inverse_layer_idx=True))


@pytest.mark.parametrize("kw, match", [({"dtype": "float13"}, "dtype"), ({"device": "cuda:7"}, "device"),
                                       ({"device": "warp-drive"}, "device")])
def test_bad_dtype_or_device(kw, match):
    with pytest.raises(cf.ConfigError, match=match):
        cf.load_model("gpt2", **kw)


def test_offline_hub_id_says_how_to_fetch():
    # conftest sets HF_HUB_OFFLINE=1 before huggingface_hub is imported
    with pytest.raises(cf.ModelNotFoundError, match="huggingface-cli download"):
        cf.load_model("circuitfind-test/definitely-not-cached")
    with pytest.raises(cf.ModelNotFoundError, match="Did you mean the zoo model 'toy-lm'"):
        cf.load_model("toy_lm")  # a typo reads as a hub id; the error names the zoo model


def test_loaded_hf_model_and_its_tokenizer_pass_through():
    hf = tiny_hf("gpt_neox")
    model = cf.load_model(hf_model=hf)
    tokens = torch.randint(3, VOCAB, (2, 5))
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max() < 1e-4
    with pytest.raises(cf.ConfigError, match="exactly one"):
        cf.load_model("gpt2", hf_model=hf)


def test_a_checkpoint_saved_without_its_tokenizer_takes_one_by_name(tmp_path, capsys):
    """Fine-tuned weights are often saved alone: tokenizer= (--tokenizer) names the base model's tokenizer.
    A directory that is not there is refused, and so are token ids past the embedding (another model's
    tokenizer), before they index past it."""
    import transformers

    from circuitfind.cli import main
    from tests.test_tasks import _word_model

    tokenizer = _word_model().tokenizer
    tokenizer.save_pretrained(tmp_path / "tok")
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=len(tokenizer), n_positions=64,
                                     bos_token_id=1, eos_token_id=1, pad_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "ckpt")  # no tokenizer files
    with pytest.raises(cf.ConfigError, match="tokenizer=DIR_OR_HUB_ID"):
        cf.load_model(str(tmp_path / "ckpt")).to_tokens("When Mary")
    model = cf.load_model(str(tmp_path / "ckpt"), tokenizer=str(tmp_path / "tok"))
    assert model.to_tokens("When Mary")[0, -2:].tolist() == tokenizer.convert_tokens_to_ids(["When", "Mary"])
    assert main(["inspect", "lens", "--model", str(tmp_path / "ckpt"), "--tokenizer", str(tmp_path / "tok"),
                 "--prompt", "When Mary", "--node", "a0.h1", "-k", "1"]) == 0
    assert "Mary" in capsys.readouterr().out
    small = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=10, n_positions=64)
    transformers.GPT2LMHeadModel(small).save_pretrained(tmp_path / "small")
    small = cf.load_model(str(tmp_path / "small"), tokenizer=str(tmp_path / "tok"))  # another model's tokenizer
    with pytest.raises(cf.ConfigError, match="past '.*small'.s embedding of 10 tokens: is the tokenizer"):
        small(small.to_tokens("When Mary"))
    with pytest.raises(cf.ConfigError, match="past .* embedding"):
        cf.score_edges(small, cf.load_task("ioi", n=4), "eap")
    with pytest.raises(cf.ModelNotFoundError, match="does not exist"):
        cf.load_model(str(tmp_path / "ckpt"), tokenizer=str(tmp_path / "nope"))


def test_rotary_that_changes_with_length_is_refused():
    """Dynamic (and long-) RoPE rescale with the sequence length: no fixed canonical frequencies."""
    hf = tiny_hf("llama", rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    with pytest.raises(cf.UnsupportedModelError, match="rope_type='dynamic'"):
        cf.from_hf(hf)
