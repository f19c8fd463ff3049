"""Jobs of a sweep: one (model, task, method, ablation, seed) each, checked before any runs, grouped
by model so a worker loads each model once, and run into a run directory that appears whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
import resource
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from circuitfind.discover import discover, split_reruns
from circuitfind.engine.ablation import ABLATIONS
from circuitfind.errors import ConfigError, count
from circuitfind.methods import check_options, takes_batches
from circuitfind.metrics import METRICS
from circuitfind.sweep.store import SCHEMA_VERSION
from circuitfind.task import load_task


@dataclass(frozen=True)
class Job:
    model: str
    task: str
    method: str
    ablation: str
    seed: int
    n: int = 100
    edges: int | None = None
    target: float = 0.9
    options: dict = field(default_factory=dict, hash=False)
    metric: str | None = None  # None: the task's own

    def config(self) -> dict:
        config = {"schema": SCHEMA_VERSION, **dataclasses.asdict(self)}
        if self.metric is None:  # left out, so jobs on the task's own metric keep the keys they had
            del config["metric"]
        if self.method == "eap-ig-activations":  # the per-node estimator (issue 40): not the rows made before it
            config["estimator"] = "node-outputs"
        return config

    @property
    def task_label(self) -> str:
        """The task as the store names it: "task", or "task@metric" under another metric."""
        return self.task if self.metric is None else f"{self.task}@{self.metric}"

    @property
    def key(self) -> str:
        """Hash of the full configuration: the same job always has the same key."""
        return hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode()).hexdigest()[:20]

    @property
    def label(self) -> str:
        return f"{self.model}/{self.task_label}/{self.method}/{self.ablation}/seed{self.seed}"


def _check_model(name: str) -> None:
    from circuitfind.models.zoo import ZOO

    if name in ZOO or Path(name).is_dir() or ("/" in name and not name.startswith((".", "/"))):
        return
    raise ConfigError(f"unknown model {name!r}: not a zoo name ({', '.join(ZOO)}), a local directory, or a hub id "
                      "like 'org/name'")


def expand(models, tasks, methods, ablations=("corrupted",), seeds=(0,), *, n: int = 100, edges: int | None = None,
           target: float = 0.9, options: dict | None = None, metric: str | None = None) -> list[Job]:
    """Every combination, once, after checking every name and number (nothing runs if one is wrong).
    A single name (a string) stands for a list of one."""
    options = options or {}
    axes = {"models": models, "tasks": tasks, "methods": methods, "ablations": ablations, "seeds": seeds}
    for name, values in axes.items():
        values = [values] if isinstance(values, (str, int)) else list(values)
        axes[name] = list(dict.fromkeys(values))  # a repeated name would run the same job twice
        if not values:
            raise ConfigError(f"a sweep needs at least one of {name}")
    models, tasks, methods, ablations, seeds = axes.values()
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ConfigError(f"n must be a positive number of examples, got {n!r}")
    if edges is not None:  # numpy integers too, as Python ints: the key hashes JSON
        edges = count(edges, "edges (or None: the smallest size reaching target)")
    n = int(n)
    for m in models:
        _check_model(m)
    if metric is not None and metric not in METRICS:  # a job is stored by name: no callables
        raise ConfigError(f"unknown metric {metric!r}; a sweep takes one of {', '.join(METRICS)}")
    for t in tasks:
        load_task(t, n=1)  # raises TaskError naming the built-in tasks
    for m in options:
        if m not in methods:
            raise ConfigError(f"options given for method {m!r}, which is not in the sweep")
    options = {m: _checked_options(m, options.get(m, {})) for m in methods}  # JSON-ready: the job key hashes it
    for a in ablations:
        if a not in ABLATIONS:
            raise ConfigError(f"unknown ablation {a!r}; choose from {', '.join(ABLATIONS)}")
    return [Job(mo, t, me, a, int(s), n, edges, target, dict(options[me]), metric)
            for mo in models for t in tasks for me in methods for a in ablations for s in seeds]


def group_by_model(jobs: list[Job]) -> dict[str, list[Job]]:
    groups: dict[str, list[Job]] = {}
    for j in jobs:
        groups.setdefault(j.model, []).append(j)
    return groups


def _peak_mb(device) -> float:
    """The worker's peak memory when the job ended: GPU peak allocated (reset per job) on CUDA,
    otherwise the process's peak resident set (a high-water mark over its jobs so far)."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


