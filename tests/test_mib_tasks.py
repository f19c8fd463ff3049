"""MIB's circuit-track datasets from disk: tiny files written here in MIB's published row format (the fields
MIB_circuit_track/dataset.py reads), read back field by field, run end to end and exported as a submission."""

from __future__ import annotations

import json

import pytest
import torch

import circuitfind as cf
from circuitfind.cli import main
from circuitfind.errors import TaskError
from circuitfind.interop import read_mib_submission

NAMES = ["Kevin", "Alice", "Chris", "Lisa", "Anna", "John", "Mary", "Tom"]


def _ioi_row(i):
    io, s, c = NAMES[i % 8], NAMES[(i + 1) % 8], NAMES[(i + 2) % 8]
    prompt = f"After {io} and {s} arrived at the market, {s} handed a book to"
    return {"prompt": prompt, "choices": [io, s], "answerKey": 0,
            "metadata": {"indirect_object": io, "subject": s, "random_c": c},
            "s2_io_flip_counterfactual": {"prompt": f"After {io} and {s} arrived at the market, {io} handed a book to",
                                          "choices": [io, s], "answerKey": 1},
            "abc_counterfactual": {"prompt": f"After {c} and {io} arrived at the market, {s} handed a book to",
                                   "choices": [c, io], "answerKey": 0}}


def _choice_row(i):
    labels = ["A", "B", "C", "D"]
    texts = ["honey", "wax", "milk", "silk"]
    key, other = i % 4, (i + 1) % 4
    question = "Question: What do bees make?"

    def prompt(order):
        return question + " " + " ".join(f"{labels[j]}. {texts[k]}" for j, k in enumerate(order)) + " Answer:"
    order = list(range(4))
    return {"prompt": prompt(order), "choices": {"label": labels, "text": texts}, "answerKey": key,
            "symbol_counterfactual": {"prompt": prompt(order[1:] + order[:1]), "choices": {"label": labels,
                                      "text": texts}, "answerKey": other}}


def _arith_row(i, op):
    a, b = 10 + i, 20 + i
    value = a + b if op == "+" else b - a
    return {"prompt": f"{a} {op} {b} =", "label": value, "operator": op,
            "random_counterfactual": {"prompt": f"{a + 1} {op} {b} =", "label": value + (1 if op == "+" else -1)}}


def _write(folder, name, rows, jsonl=True):
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / name
    file.write_text("\n".join(json.dumps(r) for r in rows) if jsonl else json.dumps(rows))
    return file


def test_ioi_rows_become_examples_field_by_field_and_run_on_a_model(tmp_path):
    rows = [_ioi_row(i) for i in range(6)]
    _write(tmp_path / "ioi" / "data", "train-00000-of-00001.jsonl", rows)
    _write(tmp_path / "ioi" / "data", "validation-00000-of-00001.jsonl", rows[:2])
    task = cf.load_task("mib:ioi", path=tmp_path / "ioi", n=4)
    examples = task.examples()
    assert [e.clean for e in examples] == [r["prompt"] for r in rows[:4]]
    assert [e.corrupt for e in examples] == [r["s2_io_flip_counterfactual"]["prompt"] for r in rows[:4]]
    assert [(e.correct, e.wrong) for e in examples] == [(" " + r["metadata"]["indirect_object"],
                                                         " " + r["metadata"]["subject"]) for r in rows[:4]]
    assert task.name == "mib:ioi" and task.metric == "logit-diff"
    abc = cf.load_task("mib:ioi/abc_counterfactual", path=tmp_path / "ioi", n=2).examples()
    assert abc[0].corrupt == rows[0]["abc_counterfactual"]["prompt"]
    assert len(cf.load_task("mib:ioi", path=tmp_path / "ioi", n=2, split="validation").examples()) == 2
    model = cf.load_model("toy-lm")
    scores = cf.score_edges(model, task, "eap")  # the batch builds: one token length, single-token answers
    assert scores.scores.abs().max() > 0 and scores.task == "mib:ioi"


