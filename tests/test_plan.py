"""The memory planner (`cf.plan`, `engine.memory`) and what discover, sweep and the command line do with it.

The planner's terms are checked against what the engine allocates on tiny models: the parameters against the
loaded model's storages, the ablated outputs against `ablated_outputs`, the gradients term against the bytes
autograd keeps (saved-tensor hooks). Its peaks against measured ones, on full-size shapes, are in
benchmarks/plan.py (not a test: minutes, and resident memory is the machine's)."""

from __future__ import annotations

import sys

import pytest
import torch
import transformers

import circuitfind as cf
from circuitfind.cli import main
from circuitfind.engine.ablation import ablated_outputs
from circuitfind.engine.attribution import attribute
from circuitfind.engine.memory import saved_per_token
from circuitfind.plan import HEADROOM, fit, shape_of
from circuitfind.arguments import parse_memory
from circuitfind.types import Inputs

from .conftest import tiny_config


def _storage_bytes(model) -> int:
    seen = {}
    for t in model.parameters():
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def _pair(b: int, p: int):
    g = torch.Generator().manual_seed(3)
    clean, corrupt = (torch.randint(3, 90, (b, p), generator=g) for _ in range(2))
    return Inputs.of(clean, torch.ones_like(clean)), Inputs.of(corrupt, torch.ones_like(corrupt))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_plan_counts_the_loaded_models_parameters_from_the_config_alone(family):
    config = tiny_config(family, tie_word_embeddings=family == "llama")
    planned = cf.plan(config, None, "eap", positions=8, examples=2)
    model = cf.from_hf(transformers.AutoModelForCausalLM.from_config(config))
    assert planned.parts["parameters"] == _storage_bytes(model)
    assert cf.plan(model, None, "eap", positions=8, examples=2).parts == planned.parts


def test_plan_ablated_outputs_are_what_ablated_outputs_holds():
    model = cf.from_hf(transformers.AutoModelForCausalLM.from_config(tiny_config("gpt2")))
    clean, corrupt = _pair(3, 7)
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    planned = cf.plan(model, None, "eap", positions=7, examples=3)
    assert planned.parts["ablated outputs"] == abl.numel() * abl.element_size()
    assert cf.plan(model, None, "curve", positions=7, examples=3).parts["store"] == abl.numel() * 4


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "gpt_neox"])
def test_the_gradients_term_is_what_autograd_keeps(family):
    """Every tensor autograd saves in attribution's pass (not the weights, not the ablated outputs D is written
    over) against the planner's per-layer count."""
    model = cf.from_hf(transformers.AutoModelForCausalLM.from_config(tiny_config(family)))
    b, p = 3, 16
    clean, corrupt = _pair(b, p)
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    skip = {t.untyped_storage().data_ptr() for t in model.parameters()} | {abl.untyped_storage().data_ptr()}
    saved = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            saved[st.data_ptr()] = st.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        attribute(model, clean, abl, lambda logits: logits[:, 0].mean())
    shape = shape_of(model)[0]
    planned = (shape.n_layers * saved_per_token(shape) + shape.d_model) * b * p * 4
    assert 0.85 < planned / sum(saved.values()) < 1.15


def test_plan_grows_with_the_batch_and_says_its_parts():
    config = tiny_config("llama")
    small, large = (cf.plan(config, None, "eap-ig", b, positions=12, examples=8) for b in (2, 8))
    assert large.total > small.total and large.parts["parameters"] == small.parts["parameters"]
    assert large.parts["ablated outputs"] == 4 * small.parts["ablated outputs"]
    assert large.forwards == pytest.approx(small.forwards, rel=0.05)  # the same work, cut differently
    text = str(large)
    for part in ("parameters", "ablated outputs", "gradients", "method buffers", "plain forwards"):
        assert part in text


