"""The one call: score every edge, choose the smallest faithful circuit, evaluate, write a run directory.

    run = cf.discover(model, "ioi", method="eap-ig", out="runs/ioi-gpt2")

The circuit is the smallest of the MIB-size circuits (top edges by |score|, dangling edges removed)
whose faithfulness on the test split reaches `target` (default 0.9), unless `edges=` fixes its size.
The run directory holds scores.safetensors + scores.json, circuit.json, result.json, inspect.json
(examples and logit lens) and the report (figures/, tables/, report.html; `report=False` skips it).
It is written whole or not at all (a temporary sibling marked `.incomplete`, renamed into place when
complete), and a directory holding a run is replaced only with `overwrite=True`.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import circuitfind.arguments as arguments
from circuitfind.circuit import INCOMPLETE, Circuit, EdgeScores, _atomic_write, reproduces
from circuitfind.engine.offload import store_dtype_of
from circuitfind.errors import ConfigError
from circuitfind.evaluate import MIB_FRACTIONS, evaluate, faithfulness_curve, roc_auc
from circuitfind.methods import METHODS, PER_EXAMPLE, check_options, check_store, score_edges
from circuitfind.methods.positional import POSITIONAL
from circuitfind.plan import batch_size_for
from circuitfind.prune import prune
from circuitfind.report import render
from circuitfind.report.data import collect
from circuitfind.task import Task, load_task, metric_name
from circuitfind.uncertainty import (LEVEL, edge_intervals, interval, pack, resample_draws, resampled_task,
                                     stability_of)

log = logging.getLogger(__name__)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


INCOMPLETE_NOTE = "discover was interrupted while writing this run directory; it is not a whole run\n"


def check_out(out, overwrite: bool = False) -> None:
    """Refuse, before any work (the command line: before the model loads), a run directory that could
    not be written (a file in its place, no writable directory to make it in) or that holds a run or
    other files already (a finished run is data: replaced only with overwrite=True, and only if it is
    a run directory)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={str(out)!r} is a file; a run writes a directory there")
    if out.is_dir() and any(out.iterdir()):
        if not is_run_dir(out):
            raise ConfigError(f"out={str(out)!r} holds files that are not a circuitfind run; a run replaces its "
                              "directory whole, so choose a new or empty directory")
        if not overwrite:
            raise ConfigError(f"out={str(out)!r} holds a run already; pass --overwrite (overwrite=True) to replace "
                              "it, or choose another directory")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not _writable(parent):
        raise ConfigError(f"cannot write the run directory {str(out)!r}: {str(parent)!r} is not a writable directory")


def _writable(folder: Path) -> bool:
    """Whether a directory can be made in folder (tried, not asked: os.access says yes to root on a read-only
    file system)."""
    try:
        Path(tempfile.mkdtemp(dir=folder, prefix=".circuitfind-probe-")).rmdir()
    except OSError:
        return False
    return True


def is_run_dir(d: Path) -> bool:
    """A directory discover wrote (whole or not): one holding the files every run has, or the mark of an
    unfinished one."""
    return (d / INCOMPLETE).exists() or any((d / f).exists() for f in ("result.json", "scores.json", "circuit.json"))


def _stale(out: Path) -> None:
    """Remove the unfinished run directories an interrupted discover (killed: nothing could tidy) left
    beside out, `.tmp-<name>-<pid>-*` of processes no longer running; say so, one line each."""
    for d in out.parent.glob(f".tmp-{out.name}-*-*"):
        pid = d.name[len(f".tmp-{out.name}-"):].split("-")[0]
        if not pid.isdigit() or not (d / INCOMPLETE).exists():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # that discover is still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(d, ignore_errors=True)
        log.warning("removed %s, the unfinished run of an interrupted discover (nothing in it was kept)", d)


