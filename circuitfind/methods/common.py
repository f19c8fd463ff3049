"""What every method needs: the task's batch for the model, the ablated outputs, the objective.

Sign convention of every method: a score is the *loss of behaviour* when the edge alone is ablated,
m(clean) − m(edge ablated) for metrics where higher is better (logit-diff, prob-diff) and
m(edge ablated) − m(clean) where lower is better (kl, ce). Positive = the edge supports the task.
(Denoising exact patching, `exact.py`, scores the behaviour an edge restores to the corrupted run, with
the same sign.)
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from circuitfind.engine.ablation import ABLATIONS, ablated_outputs, mean_outputs, optimal_outputs
from circuitfind.engine.offload import Place
from circuitfind.engine.patching import clean_logits, masked_forward
from circuitfind.engine.shared_prefix import SharedPrefix, clean_run
from circuitfind.errors import ConfigError, TaskError, count
from circuitfind.metrics import DIVERGENCES, HIGHER_IS_BETTER, Targets, kl, resolve_metric
from circuitfind.task import Batch, Task, metric_name

log = logging.getLogger(__name__)


@dataclass
class Setup:
    batch: Batch
    # [src, batch|1, pos|1, d_model] what a patched edge carries (denoising: the clean run's outputs); with a
    # shared prefix, only the positions past it: walks take `shared` with it
    ablated: Tensor
    targets: Targets  # with the clean logits, for KL
    metric: object
    sign: float  # +1 if higher metric = better behaviour
    weight: float = 1.0  # this batch's share of the task's examples (batch_size=: one Setup per batch)
    shared: SharedPrefix | None = None  # the positions the clean and corrupted prompts share: masked forwards skip them
    empty_logits: Tensor | None = None  # [batch, vocab] every edge ablated (the empty circuit ∅)
    place: Place | None = None  # where `ablated` lives (`offload.Place`): the methods' walks fetch from it

    def per_example(self, logits: Tensor, metric=None) -> Tensor:
        """The metric (the task's, or the one given) per mask and example: logits [k, batch, vocab] → [k, batch]."""
        metric = self.metric if metric is None else metric
        if metric is kl:  # the clean distribution broadcast over the masks, normalised once
            return kl(logits, self.targets)
        k, b = logits.shape[:2]
        return metric(logits.reshape(k * b, -1), self.targets.repeat(k)).view(k, b)

    def per_mask(self, logits: Tensor, metric=None) -> Tensor:
        """Mean metric (the task's, or the one given) per mask: logits [k, batch, vocab] → [k]."""
        return self.per_example(logits, metric).mean(1)

    def objective(self, logits: Tensor) -> Tensor:
        """Mean metric of one run: logits [batch, vocab] → scalar."""
        return self.metric(logits, self.targets).mean()


def prepare(model, task: Task, ablation: str, seed: int = 0) -> Setup:
    """Batch the task, check the metric on the clean run, and compute the ablated sender outputs."""
    return next(iter(setups(model, task, ablation, seed)))


class Batches:
    """The Setups of a task's batches, made one at a time as they are iterated (each holds its batch's
    ablated outputs: the memory that batching saves), and how many there are."""

    def __init__(self, n: int, make: Callable[[int], Setup]):
        self._n, self._make = n, make

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Setup]:
        return (self._make(i) for i in range(self._n))


def optimal_for(model, task: Task, prompts: list) -> Tensor:
    """`optimal_outputs` over the task's prompts, trained once per (model, task): kept on the task instance,
    keyed by the model and the prompts' shape (another split or size is another task instance)."""
    cache = task.__dict__.setdefault("_optimal_ablation", {})
    key = (id(model), model.name, str(model.dtype), tuple(tuple(p.tokens.shape) for p in prompts))
    if key not in cache:
        cache[key] = optimal_outputs(model, prompts)
    return cache[key]


