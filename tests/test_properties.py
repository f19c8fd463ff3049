"""Property tests (hypothesis, a fixed seed and a bounded number of examples): any task definition is
either made into a batch or refused with one line naming a circuitfind error; any damage to a saved file
is either read as it was or refused naming the file, and the file is never written over."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import circuitfind as cf

SETTINGS = settings(max_examples=25, derandomize=True, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def model():
    return cf.load_model("toy-induction")  # vocabulary 64, 23 edges


@pytest.fixture(scope="module")
def run_dir(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("props") / "run"
    cf.discover(model, "induction", method="eap-ig", n=8, edges=4, out=out, quiet=True, report=False)
    from circuitfind.interop import save_eap_ig
    from circuitfind.report.data import collect

    (out / "inspect.json").write_text(json.dumps(collect(model, cf.load_task("induction", n=2, split="test"))))
    save_eap_ig(out / "eap-ig.json", cf.EdgeScores.load(out), cf.Circuit.load(out))
    return out


# ---------------------------------------------------------------- task definitions
token = st.integers(min_value=-3, max_value=70)  # some outside the vocabulary of 64
prompt = st.lists(token, min_size=0, max_size=5)
answer = st.one_of(token, st.lists(token, min_size=0, max_size=3), st.text(max_size=3))


@st.composite
def task_classes(draw):
    """A Task whose examples are drawn from a small pool of arbitrary (often invalid) ones."""
    pool = draw(st.lists(st.tuples(prompt, prompt, answer, answer), min_size=1, max_size=4))
    attrs = {"name": "drawn", "metric": draw(st.sampled_from(["logit-diff", "prob-diff", "kl", "ce", "nope"])),
             "aligned": draw(st.booleans()),
             "example": lambda self, rng, words: cf.Example(*rng.choice(pool))}
    return type("Drawn", (cf.Task,), attrs), draw(st.integers(min_value=-1, max_value=6))


@SETTINGS
@given(task_classes())
def test_any_task_is_batched_or_refused_in_one_line(model, drawn):
    cls, n = drawn
    try:
        task = cls(n=n)
        batch = task.batch(model)
        task.check_metric(model, batch)
    except cf.CircuitfindError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert batch.size == n and len(batch.examples) == n


# ---------------------------------------------------------------- file readers
def _digest(d: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir() if p.is_file()}


json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 300) | st.floats(allow_nan=True) | st.text(max_size=4),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                         max_size=3), max_leaves=6)


@st.composite
def damage(draw, size: int):
    """Bytes → damaged bytes: cut short, a byte changed, or (JSON) a field replaced."""
    kind = draw(st.sampled_from(["truncate", "flip", "field"]))
    at = draw(st.integers(0, max(0, size - 1)))
    return kind, at, draw(st.integers(0, 255)), draw(json_values), draw(st.integers(0, 20))


def _apply(path: Path, how) -> None:
    kind, at, byte, value, which = how
    data = path.read_bytes()
    if kind == "truncate":
        path.write_bytes(data[:at])
    elif kind == "flip":
        path.write_bytes(data[:at] + bytes([byte]) + data[at + 1:])
    else:
        try:
            obj = json.loads(data)
        except ValueError:
            path.write_bytes(data[:at])
            return
        keys = list(obj) if isinstance(obj, dict) else []
        if keys:
            obj[keys[which % len(keys)]] = value
        path.write_text(json.dumps(obj))


READERS = {
    "scores.json": lambda d: cf.EdgeScores.load(d),
    "scores.safetensors": lambda d: cf.EdgeScores.load(d),
    "circuit.json": lambda d: cf.Circuit.load(d),
    "result.json": lambda d: __import__("circuitfind.report", fromlist=["read_run"]).read_run(d),
    "inspect.json": lambda d: __import__("circuitfind.report", fromlist=["read_run"]).read_run(d),
    "eap-ig.json": lambda d: __import__("circuitfind.interop", fromlist=["from_eap_ig"]).from_eap_ig(d / "eap-ig.json"),
}


@pytest.mark.parametrize("name", list(READERS))
def test_any_damage_is_read_whole_or_named(name, run_dir, tmp_path_factory):
    size = (run_dir / name).stat().st_size
    work = tmp_path_factory.mktemp(f"damaged-{name}")

    @SETTINGS
    @given(damage(size))
    def check(how):
        d = work / "run"
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(run_dir, d)
        _apply(d / name, how)
        before = _digest(d)
        try:
            READERS[name](d)
        except cf.ConfigError as e:
            assert name in str(e) or str(d) in str(e), str(e)
            assert "\n" not in str(e)
        assert _digest(d) == before  # never written over
    check()


@SETTINGS
@given(st.binary(max_size=300), st.integers(0, 4096))
def test_any_damaged_sweep_store_is_refused_or_read(tmp_path_factory, junk, at):
    from circuitfind.sweep import load_sweep
    from circuitfind.sweep.store import Store

    d = tmp_path_factory.mktemp("store")
    store = d / "s.sqlite"
    Store(store).close()
    data = store.read_bytes()
    store.write_bytes(data[:at] + junk + data[at + len(junk):])
    before = store.read_bytes()
    try:
        load_sweep(store)
    except cf.ConfigError as e:
        assert "s.sqlite" in str(e) and "\n" not in str(e)
    assert store.read_bytes() == before
