"""Discovery methods: each scores every edge of a model's graph for a task.

    cf.score_edges(model, task, method="eap-ig", ablation="corrupted", steps=5) -> EdgeScores

A method is a file with a frozen config dataclass and a `score` function built on the engine.
Positive scores mean the edge supports the task (see `methods.common`).
"""

from __future__ import annotations

import dataclasses
import numbers
import time
import types
import typing

import circuitfind.arguments as arguments
from circuitfind.circuit import EdgeScores
from circuitfind.engine.offload import Place, store_dtype_of
from circuitfind.errors import ConfigError, MetricError
from circuitfind.methods import acdc, atp_star, eap, eap_gp, eap_ig, edge_pruning, ensemble, exact, ifr, positional, relp
from circuitfind.metrics import non_finite_message, non_finite_node
from circuitfind.task import Task, load_task

# name → (score function, config class, fixed options)
METHODS = {
    "eap": (eap.score, eap.EAPConfig, {"level": "edge"}),
    "eap-ig": (eap_ig.score, eap_ig.EAPIGConfig, {"variant": "inputs", "level": "edge"}),
    "eap-ig-activations": (eap_ig.score, eap_ig.EAPIGConfig,
                           {"variant": "node-outputs", "points": "right", "level": "edge"}),
    "eap-node": (eap.score, eap.EAPConfig, {"level": "node"}),
    "eap-ig-node": (eap_ig.score, eap_ig.EAPIGConfig, {"variant": "inputs", "level": "node"}),
    "clean-corrupted": (eap_ig.score, eap_ig.EAPIGConfig, {"variant": "clean-corrupted", "level": "edge"}),
    "eap-ig-edges": (eap_ig.score, eap_ig.EAPIGConfig, {"variant": "edges", "points": "right", "level": "edge"}),
    "exact": (exact.score, exact.ExactConfig, {"level": "edge", "direction": "noising"}),
    "exact-node": (exact.score, exact.ExactConfig, {"level": "node", "direction": "noising"}),
    "exact-denoising": (exact.score, exact.ExactConfig, {"level": "edge", "direction": "denoising"}),
    "exact-node-denoising": (exact.score, exact.ExactConfig, {"level": "node", "direction": "denoising"}),
    "acdc": (acdc.score, acdc.ACDCConfig, {}),
    "ifr": (ifr.score, ifr.IFRConfig, {}),
    "edge-pruning": (edge_pruning.score, edge_pruning.EdgePruningConfig, {}),
    "atp-star": (atp_star.score, atp_star.AtPStarConfig, {}),
    "ensemble": (ensemble.score, ensemble.EnsembleConfig, {}),
    "relp": (relp.score, relp.RelPConfig, {}),
    "eap-gp": (eap_gp.score, eap_gp.EAPGPConfig, {}),
}
LONG_RUNNING = ("exact", "exact-denoising", "acdc", "edge-pruning", "ensemble")  # methods with a progress bar
# methods that take the task a batch of examples at a time (batch_size=): their scores, and ACDC's
# metric of each circuit, are means over examples; edge pruning's training needs the whole task at once
BATCHED = ("eap", "eap-ig", "eap-ig-activations", "eap-ig-edges", "eap-node", "eap-ig-node", "clean-corrupted", "exact",
           "exact-node", "exact-denoising", "exact-node-denoising", "acdc", "ifr", "atp-star", "relp",
           "eap-gp")
# methods whose scores are means over examples, each example's kept from the same passes (per_example=True)
PER_EXAMPLE = ("eap", "eap-ig", "eap-ig-activations", "eap-node", "eap-ig-node", "clean-corrupted", "exact",
               "exact-node", "exact-denoising", "exact-node-denoising", "relp", "eap-gp")
# methods whose store can live off the device (store_on="cpu"|"disk"), and those that take a store dtype
# (store_dtype="bfloat16": the gradient methods, whose products and sums are then float32)
OFFLOADED = ("eap", "eap-node", "eap-ig", "eap-ig-node", "clean-corrupted", "exact", "exact-node", "exact-denoising",
             "exact-node-denoising")
STORE_DTYPE = ("eap", "eap-node", "eap-ig", "eap-ig-node", "clean-corrupted")


def takes_batches(method: str, ablation: str) -> bool:
    """Can `method` take the task a batch at a time under `ablation`? Not edge pruning (it trains on the
    task whole) nor resample ablation (each example's donor is drawn from the whole task)."""
    return method in BATCHED and ablation != "resample"