def setups(model, task: Task, ablation: str, seed: int = 0, batch_size: int | None = None, *,
           denoising: bool = False, share_prefix: bool = True, place: Place | None = None) -> Batches:
    """The task a batch of at most `batch_size` examples at a time (all at once by default): one Setup
    per batch, each weighted by its share of the examples, so that a method's mean over the task is
    Σ weight · its mean over each batch. Everything is checked, and the clean runs made, before the
    first Setup; each batch's ablated outputs are made when it is reached (they are the memory that
    batching saves). Mean ablations average over the whole task, a batch at a time; resample draws
    its donors from the whole task, so it runs unbatched. denoising: each Setup's `ablated` holds the
    clean run's outputs instead, what an edge is given when the corrupted run is patched toward the
    clean one (corrupted ablation only). share_prefix=False: no shared prefix, the ablated outputs at every
    position (the position-aware engine takes them so). place: where each batch's ablated outputs are kept
    (`offload.Place`, `score_edges(store_on=, store_dtype=)`)."""
    if ablation not in ABLATIONS:
        raise ConfigError(f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}")
    if denoising and ablation != "corrupted":
        raise ConfigError(f"denoising gives each edge its clean value in the corrupted run, which only corrupted "
                          f"ablation has; got ablation {ablation!r} (use ablation='corrupted', or exact)")
    batch = task.batch(model)
    if ablation == "corrupted" and not task.aligned:
        raise ConfigError(f"task {task.name!r} is not position-aligned; use mean, zero or resample ablation")
    size = batch.size if batch_size is None else count(batch_size, "batch_size (examples a pass)", least=1)
    parts = batch.split(size)
    if ablation == "resample" and len(parts) > 1:
        raise ConfigError("resample ablation draws each example's donor from the whole task, which batch_size "
                          f"splits ({len(parts)} batches); use another ablation, or no batch_size")
    with torch.no_grad():  # the clean runs, and the prefix each batch shares with its corrupted prompts
        runs = [clean_run(model, part.clean, part.corrupt if ablation == "corrupted" and share_prefix else None)
                for part in parts]
        logits = [part_logits for part_logits, _ in runs]
        for part, part_logits in zip(parts, logits):
            task.check_metric(model, part, part_logits)  # before the long work
        means = None
        if ablation in ("mean", "mean-positional"):  # over the whole task, whatever the batches
            means = mean_outputs(model, [part.clean for part in parts], positional=ablation == "mean-positional")
        if ablation == "optimal":  # trained over the whole task once, kept on the task for this model
            means = optimal_for(model, task, [part.clean for part in parts])
    name = task.metric if isinstance(task.metric, str) else None
    higher = HIGHER_IS_BETTER.get(name, task.higher_is_better)  # a built-in metric knows its direction
    metric, sign = resolve_metric(task.metric), 1.0 if higher else -1.0

    def make(i: int) -> Setup:
        part = parts[i]
        with torch.no_grad():
            shared = runs[i][1]  # (its keys and values the clean run's: the corrupted run's are the same there)
            # the empty circuit's logits come with the corrupted run's outputs; else one pass that computes no sender
            if denoising:  # the roles swapped: the clean run's outputs, patched into the corrupted run
                ablated, empty = ablated_outputs(model, "corrupted", part.corrupt, part.clean, shared=shared,
                                                 with_logits=True, place=place)
            elif means is not None:
                ablated, empty = means, None
            else:
                ablated, empty = ablated_outputs(model, ablation, part.clean, part.corrupt, seed=seed, shared=shared,
                                                 with_logits=True, place=place)
            run = part.corrupt if denoising else part.clean
            if empty is None:
                empty = masked_forward(model, run, ablated, torch.zeros_like(model.graph.edge_mask, dtype=model.dtype),
                                       shared=shared)
            # denoising patches the corrupted run, whose every edge given its clean value is the clean run
            unpatched = clean_logits(model, part.corrupt) if denoising else logits[i]
        setup = Setup(part, ablated, part.targets.with_clean(logits[i]), metric, sign, part.size / batch.size, shared,
                      empty, place)
        refuse_degenerate(setup.per_example(torch.stack([unpatched, empty])), task, ablation, setup.weight < 1)
        return setup
    return Batches(len(parts), make)


# ---------------------------------------------------------------------- metrics that cannot vary
TOLERANCE = 1e-9  # a metric that moves less than this between runs is taken as constant


def _constant(values: Tensor) -> bool:
    """Whether values [runs, batch] are the same (to TOLERANCE) in every run, for every example."""
    return bool(((values.max(0).values - values.min(0).values).abs() <= TOLERANCE).all())


def refuse_degenerate(values: Tensor, task: Task, ablation: str, part_of_task: bool = False) -> None:
    """A TaskError when the ablation changes the task's metric on no example: values [2, batch], the metric of
    the unpatched run and of the empty circuit, agree (identical clean and corrupted prompts, say), so no edge
    can matter and faithfulness, (m(C) − m(∅)) / (m(N) − m(∅)), is 0/0."""
    if not _constant(values):
        return
    what = ("the clean and corrupted prompts give" if ablation == "corrupted" else
            f"the clean run and the run with every edge {ablation}-ablated give")
    raise TaskError(f"task {task.name!r}: {what} the same {metric_name(task)} on all {values.shape[1]} examples"
                    f"{' of this batch' if part_of_task else ''}, so the clean-corrupted gap is zero: no edge can "
                    "change the behaviour and faithfulness is undefined (0/0). Make the corrupted prompts change the "
                    "answer (are they the same as the clean ones?), or use another ablation")


def refuse_constant_metric(model, setup: Setup, metric, method: str, advice: str, seed: int = 0) -> None:
    """A ConfigError when `metric` (fn(logits, targets) → [batch], e.g. the KL a method minimises) takes
    the same value on the clean run, the empty circuit and a random circuit, on every example: it cannot
    see any edge, and scores or circuits from it would be arbitrary. A distribution over one class (a
    numerical output) is named as such, before any forward."""
    name = getattr(metric, "__name__", "metric")
    if metric is kl and setup.targets.clean_logits.shape[-1] == 1:
        raise ConfigError(f"{method} measures KL divergence, but {model.name} has one output, whose softmax is 1 "
                          f"whatever the run: every KL is 0. {advice}")
    values = setup.per_example(torch.stack([setup.targets.clean_logits, setup.empty_logits]), metric)
    if not _constant(values):  # it moves between the two ends: no forward needed to know it can vary
        return
    generator = torch.Generator().manual_seed(seed)
    random = (torch.rand(model.graph.edge_mask.shape, generator=generator) < 0.5).to(model.device, model.dtype)
    with torch.no_grad():
        logits = masked_forward(model, setup.batch.clean, setup.ablated, random, shared=setup.shared)
    if _constant(torch.cat([values, setup.per_example(logits[None], metric)])):
        raise ConfigError(f"{method}'s {name} is the same (to {TOLERANCE:g}) on the clean run, the empty circuit and "
                          f"a random one, on every example: it cannot tell edges apart. {advice}")


