"""Sweeps: all combinations stored once, resumable after SIGKILL, the Ray executor agrees with the
local one, bad input refused before any job runs."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import pytest
import torch

import circuitfind as cf
from circuitfind.cli import main
from circuitfind.circuit import Circuit
from circuitfind.errors import ConfigError, TaskError
from circuitfind.sweep.report import _slug
from circuitfind.sweep.store import Store
from tests.test_tasks import _word_model

SMALL = {"tasks": ["ioi", "sva"], "methods": ["eap", "eap-ig"], "n": 8, "edges": 20}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Two tiny word-level GPT-2s saved as local checkpoints (a fine-tuned model's form)."""
    import transformers

    tokenizer = _word_model().tokenizer
    dirs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=len(tokenizer), n_positions=64,
                                      bos_token_id=1, eos_token_id=1, pad_token_id=0)
        d = tmp_path_factory.mktemp(f"model{seed}.ckpt")  # a dot in the name, as in "Qwen2.5-0.5B"
        transformers.GPT2LMHeadModel(cfg).save_pretrained(d)
        tokenizer.save_pretrained(d)
        dirs.append(str(d))
    return dirs


def test_sweep_stores_every_combination(model_dirs, tmp_path):
    store = tmp_path / "s.sqlite"
    df = cf.sweep(model_dirs, store=store, quiet=True, **SMALL)
    assert len(df) == 8 and (df.status == "done").all(), df[["status", "error"]]
    assert df.key.is_unique
    for r in df.itertuples():
        assert (tmp_path / r.run_dir / "circuit.json").exists() and (tmp_path / r.run_dir / "report.html").exists()
        assert r.result["faithfulness"] == pytest.approx(r.faithfulness) and r.n_edges <= 20
        assert r.peak_mb > 0 and r.seconds > 0
    again = cf.sweep(model_dirs, store=store, quiet=True, **SMALL)  # all done: nothing re-runs
    assert again.drop(columns=["config", "result"]).equals(df.drop(columns=["config", "result"]))
    out = tmp_path / "report"
    assert main(["report", "--sweep", str(store), "--out", str(out)]) == 0
    assert (out / "figures" / "cpr_cmd.pdf").exists() and "| eap-ig |" in (out / "tables" / "sweep.md").read_text()
    first = df[(df.model == model_dirs[0]) & (df.task == "ioi")].set_index("method").run_dir
    a, b = (Circuit.load(tmp_path / first[m]) for m in ("eap", "eap-ig"))
    table = (out / "tables" / f"overlap-{_slug(model_dirs[0])}-ioi.md").read_text()
    assert f"| eap | 1.00 | {cf.overlap(a, b)['edges']['iou']:.2f} |" in table
    assert table in (out / "README.md").read_text()
    assert len(list((out / "figures").glob("faithfulness-*.png"))) == 4
    linked = re.findall(r"\]\((figures/[^)]+)\)", (out / "README.md").read_text())
    assert len(linked) == 5 and all((out / f).exists() for f in linked)  # a dotted name lost its tail to .png


def test_failed_jobs_are_recorded_and_the_sweep_goes_on(model_dirs, tmp_path, caplog):
    store = tmp_path / "s.sqlite"
    bad = tmp_path / "bad_task.py"
    bad.write_text(
        "from circuitfind.task import Example, Task\n"
        "class Unknown(Task):\n"
        "    name = 'unknown-answer'\n"
        "    def example(self, rng, words):\n"
        "        return Example(clean='The students', corrupt='The student', correct=' qqqq', wrong=' was')\n")
    df = cf.sweep(model_dirs[:1], ["sva", f"{bad}:Unknown"], ["eap"], store=store, n=8, edges=10)
    assert sorted(df.status) == ["done", "failed"]
    failed = df[df.status == "failed"].iloc[0]
    assert failed.task.endswith(":Unknown") and "TaskError" in failed.error
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(m.startswith("sweep job failed: ") and "TaskError" in m for m in warned)  # logged, not printed