def _write_run(out: Path, overwrite: bool, write) -> None:
    """Write a run directory whole or not at all: into a temporary sibling marked incomplete, renamed to out
    when complete (an earlier run there replaced only with overwrite, after the new one is whole)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _stale(out)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp-{out.name}-{os.getpid()}-"))
    try:
        (tmp / INCOMPLETE).write_text(INCOMPLETE_NOTE)
        write(tmp)
        (tmp / INCOMPLETE).unlink()
        check_out(out, overwrite)  # again: something may have appeared there during the run
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.is_dir() and any(out.iterdir()):  # an earlier run (overwrite): set aside until the new one is in place
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".old-{out.name}-"))
        os.replace(out, old / "run")
    os.replace(tmp, out)  # (onto an empty directory, or none)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class Run:
    """What `discover` found: every edge's scores, the circuit chosen, result.json's contents, and
    the run directory (None without out=)."""

    scores: EdgeScores
    circuit: Circuit
    result: dict
    out: Path | None

    def __repr__(self) -> str:
        where = f", in {self.out}" if self.out is not None else ""
        return (f"Run({self.scores!r} -> {self.circuit!r}, "
                f"faithfulness {self.result['faithfulness']:.3f}{where})")


def check_run(graph=None, *, method: str, options: dict, out=None, overwrite: bool = False, **values) -> None:
    """Everything discover checks before work, in one pass: every argument by its rule (`arguments`;
    sizes against the graph once it is known), the method's options, and the run directory. The command
    line calls it with graph=None before it loads the task or the model, discover again with the graph."""
    arguments.check(graph, method=method, options=options, out=out, overwrite=overwrite, **values)
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    check_options(method, options)
    check_store(method, values.get("store_on", "device"), values.get("store_dtype"), values.get("positions"))
    if values.get("positions") is not None and method not in POSITIONAL:
        raise ConfigError(f"position-aware circuits are scored by {', '.join(POSITIONAL)}; got method {method!r}")
    if out is not None:
        check_out(out, overwrite)


def _acdc_threshold(method: str, options: dict) -> float | None:
    """τ of an ACDC run that swept every receiver (its circuit is then the edges it kept: Δ ≥ τ), else
    None. With receivers= some edges were never tried (score 0), so ACDC did not decide the circuit."""
    if method != "acdc" or options.get("receivers") is not None:
        return None
    return float(options.get("threshold", METHODS["acdc"][1].threshold))


def split_reruns(method: str, options: dict) -> tuple[int, dict]:
    """(reruns, the method's own options) of command-line or sweep options: for the methods that do not average
    over examples, `resamples=N` among them means run again on N resamples (discover's reruns=N)."""
    if method in PER_EXAMPLE or "resamples" not in options:
        return 0, options
    rest = dict(options)
    return rest.pop("resamples"), rest


def _rerun_intervals(model, task, method, ablation, seed, quiet, batch_size, options, edges, threshold, reruns,
                     level) -> tuple[dict, dict]:
    """A method that does not average over examples run again on `reruns` bootstrap resamples of the task's
    examples (seeded by seed): (EdgeScores.intervals: each edge's percentile interval over the re-runs' scores
    and its frequency in their circuits, each pruned as the run's own, by ACDC's threshold or to `edges`; the
    re-runs' Jaccard summary)."""
    extra = {} if batch_size is None else {"batch_size": batch_size}
    runs, circuits = [], []
    for draw in resample_draws(len(task.examples(model)), reruns, seed).tolist():
        again = score_edges(model, resampled_task(task, draw), method, ablation, seed=seed, quiet=quiet,
                            **extra, **options)
        runs.append(again.scores)  # [dst, src]
        circuits.append(prune(again, threshold=threshold, absolute=False) if threshold is not None
                        else prune(again, edges=edges))
    low, high = interval(torch.stack(runs).double(), level)  # [dst, src] each
    st = stability_of(circuits, model.graph, level)
    on = model.graph.edge_mask
    kept = torch.stack([c.mask[on] for c in circuits])  # [reruns, edges]
    intervals = {"low": low.float() * on, "high": high.float() * on, "frequency": st.frequency, "level": level,
                 "resamples": reruns, "seed": seed, "k": None if threshold is not None else edges,
                 "circuits": pack(kept)}
    return intervals, st.summary()


def discover(model, task: Task | str, method: str = "eap-ig", ablation: str = "corrupted", *, out=None,
             edges: int | None = None, target: float = 0.9, n: int | None = None, seed: int = 0, quiet: bool = False,
             report: bool = True, batch_size: int | None = None, provenance: dict | None = None,
             overwrite: bool = False, resamples: int = 0, level: float = LEVEL, reruns: int = 0,
             positions: str | None = None, max_memory=None, store_on: str = "device", store_dtype=None,
             **options) -> Run:
    """Score every edge with `method`, pick the smallest MIB-size circuit whose faithfulness on the
    test split (a quarter of n, no prompt shared with the train split) reaches `target` (or the top
    `edges`), evaluate it, and, with `out=`, write the run directory and its report. ACDC's circuit is
    its own, the edges it kept at its threshold (unless edges= is given, or receivers= left edges
    untried); the curve is still measured, on |Δ|.

    task: a Task, or a name loaded with n (default 100) and seed. options: the method's config
    (e.g. steps=10 for eap-ig; `circuitfind.methods.METHODS` lists the config classes). batch_size:
    examples a pass, for scoring, the curve and the evaluation (methods in `methods.BATCHED`).
    provenance: entries added to result.json's provenance (the command line records itself there;
    a notebook might add its experiment's commit). out: written whole when the run is complete (an
    interrupted run leaves nothing there); a directory holding a run is refused unless overwrite=True.
    resamples > 0: error bars, percentile bootstrap intervals at `level` over the examples (seeded by `seed`),
    from the passes the estimates make: of the faithfulness, the curve, CPR and CMD (every method), and of
    every edge's score and its frequency in a resample's circuit of the chosen size (the methods that average
    over examples; ACDC and edge pruning: `cf.stability`). In result.json's `ci` and the scores' ci.safetensors.
    reruns > 0, for the methods that do not average over examples (ACDC, edge pruning, ifr: `--option
    resamples=N` on the command line): run the method again on this many bootstrap resamples of the examples
    (reruns times its cost), for every edge's interval (percentiles of its re-run scores), its frequency in the
    re-runs' circuits (chosen as the run's own: ACDC's threshold, else its size) and their Jaccard overlaps
    (result.json's `ci["stability"]`).
    positions: "spans" or "tokens", a position-aware circuit (`score_edges(..., positions=)`): scored, sized,
    evaluated and reported in (edge, span) units (eap, eap-ig, exact).
    max_memory: what the run may use ("20GiB"; default: what the model's device has free). Before any work the
    run is planned (`cf.plan`): with no batch_size, the largest batch whose plan fits is taken (all examples
    where they fit); a batch_size, or a run, that fits at no batch size is refused (`MemoryPlanError`). The plan
    does not cover position-aware runs (their engine is `engine/positional.py`), which are not planned.
    store_on, store_dtype: where the scoring's ablated-output store and per-example scores live ("device", "cpu",
    "disk") and its dtype (None, "bfloat16"), as `score_edges`'; the plan counts them (the store off the device
    frees its bytes there). The curve and the evaluation keep theirs on the device.
    """
    check_run(model=model, task=task, method=method, ablation=ablation, out=out, edges=edges, target=target, n=n,
              seed=seed, quiet=quiet, report=report, batch_size=batch_size, provenance=provenance,
              overwrite=overwrite, resamples=resamples, level=level, reruns=reruns, positions=positions,
              max_memory=max_memory, store_on=store_on, store_dtype=store_dtype, options=options)
    store = {"store_on": store_on} if store_on != "device" else {}
    if store_dtype is not None:  # (by name: it goes to result.json's provenance)
        store["store_dtype"] = str(store_dtype_of(store_dtype)).removeprefix("torch.")
    if positions is not None and (resamples or reruns):
        raise ConfigError("error bars (resamples, reruns) are not computed for position-aware circuits yet; run "
                          "without positions for them, or without resamples")
    if reruns and method in PER_EXAMPLE:
        raise ConfigError(f"method {method!r} averages over examples: its intervals come from the same passes with "
                          "resamples=N (--resamples N), no re-runs needed (reruns is for acdc, edge-pruning, ifr)")
    if isinstance(task, str):
        task = load_task(task, n=100 if n is None else n, seed=seed)
    elif n is not None and n != task.n:  # a loaded task keeps its examples; n would be ignored
        raise ConfigError(f"the task was loaded with n={task.n}; n={n} applies only to a task given by name "
                          "(pass n to load_task instead)")
    test = task.with_split("test", n=max(1, task.n // 4))
    test.batch(model)  # validate both splits before the long work
    if ablation == "resample" and test.n < 2:
        raise ConfigError(f"resample ablation draws from other examples, but the test split has {test.n} "
                          f"(a quarter of n={task.n}); use n ≥ 8")
    if positions is None:  # (the plan covers the node-graph engine)
        batch_size = batch_size_for(model, task, method, ablation, batch_size, max_memory, options=options | store)
    start = time.perf_counter()
    per_example = bool(resamples) and method in PER_EXAMPLE
    scores = score_edges(model, task, method, ablation, seed=seed, quiet=quiet, batch_size=batch_size,
                         per_example=per_example, positions=positions, **store, **options)
    curve = faithfulness_curve(model, test, scores, ablation=ablation, seed=seed, quiet=quiet, batch_size=batch_size,
                               resamples=resamples, level=level)
    sized_by = "edges"
    acdc_threshold = _acdc_threshold(method, options) if edges is None else None
    if acdc_threshold is not None:  # ACDC decided its circuit itself: the edges kept at τ
        sized_by = "acdc threshold"
    elif edges is None:
        reached = [i for i, f in enumerate(curve.faithfulness_absolute) if f >= target]
        at = reached[0] if reached else -1
        edges = int(MIB_FRACTIONS[at] * scores.n_edges)  # (position-aware: in units)
        sized_by = "target" if reached else "target not reached: all edges"
        if at == len(MIB_FRACTIONS) - 1 or not reached:
            log.warning("no MIB size below the whole graph reached faithfulness %s, so the circuit is the whole "
                        "graph: try more examples, another method or ablation, or a fixed size (edges=N, --edges N)",
                        target)
    circuit = prune(scores, threshold=acdc_threshold, absolute=False) if acdc_threshold is not None \
        else prune(scores, edges=edges)
    if acdc_threshold is not None and circuit.n_edges == 0:
        log.warning("ACDC's circuit at threshold %s is empty (no edge kept, or none on a path from input to "
                    "logits): lower the threshold (threshold=, --option threshold=)", acdc_threshold)
    if sized_by in ("edges", "acdc threshold"):
        result = evaluate(model, test, circuit, ablation=ablation, seed=seed, batch_size=batch_size,
                          resamples=resamples, level=level)
    else:  # the curve's own circuit at that size (the same prune call): its figures are already measured
        result = {"faithfulness": curve.faithfulness_absolute[at], "metric_circuit": curve.metric_absolute[at],
                  "metric_full": curve.metric_full, "metric_empty": curve.metric_empty}
        if resamples:
            result["ci"] = {"faithfulness": curve.ci["faithfulness_absolute"][at]}
    ci, stable = None, None
    if reruns:  # ACDC, edge pruning, ifr: the method again on resamples of the examples
        scores.intervals, stable = _rerun_intervals(model, task, method, ablation, seed, quiet, batch_size, options,
                                                    edges, acdc_threshold, reruns, level)
    if resamples:
        if per_example:  # every edge's interval and its frequency in a resample's circuit of this size
            scores.intervals = edge_intervals(scores, resamples, seed, level, k=circuit.n_edges)
            scores.per_example = None  # (held no longer than needed: n × dst × src floats)
        ci = {"level": level, "resamples": resamples, "seed": seed, "faithfulness": result["ci"]["faithfulness"],
              "cpr": curve.ci.get("cpr"), "cmd": curve.ci.get("cmd"),
              "curve": {k: curve.ci.get(k) for k in ("faithfulness_signed", "faithfulness_absolute")},
              "edges": "ci.safetensors" if per_example else None}
    if stable is not None:
        ci = (ci or {"level": level}) | {"reruns": reruns, "stability": stable, "edges": "ci.safetensors"}
    truth = task.ground_truth(model)
    result = {"model": model.name, "task": task.name, "metric_name": metric_name(task), "method": method,
              "ablation": ablation,
              "n_edges_total": scores.n_edges, "n_edges": circuit.n_edges, "n_nodes": len(circuit.nodes()),
              "target": target, "sized_by": sized_by,
              "faithfulness": result["faithfulness"], "cpr": curve.cpr, "cmd": curve.cmd,
              "roc_auc": roc_auc(scores, truth) if truth and not positions else None,
              "metric": {k: result[k] for k in ("metric_circuit", "metric_full", "metric_empty")},
              "curve": {"fractions": curve.fractions, "faithfulness_signed": curve.faithfulness_signed,
                        "faithfulness_absolute": curve.faithfulness_absolute},
              "ci": ci,
              **({"positions": positions, "spans": list(scores.spans), "n_graph_edges": int(circuit.edge_mask.sum()),
                  "n_graph_edges_total": model.graph.n_edges} if positions else {}),
              "seconds": round(time.perf_counter() - start, 2), "seed": seed, "n": task.n,
              "provenance": {"command": None, "python": platform.python_version(), "torch": torch.__version__,
                             "transformers": _version("transformers"), "circuitfind": _version("circuitfind"),
                             "dtype": str(model.dtype).removeprefix("torch."), "device": str(model.device),
                             "batch_size": batch_size, "options": options} | store
              | {k: v for k, v in [("reproduces", reproduces(method, scores.config))] if v}  # EAP-IG's reference
              | (provenance or {})}
    if out is not None:
        out = Path(out)

        def write(d: Path) -> None:
            scores.save(d)
            circuit.save(d / "circuit.json")
            _atomic_write(d / "result.json", lambda p: Path(p).write_text(json.dumps(result, indent=2)))
            if report:
                inspect = collect(model, test)
                _atomic_write(d / "inspect.json", lambda p: Path(p).write_text(json.dumps(inspect, indent=1)))
                as_read = lambda data: json.loads(json.dumps(data))  # noqa: E731 — what a reader of the files sees
                render(d, scores, circuit, as_read(result), as_read(inspect))
        _write_run(out, overwrite, write)
    return Run(scores, circuit, result, out)
