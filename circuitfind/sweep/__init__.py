"""Sweeps over the zoo: models × tasks × methods × ablations × seeds, stored as they finish, resumable.

    cf.sweep(models=["toy-lm", "toy-induction"], tasks=["ioi"], methods=["eap", "eap-ig"],
             store="sweep.sqlite", executor="local" | "ray", workers=1)
    cf.load_sweep("sweep.sqlite")            # a pandas DataFrame, one row per job

Re-running the same call skips the jobs already done and redoes the rest (failed ones included).
Jobs are grouped by model, so each worker loads a model once. Only the driver writes the store.

Executors: "local" runs the groups in this process (workers=1) or in `workers` spawned processes;
"ray" runs one Ray actor per model group, with the resources asked for in `resources`
(num_cpus, num_gpus, memory), connecting to a running cluster (`ray.init(address=...)` before the
call) or starting a local one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import multiprocessing as mp
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

import circuitfind.arguments as arguments
from circuitfind.errors import ConfigError, count
from circuitfind.sweep.jobs import Job, Settings, expand, group_by_model, run_group
from circuitfind.sweep.store import Store

log = logging.getLogger(__name__)

__all__ = ["Job", "load_sweep", "sweep"]


@contextlib.contextmanager
def _exclusive(store_path: Path):
    """Hold `<store>.lock` for the sweep: a second sweep on the same store (which would tidy away the
    first one's run directories) is refused instead. The lock dies with its process, so a killed
    sweep never leaves the store locked."""
    lock = open(Path(str(store_path) + ".lock"), "w")  # noqa: SIM115 — held for the whole with-block
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another sweep is running on {store_path}; wait for it or use another store") from None
        yield
    finally:
        lock.close()


def _tidy(store: Store) -> None:
    """Remove what a killed sweep may have left: temporary run directories, and finished run
    directories whose row was never committed (they are redone)."""
    runs = store.runs_dir
    if not runs.exists():
        return
    done = {k for k, s in store.status().items() if s == "done"}
    removed = 0
    for d in runs.iterdir():
        if d.name.startswith((".tmp-", ".old-")) or (d.is_dir() and d.name not in done):
            shutil.rmtree(d, ignore_errors=True)
            removed += 1
    if removed:  # one line: what a resumed sweep kept and what it will redo
        log.warning("resuming %s: kept the %d finished jobs; removed %d unfinished run directories (their jobs "
                    "run again)", store.path, len(done), removed)


def _group_worker(jobs, settings, queue):
    for job, outcome in run_group(jobs, settings):
        queue.put((job.key, outcome))


def _local(groups, settings: Settings, workers: int):
    """Yield (job key, outcome) as jobs finish."""
    if workers <= 1:
        for jobs in groups.values():
            for job, outcome in run_group(jobs, settings):
                yield job.key, outcome
        return
    ctx = mp.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    quiet = replace(settings, quiet=True)  # bars from several processes would interleave
    with ctx.Manager() as manager, ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        queue = manager.Queue()
        futures = [pool.submit(_group_worker, jobs, quiet, queue) for jobs in groups.values()]
        for _ in range(sum(len(j) for j in groups.values())):
            yield queue.get()
        for f in futures:
            f.result()


def _ray(groups, settings: Settings, resources: dict):
    from circuitfind.sweep.ray_executor import run_on_ray

    yield from run_on_ray(groups, replace(settings, quiet=True), resources)


def sweep(models, tasks, methods, ablations=("corrupted",), seeds=(0,), *, store="sweep.sqlite",
          executor: str = "local", workers: int = 1, n: int = 100, edges: int | None = None, target: float = 0.9,
          options: dict | None = None, dtype: str = "float32", device: str = "cpu", resources: dict | None = None,
          metric: str | None = None, quiet: bool = False, batch_size: int | None = None, resamples: int = 0,
          max_memory=None, store_on: str = "device", store_dtype=None):
    """Run every combination not yet done, storing each as it finishes; return `load_sweep(store)`.

    options: per-method options, e.g. {"eap-ig": {"steps": 10}}. metric: every task under this built-in
    metric instead of its own (stored as task "name@metric"). resources (Ray): per model group,
    e.g. {"num_cpus": 1, "num_gpus": 1, "memory": 8 * 2**30}. batch_size: examples a pass for the jobs
    that take one (edge pruning and resample ablation run each task whole): how jobs run, not part of their keys.
    resamples: bootstrap resamples for each job's error bars (as discover's; the store's columns
    `faithfulness_low`, `faithfulness_high`, `cpr_low`, ... hold them); not part of the keys either.
    max_memory: what a job may use ("20GiB"; default: what the device has free): each job's batch size is chosen
    to fit (`cf.plan`), and a job that fits at no batch size fails with its plan, its model not loaded for it.
    store_on, store_dtype: where each job's ablated-output store and per-example scores live and its dtype (as
    `score_edges`'), for the jobs whose method takes them (`methods.OFFLOADED`, `methods.STORE_DTYPE`); the other
    jobs keep theirs on the device. How jobs run, not part of their keys (the scores are the same bit for bit
    off the device).
    """
    arguments.check(models=models, tasks=tasks, methods=methods, ablations=ablations, seeds=seeds, store=store,
                    executor=executor, workers=workers, n=n, edges=edges, target=target, options=options, dtype=dtype,
                    device=device, resources=resources, metric=metric, quiet=quiet, batch_size=batch_size,
                    resamples=resamples, max_memory=max_memory, store_on=store_on, store_dtype=store_dtype)
    if executor not in ("local", "ray"):
        raise ConfigError(f"executor must be 'local' or 'ray', got {executor!r}")
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    unknown = set(resources or {}) - {"num_cpus", "num_gpus", "memory"}
    if unknown:
        raise ConfigError(f"unknown resource {sorted(unknown)[0]!r}; a model group asks for num_cpus, num_gpus, memory")
    if batch_size is not None:
        batch_size = count(batch_size, "batch_size (examples a pass)", least=1)
    jobs = expand(models, tasks, methods, ablations, seeds, n=n, edges=edges, target=target, options=options,
                  metric=metric)
    try:
        Path(store).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file where a folder should be, or no permission: said before any job
        raise ConfigError(f"cannot make the folder of the store {str(store)!r}: {e.strerror}: {e.filename!r}") from None
    with _exclusive(Path(store)):
        settings = Settings(Store.runs_dir_of(store), dtype, device, batch_size, quiet, resamples, max_memory,
                            store_on, store_dtype)
        failures, done_before, ran = _run_jobs(jobs, store, executor, workers, settings, resources)
    log.info("sweep: %d already done, %d ran, %d failed", done_before, ran - len(failures), len(failures))
    for label, error in failures:  # a warning: shown without any logging set up, as a finished bar would hide them
        log.warning("sweep job failed: %s: %s", label, error)
    return load_sweep(store)


def _run_jobs(jobs, store, executor, workers, settings: Settings, resources):
    """Run the jobs not yet done, recording each; → (failures, jobs done before, jobs run)."""
    db = Store(store)
    try:
        _tidy(db)
        done = {k for k, s in db.status().items() if s == "done"}
        todo = [j for j in jobs if j.key not in done]
        by_key = {j.key: j for j in todo}
        settings.runs_dir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="sweep", unit="job", disable=settings.quiet)
        failures = []
        groups = group_by_model(todo)
        results = (_local(groups, settings, workers) if executor == "local"
                   else _ray(groups, settings, resources or {}))
        for key, outcome in results:
            job = by_key[key]
            db.record(job, outcome)
            if outcome["status"] == "failed":
                failures.append((job.label, outcome["error"].splitlines()[0]))
            bar.update(1)
        bar.close()
    finally:
        db.close()
    return failures, len(jobs) - len(todo), len(todo)


def filled_job_config(config: dict) -> dict:
    """A stored job's configuration with what rows made before a setting existed used, said: an EAP-IG
    (inputs) job's `points` ("right" when missing: k = 1..n), and an eap-ig-activations row from before the
    per-node estimator (no "estimator"), which one it ran."""
    from circuitfind.circuit import OLD_EAP_IG_ACTIVATIONS

    config = dict(config)
    method = config.get("method")
    if method in ("eap-ig", "eap-ig-node"):
        config["options"] = {"points": "right", **config.get("options", {})}
    if method == "eap-ig-activations":
        config.setdefault("estimator", OLD_EAP_IG_ACTIVATIONS)
    return config


def load_sweep(store):
    """The store as a pandas DataFrame: one row per job; `config` and `result` parsed from JSON."""
    import pandas as pd

    arguments.check(store=store)
    db = Store(store, readonly=True)  # a report reads; it never writes to the store
    try:
        rows = db.rows()
    finally:
        db.close()
    for r in rows:
        r["config"] = filled_job_config(r["config"])
        ci = (r.get("result") or {}).get("ci") or {}
        for figure in ("faithfulness", "cpr", "cmd"):  # a job's bootstrap interval (NaN for a job without one)
            low, high = ci.get(figure) or (float("nan"), float("nan"))
            r[f"{figure}_low"], r[f"{figure}_high"] = low, high
    return pd.DataFrame(rows, columns=list(rows[0]) if rows else None)