def test_choices_and_arithmetic_rows_read_as_mibs_loader_reads_them(tmp_path):
    mcqa = [_choice_row(i) for i in range(4)]
    _write(tmp_path / "mcqa" / "4_answer_choices", "train.json", mcqa, jsonl=False)  # a JSON list of rows
    got = cf.load_task("mib:mcqa", path=tmp_path / "mcqa", n=4).examples(cf.load_model("toy-lm"))
    assert [(e.correct, e.wrong) for e in got] == [
        (r["choices"]["label"][r["answerKey"]], r["symbol_counterfactual"]["choices"]["label"][
            r["symbol_counterfactual"]["answerKey"]]) for r in mcqa]
    _write(tmp_path / "arc", "test.jsonl", mcqa)
    assert cf.load_task("mib:arc-easy", path=tmp_path / "arc", n=2, split="test").examples()[1].correct == "B"
    rows = [_arith_row(i, op) for i in range(3) for op in "+-"]
    _write(tmp_path / "add", "train.jsonl", rows)
    plus = cf.load_task("mib:arithmetic-addition", path=tmp_path / "add", n=3).examples()
    minus = cf.load_task("mib:arithmetic_subtraction", path=tmp_path / "add", n=3).examples()  # MIB's own spelling
    assert [e.clean for e in plus] == [r["prompt"] for r in rows if r["operator"] == "+"]
    assert [(e.correct, e.wrong) for e in minus] == [(str(r["label"]), str(r["random_counterfactual"]["label"]))
                                                    for r in rows if r["operator"] == "-"]


def test_bad_copies_are_refused_saying_what_to_do(tmp_path):
    with pytest.raises(TaskError, match="path=DIR"):
        cf.load_task("mib:ioi")
    with pytest.raises(TaskError, match="MIB's circuit-track tasks"):
        cf.load_task("mib:ravel", path=tmp_path)
    with pytest.raises(TaskError, match="path= is for MIB"):
        cf.load_task("ioi", path=tmp_path)
    _write(tmp_path / "ioi", "train.jsonl", [_ioi_row(0)])
    with pytest.raises(TaskError, match="counterfactual columns: abc_counterfactual, s2_io_flip_counterfactual"):
        cf.load_task("mib:ioi/nope_counterfactual", path=tmp_path / "ioi", n=1).examples()
    with pytest.raises(TaskError, match="no test split"):
        cf.load_task("mib:ioi", path=tmp_path / "ioi", n=1, split="test").examples()
    with pytest.raises(TaskError, match="fewer than the 5"):
        cf.load_task("mib:ioi", path=tmp_path / "ioi", n=5).examples()
    for config in ("2_answer_choices", "4_answer_choices"):
        _write(tmp_path / "mcqa" / config, "train.jsonl", [_choice_row(0)])
    with pytest.raises(TaskError, match="give the one folder"):
        cf.load_task("mib:mcqa", path=tmp_path / "mcqa", n=1).examples()


def test_parquet_is_read_or_refused_with_what_to_install(tmp_path):
    import pandas as pd  # (a dependency of circuitfind; pyarrow is not)

    try:
        import pyarrow  # noqa: F401
        have = True
    except ImportError:
        have = False
    (tmp_path / "ioi").mkdir()
    if have:
        pd.DataFrame([_ioi_row(i) for i in range(2)]).to_parquet(tmp_path / "ioi" / "train-00000-of-00001.parquet")
        assert cf.load_task("mib:ioi", path=tmp_path / "ioi", n=2).examples()[1].clean == _ioi_row(1)["prompt"]
    else:
        (tmp_path / "ioi" / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
        with pytest.raises(TaskError, match="pip install pyarrow"):
            cf.load_task("mib:ioi", path=tmp_path / "ioi", n=1).examples()


def test_discover_on_mib_data_from_the_command_line_and_export_the_submission(tmp_path):
    _write(tmp_path / "ioi", "train.jsonl", [_ioi_row(i) for i in range(8)])
    _write(tmp_path / "ioi", "test.jsonl", [_ioi_row(i) for i in range(3, 8)])  # discover evaluates on the test split
    argv = ["--quiet", "discover", "--model", "toy-lm", "--task", "mib:ioi", "--task-path", str(tmp_path / "ioi"),
            "--method", "eap", "-n", "6", "--edges", "20", "--no-report", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    assert main(["export", str(tmp_path / "run"), "--mib", str(tmp_path / "sub")]) == 0
    back = read_mib_submission(tmp_path / "sub")
    assert list(back) == [("ioi", "toy-lm")]  # MIB's folder name, ioi_toy-lm
    run = cf.EdgeScores.load(tmp_path / "run")
    assert run.scores.abs().max() > 1e-4 and torch.equal(back["ioi", "toy-lm"].scores, run.scores)
    assert main(["--quiet", "discover", "--model", "toy-lm", "--task", "mib:ioi", "--method", "eap",
                 "--out", str(tmp_path / "run2")]) == 2  # no --task-path: said, nothing written
    assert not (tmp_path / "run2").exists()
