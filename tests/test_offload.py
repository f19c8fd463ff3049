"""The store off the device (store_on="cpu"|"disk"), the bf16 store with float32 sums, and layers placed over
devices by a device_map: the same scores as on the device, and what each moves."""

from __future__ import annotations

import json
import tempfile

import pytest
import torch

import circuitfind as cf
import circuitfind.engine.attribution as attribution
import circuitfind.engine.offload as offload
from circuitfind.engine.memory import Shape, Work, moved
from circuitfind.errors import ConfigError
from tests.conftest import tiny_hf
from tests.test_methods import Copy

METHODS = [("eap", {}), ("eap-ig", {"steps": 3}), ("exact", {"max_masks": 64}), ("eap-ig-node", {"steps": 2})]


_MODELS: dict = {}


def _tiny(family: str):
    """A tiny random model, made once (GPT-2: learned positions, layer norm; Llama: rotary, grouped-query attention)."""
    if family not in _MODELS:
        _MODELS[family] = cf.from_hf(tiny_hf(family)).double()
    return _MODELS[family]


CASES = [("gpt2", m, o, s) for m, o in METHODS for s in ("cpu", "disk")] + \
        [("llama", "eap-ig", {"steps": 3}, "disk"), ("llama", "exact", {"max_masks": 64}, "cpu")]


@pytest.mark.parametrize("family,method,options,store_on", CASES)
def test_the_store_off_the_device_gives_the_same_scores_bit_for_bit(family, method, options, store_on, monkeypatch):
    """eap, eap-ig and exact with the ablated-output store (D, for attribution) and per-example scores in CPU
    memory or a memory-mapped file: torch.equal to the store on the device, scores and per-example scores; D read
    several chunks of senders a call (a small STREAM_CHUNK_BYTES), and bytes really sent through the place."""
    tiny = _tiny(family)
    monkeypatch.setattr(attribution, "STREAM_CHUNK_BYTES", 3 * 5 * 7 * tiny.cfg.d_model * 8)  # 3 senders a chunk
    task = Copy(n=5)
    mapped = []
    real = offload.Place._mapped
    monkeypatch.setattr(offload.Place, "_mapped", lambda self, *a: mapped.append(a) or real(self, *a))
    want = cf.score_edges(tiny, task, method, per_example=True, batch_size=3, **options)
    got = cf.score_edges(tiny, task, method, per_example=True, batch_size=3, store_on=store_on, **options)
    assert torch.equal(want.scores, got.scores)
    assert torch.equal(want.per_example, got.per_example)
    store = got.config["store"]
    assert store["on"] == store_on and store["moved_bytes"] > 0 and store["written_bytes"] > 0
    assert bool(mapped) == (store_on == "disk")  # the disk store's tensors are memory-mapped files