@dataclass(frozen=True)
class Settings:
    """How a sweep's jobs run, the same for all of them; not what a job computes, so not part of its key.

    batch_size: examples a pass, for the jobs that take one (`methods.takes_batches`; the others take each
    task whole). quiet: no progress bars inside a job (workers always run quiet). resamples: bootstrap
    resamples for each job's error bars (discover's; they add intervals, and change no figure)."""

    runs_dir: Path
    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int | None = None
    quiet: bool = True
    resamples: int = 0
    max_memory: int | str | None = None  # what a job may use (default: what the device has free; `cf.plan`)
    store_on: str = "device"  # where a job's store lives, for the methods that take it (`store_of`)
    store_dtype: str | None = None  # the store's dtype, for the gradient methods

    def store_of(self, method: str) -> dict:
        """discover's store_on and store_dtype for a job of this method: the sweep's, where the method takes them."""
        from circuitfind.methods import OFFLOADED, STORE_DTYPE

        out = {"store_on": self.store_on} if self.store_on != "device" and method in OFFLOADED else {}
        return out | ({"store_dtype": self.store_dtype} if self.store_dtype is not None and method in STORE_DTYPE else {})


def _checked_options(method: str, options: dict) -> dict:
    """The method's options checked, with `resamples=N` kept for the methods that re-run on resamples."""
    reruns, own = split_reruns(method, options)
    count(reruns, "resamples (re-runs on resamples of the examples)", least=0)
    return check_options(method, own) | ({"resamples": reruns} if reruns else {})


def run_job(model, job: Job, settings: Settings) -> dict:
    """Run one job into runs_dir/<key> (discover writes it whole, through a temporary sibling) → its outcome."""
    import torch

    runs_dir = settings.runs_dir
    final = runs_dir / job.key
    start = time.time()
    if str(model.device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(model.device)
    try:
        task = load_task(job.task, n=job.n, seed=job.seed, metric=job.metric)
        reruns, options = split_reruns(job.method, job.options)  # (acdc:resamples=N: re-runs, discover's)
        # overwrite: a directory there is one an attempt killed before its row was written left
        run = discover(model, task, job.method, job.ablation, out=final, overwrite=True, edges=job.edges,
                       target=job.target, n=job.n, seed=job.seed, quiet=settings.quiet,
                       batch_size=settings.batch_size if takes_batches(job.method, job.ablation) else None,
                       resamples=settings.resamples, reruns=reruns, max_memory=settings.max_memory,
                       **settings.store_of(job.method), **options)
        return {"status": "done", "result": run.result, "started": start, "finished": time.time(),
                "seconds": round(time.time() - start, 3), "peak_mb": round(_peak_mb(model.device), 1),
                "run_dir": str(final.relative_to(runs_dir.parent))}
    except Exception as e:  # noqa: BLE001 — a failed job is recorded and the sweep goes on
        return {"status": "failed", "error": f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}",
                "started": start, "finished": time.time(), "seconds": round(time.time() - start, 3)}


def load_for(job: Job, settings: Settings):
    """(the job's model, None), or (None, why it failed to load): such a model fails every job of its group."""
    from circuitfind.models.loading import load_model, quiet_loading

    try:
        with quiet_loading():  # the sweep's bar counts jobs; a loading bar per model would break it up
            return load_model(job.model, dtype=settings.dtype, device=settings.device), None
    except Exception as e:  # noqa: BLE001 — recorded against each job of the group
        return None, f"loading the model failed: {type(e).__name__}: {e}"


def not_loaded(error: str) -> dict:
    """The outcome of a job whose model did not load."""
    return {"status": "failed", "error": error, "started": time.time(), "seconds": 0.0}


def refused_by_plan(job: Job, settings: Settings) -> str | None:
    """Why the job's plan fits its memory at no batch size, from the model's config alone (before loading it),
    or None: it fits, or it cannot be planned before loading (discover plans it again, on the loaded model)."""
    from circuitfind.errors import CircuitfindError, MemoryPlanError
    from circuitfind.plan import batch_size_for

    try:
        task = load_task(job.task, n=job.n, seed=job.seed, metric=job.metric)
        from circuitfind.plan import shape_of
        shape_of(job.model)  # (a config the planner cannot read: planned after loading)
        batch_size_for(job.model, task, job.method, job.ablation, settings.batch_size, settings.max_memory,
                       options=split_reruns(job.method, job.options)[1] | settings.store_of(job.method),
                       device=settings.device, dtype=settings.dtype)
    except MemoryPlanError as e:
        return f"MemoryPlanError: {e}"
    except (CircuitfindError, OSError, ValueError):
        return None
    return None


def run_group(jobs: list[Job], settings: Settings):
    """Yield (job, outcome) for each job of one model's group, loading the model once, and not at all when
    every job's plan says it does not fit (each such job fails with its plan, before any loading)."""
    refused = {job.key: refused_by_plan(job, settings) for job in jobs}
    if all(refused.values()):
        for job in jobs:
            yield job, not_loaded(refused[job.key])
        return
    model, error = load_for(jobs[0], settings)
    for job in jobs:
        if refused[job.key]:
            yield job, not_loaded(refused[job.key])
            continue
        yield job, (not_loaded(error) if model is None else run_job(model, job, settings))