def check_options(method: str, options: dict) -> dict:
    """The options as the config will hold them (numpy numbers as Python ones: configs are saved as
    JSON); a ConfigError for an unknown method, an option its config does not have or fixes, or a
    value of the wrong type."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    _, config_cls, fixed = METHODS[method]
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(options) - names
    pinned = sorted(set(options) & set(fixed))
    if pinned:  # e.g. variant on eap-ig: the variants are methods of their own
        key = pinned[0]
        others = [m for m, (_, cls, fx) in METHODS.items() if cls is config_cls and fx.get(key) != fixed[key]]
        raise ConfigError(f"method {method!r} fixes {key}={fixed[key]!r}; for another {key} use the "
                          f"method{'s' if len(others) > 1 else ''} {', '.join(others)}")
    if unknown:
        raise ConfigError(f"method {method!r} has no option {sorted(unknown)[0]!r}; its options: {sorted(names - set(fixed)) or 'none'}")
    hints = typing.get_type_hints(config_cls)
    options = {key: _one_as_list(value, hints[key]) for key, value in options.items()}
    for key, value in options.items():
        if not _fits(value, hints[key]):
            raise ConfigError(f"option {key} of method {method!r} must be {_describe(hints[key])}, got {value!r}")
    return {k: v.item() if isinstance(v, numbers.Number) and hasattr(v, "item") else v for k, v in options.items()}


def _fits(value, hint) -> bool:
    """Whether an option value has its config field's type (int, float, bool, str, Literal, tuples, | None)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if origin is tuple:  # tuple[int, ...]; a list is accepted (JSON and the command line have no tuples)
        return isinstance(value, (tuple, list)) and all(_fits(v, args[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:  # numpy scalars too
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    return isinstance(value, hint)


def _one_as_list(value, hint):
    """A single value for a list option, as a list of one (the command line's receivers=m3 is "m3")."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    for h in typing.get_args(hint) if union else (hint,):
        if typing.get_origin(h) is tuple and not isinstance(value, (tuple, list)) and _fits(value, typing.get_args(h)[0]):
            return [value]
    return value


def _plural(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_plural(a) for a in typing.get_args(hint))
    return {int: "integers", float: "numbers", str: "strings"}.get(hint, str(hint))


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is tuple:
        return "a list of " + _plural(args[0])
    return {type(None): "None", float: "a number", int: "an integer", bool: "true or false", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def score_edges(model, task: Task | str, method: str = "eap-ig", ablation: str = "corrupted", *, seed: int = 0,
                quiet: bool = True, batch_size: int | None = None, per_example: bool = False,
                positions: str | None = None, store_on: str = "device", store_dtype=None, **options) -> EdgeScores:
    """Score every edge of `model.graph` for `task` with `method`; options go to the method's config.

    batch_size: examples a pass (default: all), for tasks whose ablated outputs, held for every
    example at once, would not fit in memory; the scores are the same (up to float rounding).
    per_example: also keep each example's scores, `EdgeScores.per_example` [n, dst, src] (whose mean is the
    scores), from the same passes, for the methods that average over examples (`PER_EXAMPLE`): 4·n·dst·src
    bytes (GPT-2 small, 64 examples: 18 MB), in a memory-mapped temporary file past 2 GiB.
    positions: "spans" scores every edge at every span the task labels (`Example.spans`), "tokens" at every
    position of prompts of one length: scores [dst, src, T, T] over (query span, key span) units
    (`methods.positional`; eap, eap-ig and exact).
    store_on: where the ablated-output store (for eap and eap-ig, the sender differences D written over it) and the
    per-example scores live: "device" (default), "cpu" (pinned when the model is on a CUDA device) or "disk" (memory-
    mapped files in a temporary directory, under TMPDIR, removed when the call returns), streamed to the device a
    layer (or a chunk of senders) at a time: the same scores bit for bit, for the methods in `OFFLOADED`.
    store_dtype: the store's dtype, None (the model's) or "bfloat16" (half the bytes of float32), for the gradient
    methods (`STORE_DTYPE`): every difference, product and sum of scores stays float32 (benchmarks/offload.py gives
    the error against float32)."""
    arguments.check(model=model, task=task, method=method, ablation=ablation, seed=seed, quiet=quiet,
                    batch_size=batch_size, per_example=per_example, positions=positions, store_on=store_on,
                    store_dtype=store_dtype, options=options)
    check_store(method, store_on, store_dtype, positions)
    options = check_options(method, options)
    if batch_size is not None and method not in BATCHED:
        raise ConfigError(f"method {method!r} takes the task whole (batch_size is for {', '.join(BATCHED)}); "
                          "give it fewer examples instead")
    if per_example and method not in PER_EXAMPLE and method != "eap-ig-edges":  # (which says why itself)
        raise ConfigError(f"method {method!r} does not average over examples, so it has no per-example scores "
                          f"(those are for {', '.join(PER_EXAMPLE)}); its stability comes from re-running it on "
                          "resamples: cf.stability(..., resamples=N)")
    if positions is not None and (per_example or method not in positional.POSITIONAL):
        raise ConfigError(f"positions={positions!r} scores with {', '.join(positional.POSITIONAL)}, without "
                          f"per_example; got method {method!r}{' and per_example=True' if per_example else ''}")
    fn, config_cls, fixed = METHODS[method]
    cfg = config_cls(**{**options, **fixed})
    task = load_task(task) if isinstance(task, str) else task
    start = time.perf_counter()
    if positions is not None:
        raw, spans, units = positional.score(model, task, method, cfg, positions, ablation, seed, batch_size, quiet)
        config = dataclasses.asdict(cfg) | {"seed": seed, "n": task.n, "positions": positions,
                                            "seconds": round(time.perf_counter() - start, 3)}
        return EdgeScores(raw, model.graph, method=method, model=model.name, task=task.name, ablation=ablation,
                          config=config, spans=spans, positions=positions, units=units)
    extra = {"quiet": quiet} if method in LONG_RUNNING else {}
    if batch_size is not None:
        extra["batch_size"] = batch_size
    if per_example:
        extra["per_example"] = True
    place = None
    if store_on != "device" or store_dtype is not None:
        place = extra["place"] = Place(store_on, store_dtype_of(store_dtype))
    try:
        raw = fn(model, task, cfg, ablation=ablation, seed=seed, **extra)
    finally:
        if place is not None:
            place.close()
    raw, examples = raw if per_example else (raw, None)
    if not bool(raw.isfinite().all()):  # never handed on (nor saved): name where the run overflowed
        batch = task.batch(model)
        clean = non_finite_node(model, batch.clean) is not None
        raise MetricError(non_finite_message(model, batch.clean if clean else batch.corrupt,
                                             f"the {'clean' if clean else 'corrupted'} prompts of task {task.name!r}")
                          + f" ({int((~raw.isfinite()).sum())} {method} scores were NaN or infinite)")
    config = dataclasses.asdict(cfg) | {"seed": seed, "n": task.n, "seconds": round(time.perf_counter() - start, 3)}
    if batch_size is not None:
        config["batch_size"] = batch_size
    if place is not None:  # where the store lived, and the bytes it sent to the device and took from it
        config["store"] = {"on": store_on, "dtype": str(place.dtype).removeprefix("torch.") if place.dtype else None,
                           "moved_bytes": place.moved, "written_bytes": place.written}
    return EdgeScores(raw, model.graph, method=method, model=model.name, task=task.name, ablation=ablation, config=config,
                      per_example=examples)


def check_store(method: str, store_on: str, store_dtype, positions: str | None = None) -> None:
    """A ConfigError, before any work, where `method` cannot keep its store off the device or in another dtype."""
    if store_on != "device" and (method not in OFFLOADED or positions is not None):
        raise ConfigError(f"store_on={store_on!r} is for the methods {', '.join(OFFLOADED)} (without positions=); "
                          f"method {method!r}{' with positions=' if positions else ''} keeps its store on the device")
    if store_dtype is not None and (method not in STORE_DTYPE or positions is not None):
        raise ConfigError(f"store_dtype={store_dtype!r} is for the gradient methods {', '.join(STORE_DTYPE)} (without "
                          f"positions=), whose sums are float32; method {method!r} keeps the model's dtype (load the "
                          "model in bfloat16 for a smaller store everywhere)")


__all__ = ["BATCHED", "METHODS", "OFFLOADED", "PER_EXAMPLE", "STORE_DTYPE", "check_options", "check_store",
           "score_edges", "takes_batches"]