def test_the_disk_store_leaves_no_file_behind(monkeypatch, tmp_path):
    """Its files live in a directory under TMPDIR while the call runs, gone when it returns."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folders = []
    real = offload.Place._mapped
    monkeypatch.setattr(offload.Place, "_mapped", lambda self, *a: (lambda t: folders.append(self._folder) or t)(
        real(self, *a)))
    model = cf.load_model("toy-lm")
    cf.score_edges(model, cf.load_task("ioi", n=4, seed=0), "eap", store_on="disk", per_example=True)
    assert folders and all(f.startswith(str(tmp_path)) for f in folders)
    assert not list(tmp_path.glob(".circuitfind-store-*"))


@pytest.mark.parametrize("method,steps", [("eap", 1), ("eap-ig", 5), ("clean-corrupted", 5)])
def test_bytes_sent_from_the_store_are_what_the_plan_counts(method, steps):
    """Place.moved (the bytes the walks and the backward read from a store off the device) equals the plan's
    `moved` (engine.memory), counted from the shape alone: machine-independent, exact."""
    model = cf.load_model("toy-lm")
    task = Copy(n=6)  # (no prefix shared by the clean and corrupted prompts: every position is stored)
    got = cf.score_edges(model, task, method, store_on="cpu", **({"steps": steps} if method == "eap-ig" else {}))
    shape = Shape.of(model.cfg, model.graph, 0, 0)
    p = task.batch(model).clean.tokens.shape[1]
    assert got.config["store"]["moved_bytes"] == moved(shape, Work(method, 6, 6, p, steps=steps, offload=True)) > 0


def test_a_bfloat16_store_follows_float32_with_float32_sums(monkeypatch):
    """store_dtype="bfloat16": the store holds half the bytes of float32's, every chunk of D reaches the product
    widened to float32 (with the gradient: a bfloat16 model too), and the scores follow float32's to bfloat16's
    rounding of the ablated outputs and D: Pearson ≥ 0.9999, max |Δ| ≤ 1% of the largest |score|."""
    model = cf.load_model("toy-lm")
    task = cf.load_task("ioi", n=8, seed=0)
    dtypes = []
    real = attribution._Scorer._read
    monkeypatch.setattr(attribution._Scorer, "_read",
                        lambda self, *a: (lambda out: dtypes.append(out.dtype) or out)(real(self, *a)))
    for method, options in (("eap", {}), ("eap-ig", {"steps": 3})):
        want = cf.score_edges(model, task, method, store_on="cpu", **options)
        got = cf.score_edges(model, task, method, store_on="cpu", store_dtype="bfloat16", **options)
        assert got.config["store"]["dtype"] == "bfloat16"
        assert got.config["store"]["written_bytes"] * 2 == want.config["store"]["written_bytes"]
        on = model.graph.edge_mask
        a, b = want.scores[on], got.scores[on]
        assert not torch.equal(a, b)  # the store really was rounded
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] >= 0.9999
        assert (a - b).abs().max() <= 0.01 * a.abs().max()
    narrow = cf.load_model("toy-lm", dtype="bfloat16")
    dtypes.clear()
    got = cf.score_edges(narrow, task, "eap", store_dtype="bfloat16")
    assert dtypes and set(dtypes) == {torch.float32} and got.scores.dtype == torch.float32


@pytest.mark.parametrize("call,message", [
    (dict(method="eap", store_on="gpu"), "store_on must be one of 'device', 'cpu', 'disk'"),
    (dict(method="eap", store_dtype="float16"), "store_dtype must be None"),
    (dict(method="acdc", store_on="cpu"), "store_on='cpu' is for the methods eap"),
    (dict(method="exact", store_dtype="bfloat16"), "store_dtype='bfloat16' is for the gradient methods"),
    (dict(method="eap", store_on="disk", positions="tokens"), "without positions="),
    (dict(method="eap-ig-activations", store_on="cpu"), "keeps its store on the device"),
])
def test_bad_store_options_are_refused_by_name_before_work(call, message, monkeypatch):
    import circuitfind.methods.common as common
    monkeypatch.setattr(common, "setups", lambda *a, **k: pytest.fail("work started"))
    model = cf.load_model("toy-lm")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cf.score_edges(model, cf.load_task("ioi", n=4, seed=0), **call)


def test_the_command_line_takes_the_store_options(tmp_path, capsys):
    from circuitfind.cli import main
    assert main(["discover", "--model", "toy-lm", "--task", "ioi", "--method", "eap", "-n", "8", "--no-report",
                 "--store-on", "disk", "--store-dtype", "bfloat16", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    provenance = json.loads((tmp_path / "run" / "result.json").read_text())["provenance"]
    assert provenance["store_on"] == "disk" and provenance["store_dtype"] == "bfloat16"
    assert main(["discover", "--model", "toy-lm", "--task", "ioi", "--method", "eap", "-n", "8",
                 "--store-on", "gpu"]) != 0
    assert "store_on must be one of" in capsys.readouterr().err


def test_the_plan_moves_the_store_off_the_device_and_fit_uses_it():
    """The plan with store_on="cpu": the ablated outputs (the store) leave the device's total for `off_device`,
    a layer's columns and a chunk of D staged in their place; a budget between the two totals fits only with
    the store off the device, and `fit` then takes a larger batch."""
    from circuitfind.plan import fit
    from tests.conftest import tiny_config
    config = tiny_config("gpt2", n_layer=4, n_head=4, n_embd=256)
    size = {"positions": 128, "examples": 64}
    on = cf.plan(config, None, "eap", **size)
    off = cf.plan(config, None, "eap", **size, store_on="cpu")
    store = on.parts["ablated outputs"]  # senders (1 + 4 layers × 5) × examples × positions × d_model × 4 bytes
    assert store == 21 * 64 * 128 * 256 * 4 and off.parts["ablated outputs"] == 0 and off.off_device == store
    staged = offload.STREAM_CHUNK_BYTES  # (a chunk of D on the device, in place of the 176 MiB store)
    assert on.total - off.total == store - staged and off.moved > 0 and "store on cpu" in str(off)
    budget = (on.total + off.total) // 2 / 0.9
    assert fit(config, None, "eap", int(budget), **size, store_on="cpu").batch_size == 64
    assert fit(config, None, "eap", int(budget), **size).batch_size < 64
    bf16 = cf.plan(config, None, "eap", **size, store_dtype="bfloat16")
    assert bf16.parts["ablated outputs"] * 2 == store


# ---------------------------------------------------------------------- layers over devices


def _every_layer_on_cpu(model):
    return {"embed": "cpu", **{f"blocks.{l}": "cpu" for l in range(model.cfg.n_layers)}, "unembed": "cpu"}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_device_map_runs_the_moving_code_and_gives_the_same_scores(family, monkeypatch):
    """Every layer placed on "cpu" by a device map: the walks and the plain forward go through the code that
    moves the residual stream at each layer boundary (`move` is called for every layer), and eap, eap-ig and
    exact give the same scores bit for bit as the unplaced model."""
    import circuitfind.engine.walk as walk
    import circuitfind.engine.walk_devices as walk_devices
    import circuitfind.models.canonical as canonical
    hf = tiny_hf(family)
    plain = cf.from_hf(hf).double()
    placed = cf.from_hf(hf).double().place(_every_layer_on_cpu(plain))
    calls = []
    for module in (walk, walk_devices, canonical):
        real = module.move
        monkeypatch.setattr(module, "move", lambda t, d, real=real: calls.append(d) or real(t, d))
    task = Copy(n=4)
    for method, options in METHODS[:3] if family == "gpt2" else METHODS[1:2]:
        calls.clear()
        assert torch.equal(cf.score_edges(plain, task, method, **options).scores,
                           cf.score_edges(placed, task, method, **options).scores)
        assert len(calls) >= placed.cfg.n_layers and all(d == torch.device("cpu") for d in calls)
    tokens = task.batch(plain).clean.tokens
    assert torch.equal(plain(tokens), placed(tokens))


def test_device_maps_name_modules_as_transformers_does_and_bad_ones_are_refused():
    from circuitfind.models.placement import resolve_device_map
    hf_names = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.h.0": "cpu", "transformer.h.1": 0,
                "transformer.ln_f": 0, "lm_head": 0}
    embed, layers = resolve_device_map(hf_names, 2)
    assert embed == torch.device("cpu") and layers == [torch.device("cpu"), torch.device("cuda:0"),
                                                       torch.device("cuda:0")]
    assert resolve_device_map({"": "cpu"}, 3)[1] == [torch.device("cpu")] * 4
    if not torch.cuda.is_available():
        assert resolve_device_map("auto", 2)[1] == [torch.device("cpu")] * 3
    with pytest.raises(ConfigError, match="places no device for layer 1"):
        resolve_device_map({"model.embed_tokens": 0, "model.layers.0": 0, "lm_head": 0}, 2)
    with pytest.raises(ConfigError, match="'model.rotary' is not a module"):
        resolve_device_map({"model.rotary": 0}, 2)
    with pytest.raises(ConfigError, match="give device='cuda' or device_map="):
        cf.load_model("toy-lm", device="cuda", device_map="auto")


def test_a_sweep_gives_its_store_options_to_the_jobs_that_take_them(tmp_path):
    from circuitfind.sweep.jobs import Settings
    settings = Settings(tmp_path, store_on="disk", store_dtype="bfloat16")
    assert settings.store_of("eap-ig") == {"store_on": "disk", "store_dtype": "bfloat16"}
    assert settings.store_of("exact") == {"store_on": "disk"}  # (no store dtype: its sums are the model's dtype)
    assert settings.store_of("acdc") == {}
    assert Settings(tmp_path).store_of("eap") == {}