def test_fit_takes_the_largest_batch_that_fits_and_refuses_with_the_plan():
    config = tiny_config("gpt2")
    at = {b: cf.plan(config, None, "eap", b, positions=10, examples=12) for b in (1, 5, 6)}
    budget = int((at[5].total + at[6].total) / 2 / HEADROOM)
    best = fit(config, None, "eap", budget, positions=10, examples=12)
    assert best.batch_size == 5 and best.fits(budget) and not at[6].fits(budget)
    with pytest.raises(cf.MemoryPlanError, match="needs about") as e:
        fit(config, None, "eap", at[1].total // 2, positions=10, examples=12)
    assert "plan: eap" in str(e.value) and "batch 1" in str(e.value)


def test_memory_sizes_parse_and_bad_ones_say_what_is_expected():
    assert parse_memory("20GiB") == 20 * 2**30 and parse_memory("512 MB") == 512 * 10**6
    assert parse_memory("1.5g") == int(1.5 * 2**30) and parse_memory(1024) == 1024
    for bad in ("lots", "-1GB", "0", "3 parsecs", True):
        with pytest.raises(cf.ConfigError, match="20GiB"):
            parse_memory(bad)


def test_a_text_task_without_a_tokenizer_asks_for_positions():
    with pytest.raises(cf.ConfigError, match="positions="):
        cf.plan(tiny_config("gpt2"), "ioi", "eap")


def test_discover_fits_its_batch_to_max_memory_and_refuses_before_work(monkeypatch):
    model = cf.load_model("toy-lm")
    task = cf.load_task("ioi", n=16, seed=0)
    best = fit(model, task, "eap", "24MiB")
    assert best.batch_size < 16
    run = cf.discover(model, task, "eap", report=False, quiet=True, max_memory="24MiB")
    chosen = run.scores.config["batch_size"]
    curve_fit = fit(model, task, "curve", "24MiB")
    assert chosen == min(best.batch_size, curve_fit.batch_size if curve_fit.batch_size < curve_fit.examples else 99)
    whole = cf.score_edges(model, task, "eap")  # the batches' weighted mean is the whole task's
    assert torch.allclose(run.scores.scores, whole.scores, atol=1e-5)

    def no_work(*args, **kwargs):
        raise AssertionError("scored although the plan does not fit")
    monkeypatch.setattr(sys.modules["circuitfind.discover"], "score_edges", no_work)  # (cf.discover: the function)
    with pytest.raises(cf.MemoryPlanError, match="even at one example"):
        cf.discover(model, task, "eap", report=False, quiet=True, max_memory="1MiB")
    with pytest.raises(cf.MemoryPlanError, match="batch_size=16 does not fit"):
        cf.discover(model, task, "eap", report=False, quiet=True, max_memory="24MiB", batch_size=16)


def test_the_command_line_plans_and_refuses_before_loading(monkeypatch, capsys):
    assert main(["plan", "--model", "toy-lm", "--task", "ioi", "--method", "eap-ig", "-n", "16",
                 "--max-memory", "40MiB"]) == 0
    out = capsys.readouterr().out
    assert "plan: eap-ig on toy-lm" in out and "fits 40MiB at batch_size=" in out

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded a model whose plan does not fit")
    monkeypatch.setattr("circuitfind.models.loading.load_model", no_loading)
    assert main(["discover", "--model", "toy-lm", "--task", "ioi", "--method", "eap", "-n", "16",
                 "--max-memory", "1MiB", "--no-report", "--quiet"]) == 2
    assert "MemoryPlanError" in capsys.readouterr().err


def test_a_sweep_fails_jobs_that_fit_nowhere_without_loading_their_model(tmp_path, monkeypatch):
    jobs = sys.modules["circuitfind.sweep.jobs"]  # (cf.sweep: the function)

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded a model whose jobs all do not fit")
    monkeypatch.setattr(jobs, "load_for", no_loading)
    df = cf.sweep(["toy-lm"], ["ioi"], ["eap", "eap-ig"], store=tmp_path / "s.sqlite", n=8, max_memory="1MiB",
                  quiet=True)
    assert list(df.status) == ["failed", "failed"]
    assert all("MemoryPlanError" in e for e in df.error)