def divergence_of(choice: str, task: Task) -> str:
    """The divergence a method minimises: `choice` ("kl", "l2", "task"), or for "divergence" the task's own
    (`Task.divergence`: KL for a next-token distribution, l2 for a numerical output)."""
    if choice != "divergence":
        return choice
    if task.divergence not in DIVERGENCES:
        raise TaskError(f"task {task.name!r} names divergence {task.divergence!r}; known: {', '.join(DIVERGENCES)}")
    return task.divergence


def refuse_gradient_at_clean_of_kl(task: Task, method: str) -> None:
    """A first-order method that takes the gradient at the clean run alone scores nothing under KL:
    KL(clean ‖ run) is at its minimum there, its gradient zero, and every score float noise."""
    if resolve_metric(task.metric) is kl:
        raise ConfigError(
            f"{method} takes the metric's gradient at the clean run alone, where KL(clean ‖ run) is at its minimum: "
            f"every score of task {task.name!r} would be 0 (float noise). Use eap-ig with steps ≥ 2 (gradients along "
            f"the path from the ablated run), or score under another metric: "
            f"load_task({task.name!r}, metric='logit-diff'), --metric logit-diff")


def warn_if_all_zero(scores: Tensor, task: Task, method: str) -> Tensor:
    """First-order scores that are all 0 (to float noise, 1e-20): the metric's gradient at the clean run vanished
    (the model already attains its optimum there: a squared error it gets exactly right, like KL). Said,
    since a circuit pruned from them is arbitrary."""
    if not bool((scores.abs() > 1e-20).any()):
        log.warning("every %s score of task %r is 0: the metric's gradient at the clean run is 0 (the model "
                    "attains its optimum there), so a circuit pruned from them is arbitrary; use eap-ig or exact",
                    method, task.name)
    return scores


def to_level(scores, graph, level: str):
    """Edge scores [(n,) dst, src] as they are, or node scores spread over each node's out-edges.

    To first order, ablating a node is ablating all its out-edges, so its score is their sum."""
    if level == "edge":
        return scores
    if level != "node":
        raise ConfigError(f"level must be 'edge' or 'node', got {level!r}")
    return on_out_edges(graph, scores.sum(-2))


def on_out_edges(graph, node_scores: Tensor) -> Tensor:
    """Node scores [(n,) src] written on each node's out-edges [(n,) dst, src]: the form every node method returns."""
    return graph.edge_mask.to(node_scores) * node_scores[..., None, :]


# ---------------------------------------------------------------------- per-example scores
EXAMPLE_MEMORY_BOUND = 2 << 30  # bytes of per-example scores held in memory; past it, a memory-mapped file


def example_buffer(n: int, graph, place: Place | None = None) -> Tensor:
    """Zeros [n, dst, src] (float32) for each example's scores: in memory up to EXAMPLE_MEMORY_BOUND bytes, past it
    in a memory-mapped temporary file (unlinked at once: the mapping holds it until the tensor is freed); in the
    place's memory-mapped files with store_on="disk"."""
    shape = (n, graph.n_receivers, graph.n_senders)
    elements = n * graph.n_receivers * graph.n_senders
    if place is not None and place.where == "disk":
        return place.zeros(shape, torch.float32, "cpu")
    if 4 * elements <= EXAMPLE_MEMORY_BOUND:
        return torch.zeros(shape)
    with tempfile.NamedTemporaryFile(prefix="circuitfind-examples-", suffix=".f32", delete=False) as f:
        f.truncate(4 * elements)
    try:
        return torch.from_file(f.name, shared=True, size=elements, dtype=torch.float32).view(shape)
    finally:
        os.unlink(f.name)


class Examples:
    """Each example's scores [n, dst, src] of a method, gathered a batch of Setups at a time (in the order
    `setups` gives them), at the method's level; their mean over the task's examples is its scores."""

    def __init__(self, graph, level: str = "edge", place: Place | None = None):
        self.graph, self.level, self.place = graph, level, place
        self.data: Tensor | None = None
        self.at = 0

    def add(self, setup: Setup, scores: Tensor) -> None:
        """scores [b, dst, src]: this batch's examples' own scores (edge level)."""
        b = scores.shape[0]
        if self.data is None:  # the task's size, from this batch's share of it
            self.data = example_buffer(round(b / setup.weight), self.graph, self.place)
        self.data[self.at: self.at + b] = to_level(scores.detach().float(), self.graph, self.level).cpu()
        self.at += b
