"""The bad-input corpus: what a new user gets wrong, each refused with one line (exit 2 on the command
line, the named exception in Python) before any work, with no file changed.

Each case is (id, what it does, the error, what the line says). CLI cases run `main()` in-process; the
arguments they give are checked before the model loads (load_model is made to fail if it is reached).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from unittest import mock

import pytest
import torch

import circuitfind as cf
from circuitfind.cli import main
from circuitfind.errors import CircuitfindError

N = ["-n", "8"]
DISCOVER = ["discover", "--model", "toy-induction", "--task", "induction", "--method", "eap-ig", "--quiet", *N]


@pytest.fixture(scope="module")
def model():
    return cf.load_model("toy-induction")


@pytest.fixture(scope="module")
def run_dir(model, tmp_path_factory):
    """A finished run (no report: the readers refuse before rendering)."""
    out = tmp_path_factory.mktemp("base") / "run"
    cf.discover(model, "induction", method="eap-ig", n=8, edges=4, out=out, quiet=True, report=False)
    return out


def tree(root: Path) -> dict:
    """Every file under root and a hash of its bytes: what "no file changed" compares."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def refused(capsys, argv, says, code=2):
    """main(argv) exits `code` with one line on stderr, `circuitfind: ...`, that says `says`."""
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("circuitfind: ") and "Traceback" not in err, err
    assert says in err, err
    return err


def not_loaded(*args, **kwargs):
    raise AssertionError("the model was loaded before the arguments were checked")


# ---------------------------------------------------------------- command-line arguments (before loading)
ARGS = [
    ("edges-negative", ["--edges", "-1"], "edges (the circuit's size in edges) must be a count ≥ 0, got -1"),
    ("target-nan", ["--target", "nan"], "target (the faithfulness the circuit must reach) must be a finite number ≥ 0"),
    ("target-negative", ["--target", "-0.5"], "must be a finite number ≥ 0, got -0.5"),
    ("target-inf", ["--target", "inf"], "must be a finite number ≥ 0, got inf"),
    ("n-zero", ["-n", "0"], "n (examples) must be a count ≥ 1, got 0"),
    ("batch-size-zero", ["--batch-size", "0"], "batch_size (examples a pass) must be a count ≥ 1"),
    ("seed-negative", ["--seed", "-1"], "seed must be a count ≥ 0"),
    ("method-unknown", ["--method", "magic"], "unknown method 'magic'"),
    ("option-no-value", ["--option", "steps"], "--option takes KEY=VALUE"),
    ("option-wrong-type", ["--option", "steps=abc"], "option steps of method 'eap-ig' must be an integer"),
    ("option-unknown", ["--option", "nosuch=1"], "has no option 'nosuch'"),
    ("ablation-unknown", ["--ablation", "nope"], "unknown ablation 'nope'"),
    ("metric-unknown", ["--metric", "accuracy"], "unknown metric 'accuracy'"),
    ("task-unknown", ["--task", "nosuch"], "unknown task 'nosuch'"),
    ("task-file-missing", ["--task", "/no/such/file.py:T"], "task file '/no/such/file.py' does not exist"),
]


@pytest.mark.parametrize("extra,says", [c[1:] for c in ARGS], ids=[c[0] for c in ARGS])
def test_discover_arguments_are_refused_before_loading(extra, says, capsys, tmp_path):
    with mock.patch("circuitfind.models.loading.load_model", not_loaded):
        refused(capsys, DISCOVER + extra + ["--out", str(tmp_path / "run")], says)
    assert not any(tmp_path.iterdir())


def test_edges_beyond_the_graph_are_refused_before_scoring(capsys, tmp_path):
    with mock.patch("circuitfind.discover.score_edges", side_effect=AssertionError("scored")):
        refused(capsys, DISCOVER + ["--edges", "100000", "--out", str(tmp_path / "r")],
                "edges (the circuit's size in edges) must be a count between 0 and 23, got 100000")
    assert not any(tmp_path.iterdir())


def test_an_unknown_model_is_one_line(capsys):
    refused(capsys, ["discover", "--model", "/no/such/model", "--task", "induction"], "ModelNotFoundError")