def test_resume_after_sigkill(model_dirs, tmp_path):
    store = tmp_path / "s.sqlite"
    cmd = [sys.executable, "-m", "circuitfind.cli", "--quiet", "sweep", "--models", ",".join(model_dirs),
           "--tasks", "ioi,sva", "--methods", "eap,eap-ig", "-n", "8", "--edges", "20", "--store", str(store)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if store.exists():
            try:
                with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
                    rows = db.execute("SELECT * FROM jobs").fetchall()
            except sqlite3.OperationalError:  # schema not created yet
                rows = []
            if rows:
                first = rows
                break
        time.sleep(0.05)
    assert first, f"no job was stored: {proc.stderr.read().decode() if proc.poll() is not None else ''}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(store) as db:
        stored = db.execute("SELECT * FROM jobs").fetchall()
    assert 1 <= len(stored) < 8, "kill came after the sweep finished; the test proves nothing"
    assert subprocess.run(cmd, env=env, capture_output=True, check=False).returncode == 0
    with sqlite3.connect(store) as db:
        after = db.execute("SELECT * FROM jobs").fetchall()
        keys = [r[0] for r in db.execute("SELECT key FROM jobs")]
    assert len(after) == 8 and len(set(keys)) == 8
    before = {r[0]: r for r in stored}
    assert all(before[r[0]] == r for r in after if r[0] in before)  # finished results untouched
    runs = store.with_name(store.name + ".runs")
    assert sorted(p.name for p in runs.iterdir()) == sorted(keys)  # no temporary or orphan directories
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_bad_input_is_refused_before_any_job(model_dirs, tmp_path):
    store = tmp_path / "s.sqlite"
    with pytest.raises(ConfigError, match="unknown model 'no-such-model'"):
        cf.sweep(["toy-induction", "no-such-model"], ["induction"], ["eap"], store=store)
    with pytest.raises(TaskError, match="unknown task"):
        cf.sweep(["toy-induction"], ["induction", "nope"], ["eap"], store=store)
    with pytest.raises(ConfigError, match="unknown method 'magic'"):
        cf.sweep(["toy-induction"], ["induction"], ["eap", "magic"], store=store)
    with pytest.raises(ConfigError, match="has no option"):
        cf.sweep(["toy-induction"], ["induction"], ["eap"], options={"eap": {"steps": 3}}, store=store)
    with pytest.raises(ConfigError, match="unknown resource 'gpus'"):
        cf.sweep(["toy-induction"], ["induction"], ["eap"], executor="ray", resources={"gpus": 1}, store=store)
    with pytest.raises(ConfigError, match=r"n \(examples\) must be a count ≥ 1"):  # not a failure per job, later
        cf.sweep(["toy-induction"], ["induction"], ["eap"], n=0, store=store)
    assert not store.exists()
    assert main(["sweep", "--models", "toy-induction", "--tasks", "induction", "--methods", "magic",
                 "--store", str(store)]) == 2


def test_store_of_another_schema_is_refused(tmp_path):
    store = tmp_path / "s.sqlite"
    Store(store).close()
    with sqlite3.connect(store) as db:
        db.execute("UPDATE meta SET value='0' WHERE name='schema'")
    with pytest.raises(ConfigError, match="different sweep configuration schema"):
        cf.sweep(["toy-induction"], ["induction"], ["eap"], store=store, quiet=True)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(ConfigError, match="not a circuitfind sweep store"):
        cf.load_sweep(other)
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database")
    with pytest.raises(ConfigError, match="not a circuitfind sweep store"):
        cf.load_sweep(text)
    assert text.read_text() == "not a database"


def test_a_single_name_is_a_list_of_one_and_repeats_run_once():
    from circuitfind.sweep.jobs import expand
    jobs = expand("toy-induction", "induction", ["eap", "eap", "eap-ig"], seeds=[0, 0], n=np.int64(8))
    assert type(jobs[0].n) is int  # a numpy count is stored as a number the key's JSON can hold
    numpy_option = expand("toy-induction", "induction", "eap-ig", options={"eap-ig": {"steps": np.int64(3)}})[0]
    assert numpy_option.key and type(numpy_option.options["steps"]) is int  # a TypeError in the key before
    assert [(j.model, j.task, j.method, j.seed) for j in jobs] == [("toy-induction", "induction", "eap", 0),
                                                                  ("toy-induction", "induction", "eap-ig", 0)]


def test_ray_executor_matches_local(model_dirs, tmp_path):
    ray = pytest.importorskip("ray", reason="the ray extra")
    common = {"tasks": ["ioi"], "methods": ["eap", "eap-ig"], "n": 8, "edges": 20, "quiet": True}
    local = cf.sweep(model_dirs, store=tmp_path / "local.sqlite", **common)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:  # two model groups: two actors, each loading its model once
        remote = cf.sweep(model_dirs, store=tmp_path / "ray.sqlite", executor="ray", **common)
    finally:
        ray.shutdown()
    key = ["model", "task", "method", "ablation", "seed"]
    a, b = local.sort_values(key).reset_index(drop=True), remote.sort_values(key).reset_index(drop=True)
    assert len(b) == 4 and (b.status == "done").all()
    assert list(a.key) == list(b.key)
    assert a.n_edges.tolist() == b.n_edges.tolist()
    for col in ("faithfulness", "cpr", "cmd"):  # float32 sums of another order: a Ray actor runs torch on its one CPU
        assert a[col].tolist() == pytest.approx(b[col].tolist(), rel=1e-4, abs=1e-6), col
    assert [r["n_edges"] for r in b.result] == b.n_edges.tolist()  # results came back to the driver whole


def test_sweep_of_shipped_models(tmp_path):
    """2 shipped models × 2 tasks × 2 methods: 8 rows; a task a model cannot run is a failed row."""
    df = cf.sweep(["toy-lm", "toy-induction"], ["induction", "ioi"], ["eap", "eap-ig"], store=tmp_path / "s.sqlite",
                  n=10, edges=12, quiet=True)
    assert len(df) == 8 and df.key.is_unique
    failed = df[df.status == "failed"].set_index(["model", "task", "method"]).error
    # toy-induction has no tokenizer, so no text task; eap refuses induction's KL (its gradient there is 0)
    assert set(failed.index) == {("toy-induction", "ioi", "eap"), ("toy-induction", "ioi", "eap-ig"),
                                 ("toy-lm", "induction", "eap"), ("toy-induction", "induction", "eap")}
    assert "tokenizer" in failed["toy-induction", "ioi", "eap"] and "KL" in failed["toy-lm", "induction", "eap"]
    assert (df[df.status == "done"].n_edges <= 12).all()


def test_worker_processes_give_the_same_results(model_dirs, tmp_path):
    common = {"tasks": ["ioi"], "methods": ["eap"], "n": 8, "edges": 20, "quiet": True}
    one = cf.sweep(model_dirs, store=tmp_path / "one.sqlite", **common)
    two = cf.sweep(model_dirs, store=tmp_path / "two.sqlite", workers=2, **common)  # one process per model
    a, b = one.sort_values("key").reset_index(drop=True), two.sort_values("key").reset_index(drop=True)
    assert list(a.key) == list(b.key) and (b.status == "done").all()
    assert a.faithfulness.tolist() == pytest.approx(b.faithfulness.tolist(), abs=1e-6)


def test_a_second_sweep_on_a_busy_store_is_refused(tmp_path):
    import fcntl

    store = tmp_path / "s.sqlite"
    with open(str(store) + ".lock", "w") as held:  # as a running sweep holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match="another sweep is running"):
            cf.sweep(["toy-induction"], ["induction"], ["eap"], store=store, quiet=True)
    assert not store.exists()
    df = cf.sweep(["toy-induction"], ["induction"], ["eap-ig"], store=store, n=10, edges=5, quiet=True)  # free again
    assert (df.status == "done").all()


def test_a_model_that_fails_to_load_fails_its_jobs_only(model_dirs, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    df = cf.sweep([model_dirs[0], str(broken)], ["sva"], ["eap"], store=tmp_path / "s.sqlite", n=8, edges=10, quiet=True)
    status = dict(zip(df.model, df.status))
    assert status == {model_dirs[0]: "done", str(broken): "failed"}
    assert df[df.status == "failed"].error.iloc[0].startswith("loading the model failed")


def test_sweep_under_another_metric(tmp_path, capsys):
    """--metric: every job scored and evaluated under it, stored as task@metric under a key of its own;
    jobs on a task's own metric keep the configuration (and so the key) they had before metric existed."""
    from circuitfind.sweep.jobs import Job, expand

    own = Job("toy-lm", "greater-than", "eap", "corrupted", 0, n=8, edges=10)
    assert "metric" not in own.config()
    other = expand(["toy-lm"], ["greater-than"], ["eap"], n=8, edges=10, metric="logit-diff")[0]
    assert other.key != own.key and other.label == "toy-lm/greater-than@logit-diff/eap/corrupted/seed0"
    store = tmp_path / "s.sqlite"
    assert main(["sweep", "--models", "toy-lm", "--tasks", "greater-than", "--methods", "eap", "--metric", "logit-diff",
                 "-n", "8", "--edges", "10", "--store", str(store), "--quiet"]) == 0
    row = cf.load_sweep(store).iloc[0]
    assert row.status == "done" and row.task == "greater-than@logit-diff" and row.key == other.key
    printed = capsys.readouterr().out.splitlines()[1].split()  # the job's row of the printed table
    assert printed[5:] == [str(int(row.n_edges)), f"{row.faithfulness:.3f}", f"{row.cpr:.3f}", f"{row.cmd:.3f}", "–"]
    assert row.result["metric_name"] == "logit-diff"
    with pytest.raises(ConfigError, match="unknown metric"):
        expand(["toy-lm"], ["ioi"], ["eap"], metric="accuracy")


def test_a_sweep_a_batch_of_examples_at_a_time(model_dirs, tmp_path):
    """batch_size reaches the methods that take one (others run each task whole), finds the same
    circuits, and is not part of a job's key (it says how a job runs, not what it computes)."""
    common = {"tasks": ["ioi"], "methods": ["eap", "edge-pruning"], "ablations": ["corrupted", "resample"], "n": 8,
              "edges": 20, "quiet": True, "options": {"edge-pruning": {"steps": 5}}}
    whole = cf.sweep(model_dirs[:1], store=tmp_path / "whole.sqlite", **common)
    with mock.patch("circuitfind.sweep.jobs.discover", wraps=cf.discover) as discover:
        parts = cf.sweep(model_dirs[:1], store=tmp_path / "parts.sqlite", batch_size=3, **common)
    given = {(c.args[2], c.args[3]): c.kwargs["batch_size"] for c in discover.call_args_list}
    assert given == {("eap", "corrupted"): 3, ("eap", "resample"): None,  # resample draws from the whole task
                     ("edge-pruning", "corrupted"): None, ("edge-pruning", "resample"): None}
    a, b = whole.sort_values("key").reset_index(drop=True), parts.sort_values("key").reset_index(drop=True)
    assert list(a.key) == list(b.key) and (b.status == "done").all()
    assert a.faithfulness.tolist() == pytest.approx(b.faithfulness.tolist(), abs=1e-5)
    with pytest.raises(ConfigError, match="batch_size"):
        cf.sweep(model_dirs[:1], store=tmp_path / "bad.sqlite", batch_size=0, **common)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match="cannot make the folder of the store"):
        cf.sweep(model_dirs[:1], store=tmp_path / "a-file" / "s.sqlite", **common)
