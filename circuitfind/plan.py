"""Plan a run's memory and time before the work: `cf.plan(model_or_config, task, method)`.

From the config alone (a `transformers` config, a zoo name, a hub id or local directory whose config.json is
at hand, or an already loaded `CircuitModel`): the canonical model is built on the meta device (no weights),
its graph counted, the task tokenized (where its prompts are text, by the model's tokenizer), and the peak
memory predicted by `engine.memory` — parameters, ablated outputs, store, gradients, the method's buffers —
with the time in plain forwards. `fit` picks the largest batch that fits a budget, or refuses with the plan
and what would fit (`MemoryPlanError`).

    p = cf.plan("gpt2", "ioi", "eap-ig")          # Plan: p.total, p.parts, p.forwards, print(p)
    p = cf.plan(model.cfg ..., task, "exact", batch_size=8, device="cuda")
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

import circuitfind.arguments as arguments
from circuitfind.arguments import parse_memory
from circuitfind.engine.memory import Shape, Work, breakdown, forwards, moved, off_device
from circuitfind.engine.offload import store_dtype_of
from circuitfind.errors import ConfigError, MemoryPlanError, count

# the plan of each method name: the masked methods by their engine call, the variants by their family's
PLANNED_AS = {"eap": "eap", "eap-node": "eap", "eap-ig": "eap-ig", "eap-ig-node": "eap-ig",
              "clean-corrupted": "clean-corrupted", "atp-star": "eap", "curve": "curve",
              "exact": "exact", "exact-node": "exact", "exact-denoising": "exact", "exact-node-denoising": "exact"}
HEADROOM = 0.9  # of the budget a plan may fill: allocator slack and what the process already holds


def available_memory(device="cpu") -> int:
    """What the device has free now: on CPU the available RAM, on CUDA the free memory of that GPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover — psutil ships with the package's dependencies
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _size(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class Plan:
    """A run's predicted peak memory (bytes by part) and time (plain forwards of the task)."""

    model: str
    task: str
    method: str
    device: str
    batch_size: int
    examples: int
    positions: int
    parts: dict[str, int] = field(default_factory=dict)
    forwards: float = 0.0
    store_on: str = "device"  # where the store lives; off the device, `off_device` bytes there and `moved` sent
    off_device: int = 0  # bytes in pinned CPU memory or on disk (not in `total`, which is the device's)
    moved: int = 0  # bytes read from there into the device over the run (gradient methods)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def working(self) -> int:
        """What the run adds to the loaded model: the total less the parameters."""
        return self.total - self.parts["parameters"]

    def fits(self, budget) -> bool:
        return self.total <= HEADROOM * parse_memory(budget)

    def __str__(self) -> str:
        rows = [f"plan: {self.method} on {self.model or 'the model'} for {self.task} ({self.device}), "
                f"{self.examples} examples × {self.positions} positions, batch {self.batch_size}"]
        rows += [f"  {name:<16} {_size(v):>12}" for name, v in self.parts.items() if v]
        rows.append(f"  {'total':<16} {_size(self.total):>12}   time ≈ {self.forwards:.1f} plain forwards")
        if self.store_on != "device":
            rows.append(f"  {'store on ' + self.store_on:<16} {_size(self.off_device):>12}   off the device"
                        + (f"; {_size(self.moved)} sent to it" if self.moved else ""))
        return "\n".join(rows)


def shape_of(model_or_config):
    """(Shape, name, meta model): from a CircuitModel, a transformers config, a zoo name, hub id or directory."""
    from circuitfind.models.canonical import CircuitModel

    if isinstance(model_or_config, CircuitModel):
        model = model_or_config
        seen, total = set(), 0
        for t in model.parameters():
            key = (t.untyped_storage().data_ptr(), t.device)
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
        return _shape(model, total), model.name, model
    config, name, tokenizer = _config_of(model_or_config)
    model, param_bytes = _meta_model(config, name)
    model.tokenizer = tokenizer
    return _shape(model, param_bytes), name, model


def _shape(model, param_bytes: int) -> Shape:
    blocks = sum(p.numel() for n, p in model.named_parameters() if n.startswith("blocks."))
    return Shape.of(model.cfg, model.graph, param_bytes, blocks)


def _config_of(source):
    """(transformers config, name, tokenizer or None) without loading weights."""
    import transformers

    if isinstance(source, transformers.PretrainedConfig):
        return source, getattr(source, "_name_or_path", "") or source.model_type, None
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError(f"plan takes a CircuitModel, a transformers config, a zoo name, a hub id or a model "
                          f"directory; got {type(source).__name__}")
    from circuitfind.models import zoo
    name = str(source)
    entry = zoo.lookup(name)
    if entry is not None and entry.source == "tracr":
        raise ConfigError(f"{name} is a compiled tracr model of a few thousand parameters: load it "
                          f"(cf.load_model({name!r})) and plan from the model")
    if entry is not None and entry.source == "hub" and entry.config is not None:
        return entry.hf_config(), name, _tokenizer(entry.location)
    where = str(zoo.SHIPPED / entry.location) if entry is not None else name
    try:
        config = transformers.AutoConfig.from_pretrained(where, trust_remote_code=False)
    except (OSError, ValueError) as e:
        from circuitfind.errors import ModelNotFoundError
        raise ModelNotFoundError(f"cannot read the config of {name!r} (a plan needs only config.json: pass a "
                                 f"directory holding it, a cached hub id, or a transformers config) ({e})") from None
    return config, name, _tokenizer(where)


def _tokenizer(where: str):
    try:
        import transformers
        return transformers.AutoTokenizer.from_pretrained(where, trust_remote_code=False, local_files_only=True)
    except Exception:  # noqa: BLE001 — token-level tasks need none; text tasks say so when batched
        return None


def _meta_model(config, name: str):
    """The canonical model of this config on the meta device, and its parameter bytes (tied weights once)."""
    import transformers

    from circuitfind.models.adapters import ADAPTERS
    from circuitfind.models.canonical import CircuitModel
    from circuitfind.models.loading import unsupported
    from circuitfind.errors import UnsupportedModelError

    if config.model_type not in ADAPTERS:
        raise UnsupportedModelError(unsupported(config.model_type, name or "this"))
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(config)
        cfg, flags, state, _ = ADAPTERS[config.model_type](hf)
        model = CircuitModel(cfg, name=name, **flags)
    seen, total = set(), 0
    for t in state.values():
        if t is None:
            continue
        base = t._base if t._base is not None else t  # a view (a tied unembedding) counted with its base
        if id(base) not in seen:
            seen.add(id(base))
            total += base.numel() * 4  # the canonical model is float32 unless loaded otherwise (plan's dtype)
    return model, total


def _task_size(model, task, split: str | None) -> tuple[int, int, str]:
    """(examples, positions, name) of the task (its test split for the curve) as batched for this model."""
    from circuitfind.task import load_task

    task = load_task(task) if isinstance(task, str) else task
    if split is not None:
        task = task.with_split(split, n=max(1, task.n // 4))
    try:
        batch = task.batch(model)
    except ConfigError as e:
        if model.tokenizer is not None:
            raise
        raise ConfigError(f"the plan needs the token length of task {task.name!r}, whose prompts are text, but no "
                          f"tokenizer of {model.name or 'this model'} is at hand offline ({e}); pass positions= and "
                          "examples= (--positions, --examples), or a directory holding the tokenizer") from None
    return batch.size, int(batch.clean.tokens.shape[1]), task.name


def plan(model_or_config, task, method: str = "eap-ig", batch_size: int | None = None, device="cpu", *,
         dtype=torch.float32, steps: int = 5, max_masks: int = 32, per_example: bool = False,
         positions: int | None = None, examples: int | None = None, store_on: str = "device",
         store_dtype=None) -> Plan:
    """The planned peak memory and time of `method` ("curve": the faithfulness curve of discover's test split)
    on this model and task, a batch of `batch_size` examples a pass (default: all). No weights are loaded.

    positions, examples: override what the task gives (e.g. a length the task's prompts will have).
    store_on, store_dtype: as `score_edges`'; off the device the store and per-example scores leave the device's
    total (a layer's columns, and a chunk of D, are staged there) for `off_device`."""
    arguments.check(method=method, batch_size=batch_size, per_example=per_example, store_on=store_on,
                    store_dtype=store_dtype)
    if method != "curve":
        from circuitfind.methods import check_store
        check_store(method, store_on, store_dtype)
    return _planner(model_or_config, task, method, device, dtype, positions, examples)(
        batch_size, steps=steps, max_masks=max_masks, per_example=per_example, store_on=store_on,
        store_dtype=store_dtype)


def _planner(model_or_config, task, method, device, dtype, positions=None, examples=None):
    """plan(batch_size, **options) for one model, task and method: the shape and task sized once."""
    if method not in PLANNED_AS:
        raise ConfigError(f"no memory plan for method {method!r}; plans exist for {', '.join(PLANNED_AS)}")
    shape, name, model = shape_of(model_or_config)
    dtype = getattr(model_or_config, "dtype", dtype)  # (a loaded model computes in its own)
    dtype_bytes = torch.empty(0, dtype=dtype).element_size()
    if not hasattr(model_or_config, "graph"):  # (a loaded model's parameters are counted as they are)
        shape = Shape(**{**shape.__dict__, "param_bytes": shape.param_bytes * dtype_bytes // 4})
    if positions is None or examples is None:
        n, p, task_name = _task_size(model, task, "test" if method == "curve" else None)
    else:
        n, p, task_name = examples, positions, getattr(task, "name", str(task))
    n, p = examples or n, positions or p
    device_type = torch.device(device).type

    def at(batch_size: int | None, *, steps: int = 5, max_masks: int = 32, per_example: bool = False,
           store_on: str = "device", store_dtype=None) -> Plan:
        b = n if batch_size is None else min(count(batch_size, "batch_size (examples a pass)", least=1), n)
        store_dtype = store_dtype_of(store_dtype) if method != "curve" else None  # (the curve's walks: the model's)
        store_bytes = None if store_dtype is None else torch.empty(0, dtype=store_dtype).element_size()
        work = Work(PLANNED_AS[method], b, n, p, steps=steps, max_masks=max_masks, per_example=per_example,
                    dtype_bytes=dtype_bytes, device_type=device_type, store_dtype_bytes=store_bytes,
                    offload=store_on != "device" and method != "curve")
        return Plan(name, task_name, method, str(device), b, n, p, breakdown(shape, work), forwards(shape, work),
                    store_on if work.offload else "device", off_device(shape, work), moved(shape, work))
    return at


def fit(model_or_config, task, method: str, max_memory=None, device="cpu", *, dtype=torch.float32,
        positions: int | None = None, examples: int | None = None, **options) -> Plan:
    """The plan at the largest batch (all examples at most) whose peak fits `max_memory` (default: what the
    device has free), or a MemoryPlanError with the plan at batch 1 and the memory that would fit it."""
    budget = budget_of(model_or_config, max_memory, device)
    at = _planner(model_or_config, task, method, device, dtype, positions, examples)
    whole = at(None, **options)
    if whole.fits(budget):
        return whole
    one = at(1, **options)
    if not one.fits(budget):
        raise MemoryPlanError(f"{method} does not fit {_size(budget)} on {device} even at one example a pass:\n"
                              f"{one}\nit needs about {_size(math.ceil(one.total / HEADROOM))}: give it more "
                              f"(max_memory=), use fewer positions, a smaller dtype (dtype='bfloat16'), the store "
                              f"off the device (store_on='cpu'), or a device with more memory")
    lo, hi, best = 1, whole.examples, one  # the largest batch known to fit, the smallest known not to
    while hi - lo > 1:
        mid = (lo + hi) // 2
        trial = at(mid, **options)
        lo, hi, best = (mid, hi, trial) if trial.fits(budget) else (lo, mid, best)
    return best


def budget_of(model_or_config, max_memory, device) -> int:
    """The bytes a run may use: max_memory, or what the device has free (plus a loaded model's own parameters,
    which the plans count and the free memory no longer holds)."""
    if max_memory is not None:
        return parse_memory(max_memory, "max_memory")
    free = available_memory(device)
    if hasattr(model_or_config, "graph") and hasattr(model_or_config, "parameters"):
        free += shape_of(model_or_config)[0].param_bytes
    return free


def batch_size_for(model, task, method: str, ablation: str, batch_size: int | None, max_memory, *,
                   options: dict | None = None, curve: bool = True, device=None, dtype=None) -> int | None:
    """The batch size discover and sweep run `method` (and the faithfulness curve) with: batch_size itself where
    its plan fits, None (all examples a pass) where that fits, else the largest that fits both; a MemoryPlanError,
    before any work, where none does. Methods without a memory plan (and tasks that take no batches) run as asked."""
    from circuitfind.methods import takes_batches

    if not takes_batches(method, ablation):
        return batch_size
    options = options or {}
    device = getattr(model, "device", "cpu") if device is None else device
    dtype = getattr(model, "dtype", torch.float32) if dtype is None else dtype
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype  # (a sweep's "bfloat16")
    budget = budget_of(model, max_memory, device)
    extra = {k: options[k] for k in ("steps", "max_masks", "store_on", "store_dtype", "per_example") if k in options}
    names = [m for m in ([method] + (["curve"] if curve else [])) if m in PLANNED_AS]
    chosen = batch_size
    for name in names:
        at = _planner(model, task, name, device, dtype)
        kw = extra if name == method else {}
        if batch_size is not None:
            p = at(batch_size, **kw)
            if not p.fits(budget):
                best = fit(model, task, name, budget, device, dtype=dtype, **kw)
                raise MemoryPlanError(f"batch_size={batch_size} does not fit {_size(budget)} on {device}:\n{p}\n"
                                      f"batch_size={best.batch_size} would ({_size(best.total)}); pass it, or more "
                                      "memory (max_memory=)")
            continue
        best = fit(model, task, name, budget, device, dtype=dtype, **kw)
        if best.batch_size < best.examples:
            chosen = best.batch_size if chosen is None else min(chosen, best.batch_size)
    return chosen