# ---------------------------------------------------------------- run directories
def test_run_directories_that_cannot_be_written_are_refused_before_loading(capsys, tmp_path):
    (tmp_path / "a-file").write_text("mine")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    before = tree(tmp_path)
    cases = [(tmp_path / "a-file", [], "is a file; a run writes a directory there"),
             (tmp_path / "a-file" / "run", [], "is not a writable directory"),
             (Path("/proc/circuitfind-run"), [], "'/proc' is not a writable directory"),
             (tmp_path / "notes", ["--overwrite"], "holds files that are not a circuitfind run")]
    with mock.patch("circuitfind.models.loading.load_model", not_loaded):
        for out, extra, says in cases:
            refused(capsys, DISCOVER + ["--out", str(out), *extra], says)
    assert tree(tmp_path) == before


def test_a_finished_run_is_not_replaced_without_overwrite(model, run_dir, capsys, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    before = tree(out)
    with mock.patch("circuitfind.models.loading.load_model", not_loaded):
        refused(capsys, DISCOVER + ["--out", str(out)], "holds a run already; pass --overwrite (overwrite=True)")
    with pytest.raises(cf.ConfigError, match="holds a run already"):
        cf.discover(model, "induction", n=8, out=out)
    assert tree(out) == before
    assert main(DISCOVER + ["--edges", "3", "--no-report", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "result.json").read_text())["n_edges"] <= 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing left beside it


# ---------------------------------------------------------------- damaged files
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _edit_json(key, value):
    def edit(path: Path) -> None:
        data = json.loads(path.read_text())
        data[key] = value
        path.write_text(json.dumps(data))
    return edit


def _nan_scores(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    t = load_file(str(path))["scores"]
    t[0, 0] = math.nan
    save_file({"scores": t}, str(path))


def _other_shape(path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"scores": torch.zeros(3, 3)}, str(path))


def _mark_incomplete(d: Path) -> None:
    (d / ".incomplete").write_text("")


DAMAGED = [  # (id, file, damage, what the line says)
    ("result-truncated", "result.json", _truncate, "result.json is damaged: not JSON"),
    ("result-a-list", "result.json", lambda p: p.write_text("[1, 2]"), "result.json is damaged: it holds a JSON list"),
    ("result-no-model", "result.json", _edit_json("model", None), "result.json is damaged: 'model' missing"),
    ("result-missing", "result.json", Path.unlink, "not a complete run directory (missing result.json)"),
    ("scores-truncated", "scores.safetensors", _truncate, "scores.safetensors is damaged: not a readable safetensors"),
    ("scores-empty", "scores.safetensors", lambda p: p.write_bytes(b""), "scores.safetensors is damaged"),
    ("scores-other-shape", "scores.safetensors", _other_shape, "graph needs float [dst, src] = (9, 5)"),
    ("scores-nan", "scores.safetensors", _nan_scores, "1 of its scores are NaN or infinite"),
    ("scores-json-truncated", "scores.json", _truncate, "scores.json is damaged: not JSON"),
    ("scores-json-newer", "scores.json", _edit_json("format", 2), "scores.json was written by a newer circuitfind"),
    ("scores-json-graph", "scores.json", _edit_json("graph", {"n_layers": "x", "n_heads": 1}),
     "scores.json is damaged: its 'graph' is"),
    ("circuit-truncated", "circuit.json", _truncate, "circuit.json is damaged: not JSON"),
    ("circuit-unknown-edge", "circuit.json", _edit_json("edges", ["input->nowhere"]),
     "circuit.json is damaged: 'input->nowhere' is not an edge name"),
    ("circuit-newer", "circuit.json", _edit_json("format", 7), "circuit.json was written by a newer circuitfind"),
    ("circuit-other-kind", "circuit.json", _edit_json("kind", "edge-scores"), "holds a 'edge-scores', not a "),
    ("inspect-truncated", "inspect.json", lambda p: p.write_text('{"lens": ['), "inspect.json is damaged: not JSON"),
    ("unfinished-run", ".", _mark_incomplete, "is an unfinished run (discover was interrupted while writing it)"),
]


@pytest.mark.parametrize("name,damage,says", [c[1:] for c in DAMAGED], ids=[c[0] for c in DAMAGED])
def test_report_names_a_damaged_file_and_writes_nothing(name, damage, says, run_dir, capsys, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    damage(d / name)
    before = tree(d)
    refused(capsys, ["report", str(d)], says)
    assert tree(d) == before


@pytest.mark.parametrize("name,damage,says", [c[1:] for c in DAMAGED if c[1] in ("circuit.json", ".")],
                         ids=[c[0] for c in DAMAGED if c[1] in ("circuit.json", ".")])
def test_compare_names_a_damaged_circuit(name, damage, says, run_dir, capsys, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    damage(d / name)
    before = tree(tmp_path)
    refused(capsys, ["compare", str(run_dir), str(d)], says)
    assert tree(tmp_path) == before


def test_other_bad_reads_on_the_command_line(run_dir, capsys, tmp_path):
    (tmp_path / "a-file").write_text("not a run")
    (tmp_path / "notes.sqlite").write_text("not a database, but mine")
    before = tree(tmp_path)
    cases = [(["report", str(tmp_path / "nope")], "is not a directory"),
             (["report", str(tmp_path / "a-file")], "is a file, not a run directory"),
             (["compare", str(run_dir)], "compare needs at least two"),
             (["export", str(run_dir)], "say where to write: --eap-ig FILE and/or --mib DIR"),
             (["report", "--sweep", str(tmp_path / "nope.sqlite")], "no sweep store at"),
             (["report", "--sweep", str(tmp_path / "notes.sqlite")], "is not a circuitfind sweep store"),
             (["sweep", "--models", "toy-induction", "--tasks", "induction", "--methods", "eap", "--target", "nan",
               "--store", str(tmp_path / "s.sqlite")], "target (the faithfulness the circuit must reach) must be"),
             (["sweep", "--models", "toy-induction", "--tasks", "induction", "--methods", "eap", "--workers", "0",
               "--store", str(tmp_path / "s.sqlite")], "workers (worker processes) must be a count ≥ 1"),
             (["sweep", "--models", "toy-induction", "--tasks", "induction", "--methods", "eap", "--seeds", "0,x",
               "--store", str(tmp_path / "s.sqlite")], "--seeds takes integers, got 'x'"),
             (["sweep", "--models", "toy-induction", "--tasks", "induction", "--methods", "eap", "--executor", "ray",
               "--resources", "num_cpus=lots", "--store", str(tmp_path / "s.sqlite")],
              "--resources num_cpus takes integers, got 'lots'")]
    for argv, says in cases:
        refused(capsys, argv, says)
    assert tree(tmp_path) == before


def test_damaged_sweep_stores_are_named_and_left_alone(capsys, tmp_path):
    import sqlite3

    from circuitfind.sweep.store import Store

    good = tmp_path / "good.sqlite"
    Store(good).close()
    newer = tmp_path / "newer.sqlite"
    Store(newer).close()
    db = sqlite3.connect(newer)
    db.execute("UPDATE meta SET value='9' WHERE name='schema'")
    db.commit()
    db.close()
    truncated = tmp_path / "truncated.sqlite"
    data = good.read_bytes()
    truncated.write_bytes(data[:100])
    before = tree(tmp_path)
    refused(capsys, ["report", "--sweep", str(newer)], "was written by a newer circuitfind (schema version 9)")
    refused(capsys, ["report", "--sweep", str(truncated)], "truncated.sqlite is not a circuitfind sweep store, or is "
                                                           "damaged")
    with pytest.raises(cf.ConfigError, match="holds no jobs yet"):
        from circuitfind.sweep.report import write_sweep_report
        write_sweep_report(good)
    assert tree(tmp_path) == before


# ---------------------------------------------------------------- imported files (EAP-IG / MIB)
def test_imports_name_the_damaged_file(run_dir, tmp_path):
    from circuitfind.interop import from_eap_ig, read_mib_submission, save_eap_ig

    good = save_eap_ig(tmp_path / "g.json", cf.EdgeScores.load(run_dir), cf.Circuit.load(run_dir))
    data = json.loads(good.read_text())
    files = {"truncated.json": good.read_text()[:50]}
    unknown = json.loads(json.dumps(data))
    unknown["edges"]["input->m9"] = {"score": 1.0, "in_graph": True}
    files["unknown.json"] = json.dumps(unknown)
    bad_score = json.loads(json.dumps(data))
    bad_score["edges"][next(iter(bad_score["edges"]))]["score"] = "high"
    files["score.json"] = json.dumps(bad_score)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    before = tree(tmp_path)
    for name, says in (("truncated.json", "truncated.json is damaged: not JSON"),
                       ("unknown.json", "unknown.json is damaged or of another model: 'input->m9'"),
                       ("score.json", "score.json is damaged: edge")):
        with pytest.raises(cf.ConfigError, match=says) as e:
            from_eap_ig(tmp_path / name)
        assert "\n" not in str(e.value)
    with pytest.raises(cf.ConfigError, match="is not a directory; a MIB submission"):
        read_mib_submission(tmp_path / "no-such-folder")
    assert tree(tmp_path) == before


# ---------------------------------------------------------------- the Python API's types
def test_public_calls_name_the_argument_and_the_forms_it_takes(model, run_dir):
    task = cf.load_task("induction", n=8)
    scores, circuit = cf.EdgeScores.load(run_dir), cf.Circuit.load(run_dir)

    class Mine(cf.Task):
        name = "mine"
    calls = [
        (lambda: cf.score_edges("toy-lm", task), "model must be a loaded model, got the name 'toy-lm': load it first, "
                                                 "model = cf.load_model('toy-lm')"),
        (lambda: cf.discover("toy-induction", task), "model must be a loaded model"),
        (lambda: cf.task_accuracy("toy-lm", task), "model must be a loaded model"),
        (lambda: cf.score_edges(model, 3), "task must be a Task or a task name"),
        (lambda: cf.discover(model, Mine), "task is the class Mine; pass an instance, Mine(n=100, seed=0)"),
        (lambda: cf.evaluate(model, task, scores), "circuit must be Circuit: prune the scores first"),
        (lambda: cf.faithfulness_curve(model, task, circuit), "scores must be EdgeScores"),
        (lambda: cf.prune("scores", edges=3), "scores must be EdgeScores"),
        (lambda: cf.prune(scores, edges=10**6), "must be a count between 0 and 23"),
        (lambda: cf.prune(scores, threshold=math.nan), "threshold (the score an edge must reach) must be a finite"),
        (lambda: cf.roc_auc(scores, 3), "truth must be a Circuit or a list of edge names"),
        (lambda: cf.overlap("a", circuit), "circuits combine with circuits, not str"),
        (lambda: cf.discover(model, task, quiet="yes"), "quiet must be True or False"),
        (lambda: cf.discover(model, task, out=3), "out must be a path"),
        (lambda: cf.sweep(["toy-induction"], ["induction"], ["eap"], seeds=[-2], store="x.sqlite"),
         "each of seeds must be a count ≥ 0"),
    ]
    with mock.patch("circuitfind.discover.score_edges", side_effect=AssertionError("scored")):
        for call, says in calls:
            with pytest.raises(cf.ConfigError) as e:
                call()
            assert says in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not Path("x.sqlite").exists()


PUBLIC = ["discover", "score_edges", "evaluate", "faithfulness_curve", "prune", "sweep", "task_accuracy", "roc_auc"]


def test_every_argument_of_every_public_call_goes_through_the_one_pass(model, run_dir):
    """Each public call hands all its arguments to arguments.check before anything else (a new argument
    without a rule fails here), and every rule's name is known."""
    import inspect

    import circuitfind.arguments as arguments

    class Checked(Exception):
        pass

    seen = {}

    def record(graph=None, **values):
        seen.update(values)
        raise Checked

    scores, circuit, task = cf.EdgeScores.load(run_dir), cf.Circuit.load(run_dir), cf.load_task("induction", n=8)
    given = {"model": model, "task": task, "scores": scores, "circuit": circuit, "truth": circuit,
             "models": ["toy-induction"], "tasks": ["induction"], "methods": ["eap"]}
    for name in PUBLIC:
        fn = getattr(cf, name)
        params = inspect.signature(fn).parameters
        seen.clear()
        with mock.patch.object(arguments, "check", record), pytest.raises(Checked):
            fn(*[given[p] for p, v in params.items() if v.default is inspect.Parameter.empty
                 and v.kind is v.POSITIONAL_OR_KEYWORD])
        takes = {p for p, v in params.items() if v.kind is not v.VAR_POSITIONAL}
        assert takes <= set(arguments.RULES), f"{name}: no rule for {takes - set(arguments.RULES)}"
        assert takes == set(seen), f"{name} does not check {takes - set(seen)}"
    with pytest.raises(TypeError, match="no rule for colour"):
        arguments.check(colour="red")


# ---------------------------------------------------------------- task classes
class _Same(cf.Task):
    """Every draw the same, and unusable: clean and corrupted prompts of different lengths."""
    name = "same-unaligned"

    def example(self, rng, words):
        return cf.Example(clean=[1, 2, 3], corrupt=[1, 2, 3, 4], correct=5, wrong=6)


class _Repeats(cf.Task):
    name = "repeats"

    def example(self, rng, words):
        return cf.Example(clean=[1, 2, 3], corrupt=[1, 2, 4], correct=5, wrong=6)


class _NotAnExample(cf.Task):
    name = "not-an-example"

    def example(self, rng, words):
        return ([1, 2], [1, 3], 4, 5)


class _EmptyList(cf.Task):
    name = "empty-list"

    def example(self, rng, words):
        return cf.Example(clean=[rng.choice([])], corrupt=[1], correct=4, wrong=5)


class _BigAnswer(cf.Task):
    name = "big-answer"

    def example(self, rng, words):
        a = rng.randrange(60)
        return cf.Example(clean=[a, 2], corrupt=[a, 3], correct=10_000, wrong=5)


class _SameAnswer(cf.Task):
    name = "same-answer"

    def example(self, rng, words):
        a = rng.randrange(60)
        return cf.Example(clean=[a, 2], corrupt=[a, 3], correct=5, wrong=[6, 5])


class _Unaligned(cf.Task):
    name = "unaligned"

    def example(self, rng, words):
        a = rng.randrange(60)
        return cf.Example(clean=[a, 2], corrupt=[a, 3, 3], correct=5, wrong=6)


TASKS = [
    ("same-unusable-draw", _Same, "the most common reason (1100 of 1100 draws): unequal token lengths: clean prompt "
                                  "[1, 2, 3] is 3 tokens but corrupted prompt [1, 2, 3, 4] is 4"),
    ("repeated-draws", _Repeats, "the most common reason (1099 of 1100 draws): repeated an earlier draw, e.g. clean "
                                 "[1, 2, 3]"),
    ("not-an-example", _NotAnExample, "_NotAnExample.example() must return a circuitfind Example, got tuple"),
    ("empty-word-list", _EmptyList, "could not draw an example (IndexError"),
    ("answer-not-a-logit", _BigAnswer, "answer id 10000 is not a logit of toy-induction"),
    ("answer-also-wrong", _SameAnswer, "answer 5 is also a wrong answer"),
    ("unequal-lengths", _Unaligned, "is 2 tokens but corrupted prompt"),
]


@pytest.mark.parametrize("cls,says", [c[1:] for c in TASKS], ids=[c[0] for c in TASKS])
def test_task_classes_are_refused_with_the_reason(cls, says, model):
    with mock.patch("circuitfind.discover.score_edges", side_effect=AssertionError("scored")):
        with pytest.raises(cf.TaskError) as e:
            cf.discover(model, cls(n=8), method="eap-ig", quiet=True)
    assert says in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_task_of_no_examples_is_refused():
    with pytest.raises(cf.TaskError, match="n must be a positive number of examples, got 0"):
        _Repeats(n=0)


# ---------------------------------------------------------------- non-finite activations
def test_an_overflowing_model_is_named_at_its_first_non_finite_node(tmp_path):
    model = cf.load_model("toy-induction")
    with torch.no_grad():
        model.blocks[1].mlp.w_in.data[0, 0] = math.inf
    with pytest.raises(cf.MetricError) as e:
        cf.discover(model, "induction", method="eap-ig", n=8, quiet=True, out=tmp_path / "run")
    says = str(e.value)
    assert "first at m1 (its hidden activations), at hook blocks.1.mlp.hook_post" in says and "float32" in says, says
    assert "the task and its metric are not at fault" in says and "\n" not in says
    half = cf.load_model("toy-induction", dtype="float16")
    with torch.no_grad():
        half.blocks[0].attn.w_q.data.mul_(1e6)
    with pytest.raises(cf.MetricError, match="first at a0.h0 \\(its query\\).*load the model in bfloat16 or float32"):
        cf.score_edges(half, cf.load_task("induction", n=8), "eap-ig")
    assert not any(tmp_path.iterdir())
    nan = cf.EdgeScores(torch.full((model.graph.n_receivers, model.graph.n_senders), math.nan), model.graph)
    with pytest.raises(cf.ConfigError, match="are NaN or infinite; they are not saved"):
        nan.save(tmp_path / "scores")
    assert not (tmp_path / "scores").exists() or not any((tmp_path / "scores").iterdir())


def test_every_corpus_error_is_a_circuitfind_error():
    """(the corpus above asserts ConfigError, TaskError, MetricError: all of one family, caught as one)"""
    for cls in (cf.ConfigError, cf.TaskError, cf.MetricError, cf.ModelNotFoundError):
        assert issubclass(cls, CircuitfindError)
