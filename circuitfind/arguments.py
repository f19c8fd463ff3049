"""The arguments of circuitfind's public calls: one rule each, checked in one pass before any work.

    arguments.check(model=model, task=task, edges=edges, target=target, seed=seed, ...)

Every public entry point (the calls in `circuitfind/__init__.py`, and so the command line, which calls
them) hands every argument it takes to `check` as its first act. `check` refuses a name that has no
rule (a TypeError: a programming mistake, caught by tests/test_bad_input.py, which also walks the
public signatures), so a new argument cannot skip the pass. A size is checked against the model's
graph once it is known (from `model` or `scores`, or given as `graph`). Names of methods, metrics and
options are checked by their registries (`methods.check_options`, `metrics.resolve_metric`); the
rules here need nothing but the value.

The one rule for a public call's `model` argument: a loaded `CircuitModel`, never a name (loading is
slow and takes a dtype and device, so it is the caller's, with `cf.load_model`); a name is refused
with the call that loads it. A `task` may be a Task or a name, as everywhere.
"""

from __future__ import annotations

import math
import numbers
import os
import re

from circuitfind.errors import ConfigError, count


def _optional(rule):
    return lambda value, name, graph: None if value is None else rule(value, name, graph)


def _model(value, name, graph):
    from circuitfind.models.canonical import CircuitModel

    if isinstance(value, CircuitModel):
        return value
    if isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{name} must be a loaded model, got the name {str(value)!r}: load it first, "
                          f"model = cf.load_model({str(value)!r}) (a zoo name, local directory or hub id)")
    raise ConfigError(f"{name} must be a CircuitModel (cf.load_model(name), or cf.from_hf(hf_model)); "
                      f"got {type(value).__name__}")


def _task(value, name, graph):
    from circuitfind.task import Task

    if isinstance(value, (Task, str)):
        return value
    if isinstance(value, type) and issubclass(value, Task):
        raise ConfigError(f"{name} is the class {value.__name__}; pass an instance, {value.__name__}(n=100, seed=0)")
    raise ConfigError(f"{name} must be a Task or a task name ('ioi', 'path/to/file.py:MyTask'); "
                      f"got {type(value).__name__}")


def _instance(kind: str, advice: str):
    def rule(value, name, graph):
        import circuitfind.circuit as artifacts

        cls = getattr(artifacts, kind)
        if not isinstance(value, cls):
            raise ConfigError(f"{name} must be {kind}{advice}; got {type(value).__name__}")
        return value
    return rule


def _truth(value, name, graph):
    from circuitfind.circuit import Circuit

    if isinstance(value, Circuit) or (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)):
        return value
    raise ConfigError(f"{name} must be a Circuit or a list of edge names ('input->a0.h0<q>', ...); "
                      f"got {type(value).__name__}")


def _number(least: float | None = None):
    def rule(value, name, graph):
        try:  # Python, numpy and 0-d tensor numbers; not a bool or a string
            number = math.nan if isinstance(value, (bool, str)) else float(value)
        except (TypeError, ValueError, RuntimeError):
            number = math.nan
        if not math.isfinite(number) or (least is not None and number < least):
            bound = f" ≥ {least:g}" if least is not None else ""
            raise ConfigError(f"{name} must be a finite number{bound}, got {value!r}")
        return number
    return rule


def _size(of: str):
    """A count of edges or nodes, at most the graph's once it is known."""
    def rule(value, name, graph):
        most = None if graph is None else getattr(graph, of)
        return count(value, name, most=most)
    return rule


def _at_least(least: int):
    return lambda value, name, graph: count(value, name, least=least)


def _flag(value, name, graph):
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    return value


def _text(value, name, graph):
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a name (a non-empty string), got {value!r}")
    return value


def _path(value, name, graph):
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ConfigError(f"{name} must be a path (a string or pathlib.Path), got {value!r}")
    return value


def _choice(*allowed):
    def rule(value, name, graph):
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
        return value
    return rule


def _ablation(value, name, graph):
    from circuitfind.engine.ablation import ABLATIONS

    if value not in ABLATIONS:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(ABLATIONS)}")
    return value


def _metric(value, name, graph):
    if not (isinstance(value, str) or callable(value)):
        raise ConfigError(f"{name} must be a metric name or fn(logits, targets) -> [batch]; got {value!r}")
    return value


def _mapping(value, name, graph):
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a dict, got {type(value).__name__}")
    return value


def _names(value, name, graph):
    """A sweep axis: one name or a list of them."""
    values = [value] if isinstance(value, (str, int)) else value
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{name} must be a name or a list of names, got {value!r}")
    return value


def _seeds(value, name, graph):
    for s in [value] if isinstance(value, int) else _names(value, name, graph):
        count(s, f"each of {name}")
    return value


def _fractions(value, name, graph):
    if not isinstance(value, (list, tuple)) or not all(isinstance(f, numbers.Real) and not isinstance(f, bool)
                                                      and math.isfinite(float(f)) for f in value):
        raise ConfigError(f"{name} must be a list of fractions of edges in [0, 1], got {value!r}")
    return value


def _share(value, name, graph):
    number = _number()(value, name, graph)
    if not 0 <= number <= 1:
        raise ConfigError(f"{name} must be a fraction in [0, 1] (the share of the circuit's edges taken from the "
                          f"positive scores), got {value!r}")
    return number


def _level(value, name, graph):
    number = _number()(value, name, graph)
    if not 0 < number < 1:
        raise ConfigError(f"{name} must be a confidence level in (0, 1), e.g. 0.95; got {value!r}")
    return number


UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
         "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def parse_memory(value, name: str = "a memory size") -> int:
    """Bytes from a count or a string such as "20GiB", "512 MB", "1.5g"; a ConfigError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value)) if isinstance(value, str) else None
    if m is None or m.group(2).lower() not in UNITS or float(m.group(1)) <= 0:
        raise ConfigError(f"{name} must be a positive number of bytes or a string like '20GiB', '512MB'; "
                          f"got {value!r}")
    return int(float(m.group(1)) * UNITS[m.group(2).lower()])


def _memory(value, name, graph):
    return parse_memory(value, name)


def _store_on(value, name, graph):
    from circuitfind.engine.offload import STORES

    if value not in STORES:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, STORES))} (where the ablated-output store "
                          f"and per-example scores live); got {value!r}")
    return value


def _store_dtype(value, name, graph):
    from circuitfind.engine.offload import store_dtype_of

    return store_dtype_of(value)


SEED = _at_least(0)
RULES = {
    # what is computed on
    "model": _model, "task": _task,
    "scores": _instance("EdgeScores", " (cf.score_edges(model, task); a circuit is one point of the curve: "
                                      "cf.evaluate)"),
    "circuit": _instance("Circuit", ": prune the scores first, e.g. cf.prune(scores, edges=200)"),
    "truth": _truth,
    # how
    "method": _text, "ablation": _ablation, "metric": _optional(_metric), "split": _choice("train", "test"),
    "strategy": _text, "ranking": _text, "executor": _text, "dtype": _text, "device": _text,
    "positions": _optional(_choice("spans", "tokens")),
    # sizes and numbers
    "edges": _optional(_size("n_edges")), "nodes": _optional(_size("n_senders")),
    "threshold": _optional(_number()), "target": _number(least=0.0),
    "n": _optional(_at_least(1)), "seed": SEED, "batch_size": _optional(_at_least(1)),
    "chunk": _optional(_at_least(1)), "workers": _at_least(1), "fractions": _fractions,
    "resamples": _at_least(0), "level": _level, "reruns": _at_least(0),  # (bootstrap resamples, re-runs; 0: none)
    "tau": _number(least=0.0), "max_memory": _optional(_memory), "ratio": _optional(_share),
    "store_on": _store_on, "store_dtype": _store_dtype,
    # switches and places
    "quiet": _flag, "report": _flag, "overwrite": _flag, "per_example": _flag, "absolute": _flag,
    "remove_dangling": _flag,
    "out": _optional(_path), "store": _path, "run_dir": _path,
    "provenance": _optional(_mapping), "options": _optional(_mapping), "resources": _optional(_mapping),
    # a sweep's axes
    "models": _names, "tasks": _names, "methods": _names, "ablations": _names, "seeds": _seeds,
}


ABOUT = {"target": "the faithfulness the circuit must reach", "edges": "the circuit's size in edges",
         "nodes": "the circuit's size in nodes", "batch_size": "examples a pass", "n": "examples",
         "chunk": "circuits a forward", "max_memory": "the memory a run may use", "workers": "worker processes", "threshold": "the score an edge must reach"}


def _sized(graph, n_edges: int):
    """The sizes a graph bounds, with n_edges (edge, span) units in place of its edges."""
    from types import SimpleNamespace
    return SimpleNamespace(n_edges=n_edges, n_senders=graph.n_senders)


def check(graph=None, **values) -> dict:
    """Each value checked by the rule of its name → the values as the call should use them (counts as
    ints, numbers as floats). `model` or `scores` (checked first) gives the graph sizes are checked
    against, unless `graph` is given. A name with no rule is a TypeError: give it one in RULES."""
    unknown = sorted(set(values) - set(RULES))
    if unknown:
        raise TypeError(f"arguments.check has no rule for {', '.join(unknown)}: add one to RULES")
    out = {}
    label = lambda name: f"{name} ({ABOUT[name]})" if name in ABOUT else name  # noqa: E731
    for name in ("model", "scores"):  # first: the graph the sizes are checked against
        if name in values:
            out[name] = RULES[name](values[name], name, None)
            if graph is None and getattr(out[name], "spans", ()):  # scores sized in their (edge, span) units
                graph = _sized(out[name].graph, out[name].n_edges)
            graph = graph if graph is not None else out[name].graph
    if values.get("positions") is not None and graph is not None:  # units not counted yet: no bound on edges=
        graph = _sized(graph, 2**62)
    for name, value in values.items():
        if name not in out:
            out[name] = RULES[name](value, label(name), graph)
    return out
