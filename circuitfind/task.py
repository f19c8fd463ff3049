"""Tasks: clean/corrupted prompt pairs, their answers and a metric, as a small Python class.

    class CapitalTask(cf.Task):
        name = "capital"
        description = "The capital of a country; corrupted with another country."
        metric = "logit-diff"

        def example(self, rng, words):
            (country, city), (other, wrong) = rng.sample(PAIRS, 2)
            return cf.Example(clean=f"The capital of {country} is", corrupt=f"The capital of {other} is",
                              correct=" " + city, wrong=" " + wrong)

    task = CapitalTask(n=100, seed=0)            # or cf.load_task("path/to/file.py:CapitalTask", n=100)
    batch = task.batch(model)                    # tensors for this model, validated

Prompts and answers are strings for models with a tokenizer, or token ids (lists of ints) for
toy models. Examples are drawn deterministically from the seed; an example belongs to the train or
test split by a hash of its clean prompt, so no clean prompt is in both splits. `words` filters word lists to
what the model's tokenizer keeps as single tokens. Tasks never touch model internals.
"""

from __future__ import annotations

import hashlib
import importlib.util
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from circuitfind.types import Inputs
from circuitfind.errors import MetricError, TaskError
from circuitfind.metrics import METRICS, Targets, checked, non_finite_message, resolve_metric
from circuitfind.spans import span_ids, span_names

SINGLE_TOKEN_METRICS = {"logit-diff", "prob-diff", "ce"}
Prompt = str | Sequence[int]
Answer = str | int | Sequence[str] | Sequence[int]


@dataclass(frozen=True)
class Example:
    """One example: clean and corrupted prompts (text or token ids) of equal token length, the
    answer(s) the metric favours and the wrong one(s)."""

    clean: Prompt
    corrupt: Prompt
    correct: Answer  # one answer, or several (e.g. every year greater than the start year)
    wrong: Answer
    value: float | None = None  # a numerical target, for tasks scored by squared error
    # the token position (0-based, in both prompts) whose output the metric reads; default the last. A tracr
    # program's output at every position is its answer there, and some depend on what follows (non-causal models)
    answer_pos: int | None = None
    # named parts of the clean prompt {label: (start, end)}, in characters of a text prompt or tokens of a token-id
    # prompt (`circuitfind.spans.labelled` builds both); what position-aware scoring aligns examples by
    spans: dict[str, tuple[int, int]] | None = None


@dataclass(frozen=True)
class Batch:
    """A task made into tensors for one model."""

    clean: Inputs
    corrupt: Inputs
    targets: Targets
    examples: list[Example]
    # each clean position's span [batch, pos] (index into span_names; -1 padding), where the examples label spans
    spans: Tensor | None = None
    span_names: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return self.clean.batch

    def split(self, size: int) -> list["Batch"]:
        """Consecutive batches of at most `size` examples, padded as this one (same positions)."""
        cuts = [slice(start, start + size) for start in range(0, self.size, size)]
        return [Batch(self.clean.rows(s), self.corrupt.rows(s), self.targets.rows(s), self.examples[s],
                      None if self.spans is None else self.spans[s], self.span_names) for s in cuts]


class Words:
    """What a task may know of the model's vocabulary: which words are single tokens."""

    def __init__(self, tokenizer=None, vocab_size: int | None = None):
        self.tokenizer, self.vocab_size = tokenizer, vocab_size

    def single(self, words: Sequence[str], prefix: str = " ") -> list[str]:
        """The words that `prefix + word` tokenizes to exactly one token that is not the unknown token
        (all of them without a tokenizer)."""
        if self.tokenizer is None:
            return list(words)
        unk = self.tokenizer.unk_token_id
        keep = []
        for w in words:
            ids = self.tokenizer(prefix + w, add_special_tokens=False)["input_ids"]
            if len(ids) == 1 and (unk is None or ids[0] != unk):
                keep.append(w)
        return keep

    def random_tokens(self, rng: random.Random, n: int, avoid: Sequence[int] = ()) -> list[int]:
        """n distinct random token ids, avoiding special tokens and `avoid`."""
        if self.vocab_size is None:
            raise TaskError("this task draws random token ids and needs the model's vocabulary (pass a model)")
        special = set(getattr(self.tokenizer, "all_special_ids", []) or []) | set(avoid)
        pool = self.vocab_size - len(special)
        if pool < n:
            raise TaskError(f"need {n} distinct tokens but the vocabulary has only {pool} usable ones")
        out: list[int] = []
        while len(out) < n:
            t = rng.randrange(self.vocab_size)
            if t not in special and t not in out:
                out.append(t)
        return out


class Task:
    """Base class of every task. Subclasses set the class attributes and implement `example`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    metric: ClassVar[str] = "logit-diff"
    higher_is_better: ClassVar[bool] = True  # for a metric given as a function; False for a loss
    # the divergence from the clean run that ACDC and edge pruning minimise unless told otherwise: "kl" for a
    # next-token distribution, "l2" for a numerical output (whose one logit's softmax is always 1)
    divergence: ClassVar[str] = "kl"
    aligned: ClassVar[bool] = True  # clean and corrupted prompts must have equal token length
    test_fraction: ClassVar[float] = 0.2
    models: ClassVar[tuple[str, ...]] = ()  # a token-level task written for these models' vocabularies only
    schema: ClassVar[tuple[str, ...]] = ()  # the order of the span names its examples label (`Example.spans`)

    def __init__(self, n: int = 100, seed: int = 0, split: str = "train"):
        if split not in ("train", "test"):
            raise TaskError(f"split must be 'train' or 'test', got {split!r}")
        if not isinstance(n, int) or n < 1:
            raise TaskError(f"n must be a positive number of examples, got {n!r}")
        self.n, self.seed, self.split = n, seed, split
        self._cache: dict[int, list[Example]] = {}

    def example(self, rng: random.Random, words: Words) -> Example:
        """One random example. Draw everything from rng, so a seed gives the same dataset."""
        raise NotImplementedError(f"{type(self).__name__} must implement example(rng, words)")

    def ground_truth(self, model, kind: str = "functional") -> list[str] | None:
        """Edge names of the known circuit in this model, where one is known (toy and tracr models).

        kind: "functional", the edges the behaviour needs (what methods are graded against; for tracr,
        ACDC's canonical circuits, derived from the program's dataflow), or "weights" (tracr only: every
        edge whose weights connect a written dimension to a read one, which is what can carry
        information at all)."""
        if kind not in ("functional", "weights"):
            raise TaskError(f"ground-truth kind is 'functional' or 'weights', got {kind!r}")
        truths = getattr(model, "ground_truth" if kind == "functional" else "ground_truth_weights", {})
        return truths.get(self.name)

    def with_split(self, split: str, n: int | None = None) -> "Task":
        """The same task on another split (and size), under the same metric (an instance's own included)."""
        other = type(self)(n=self.n if n is None else n, seed=self.seed, split=split)
        if "metric" in vars(self):  # set on this instance (load_task(metric=...)): the test split must agree
            other.metric = self.metric
        return other

    # ------------------------------------------------------------------ generation
    def examples(self, model=None) -> list[Example]:
        """The n examples of this split, filtered for the model's tokenizer when a model is given."""
        if model is not None and self.models and getattr(model, "name", None) not in self.models:
            raise TaskError(f"task {self.name!r} is written in the token ids of {', '.join(self.models)}; model "
                            f"{getattr(model, 'name', None)!r} would read them as other tokens")
        key = id(getattr(model, "tokenizer", None)) if model is not None else 0
        if key not in self._cache:
            self._cache[key] = self._generate(_words_of(model), model)
        return self._cache[key]

    def _generate(self, words: Words, model=None) -> list[Example]:
        rng = random.Random(f"{self.name or type(self).__name__}:{self.seed}")
        seen: set[str] = set()
        out: list[Example] = []
        draws: list[tuple[Example, str]] = []  # each draw and what became of it, said if too few are kept
        limit = 50 * self.n + 1000
        while len(out) < self.n and len(draws) < limit:
            ex = self._draw(rng, words)
            key = repr((ex.clean, ex.corrupt, ex.answer_pos))
            if key in seen:
                draws.append((ex, "repeated an earlier draw"))
                continue
            seen.add(key)
            # the split follows the clean prompt alone, so no clean prompt is in both splits
            if _in_test(repr(ex.clean), self.test_fraction) == (self.split == "test"):
                out.append(ex)
                draws.append((ex, ""))
            else:
                draws.append((ex, f"belongs to the {'train' if self.split == 'test' else 'test'} split"))
        if len(out) < self.n:
            raise TaskError(f"task {self.name!r} could generate only {len(out)} distinct {self.split} examples of the "
                            f"{self.n} asked for (after {len(draws)} draws, with this tokenizer's single-token words); "
                            f"{self._shortfall(draws, model)}")
        return out

    def _shortfall(self, draws: list[tuple[Example, str]], model) -> str:
        """The most common reason draws were not kept (or, with a model, cannot be used: unequal token lengths,
        an unknown answer, ...), with an example."""
        reasons: dict[str, list[str]] = {}  # kind → what each such draw was
        verdicts: dict[str, str | None] = {}
        for ex, fate in draws:
            key = repr((ex.clean, ex.corrupt))
            if model is not None and key not in verdicts:
                verdicts[key] = _unusable(self, model, ex)
            unusable = verdicts.get(key)
            if unusable:
                reasons.setdefault(unusable.split(":")[0], []).append(unusable)
            elif fate:
                reasons.setdefault(fate, []).append(f"{fate}, e.g. clean {ex.clean!r}, corrupted {ex.corrupt!r}; "
                                                    "draw more varied examples, ask for fewer, or widen the word lists")
        if not reasons:
            return "ask for fewer examples or widen the word lists"
        hits = max(reasons.values(), key=len)
        return f"the most common reason ({len(hits)} of {len(draws)} draws): {hits[0]}"

    def _draw(self, rng: random.Random, words: Words) -> Example:
        try:
            ex = self.example(rng, words)
        except (ValueError, IndexError) as e:  # e.g. rng.sample from a word list this tokenizer emptied
            raise TaskError(f"task {self.name!r} could not draw an example ({type(e).__name__}: {e}); with this "
                            "tokenizer its word lists may hold too few single-token words — widen them") from e
        if not isinstance(ex, Example):
            raise TaskError(f"{type(self).__name__}.example() must return a circuitfind Example, got "
                            f"{type(ex).__name__}")
        return ex

    # ------------------------------------------------------------------ tensors
    def batch(self, model) -> Batch:
        """The examples as tensors for `model`, validated before any forward."""
        examples = self.examples(model)
        if not examples:
            raise TaskError(f"task {self.name!r} produced no examples")
        clean, corrupt = _prompts(model, [e.clean for e in examples]), _prompts(model, [e.corrupt for e in examples])
        for i, (c, k) in enumerate(zip(clean, corrupt)):
            if self.aligned and len(c) != len(k):
                raise TaskError(f"example {i}: {_unaligned(examples[i], c, k)}")
        single = self.metric in SINGLE_TOKEN_METRICS
        correct = [_answer_ids(model, e.correct, single, self.metric) for e in examples]
        wrong = [_answer_ids(model, e.wrong, single, self.metric) for e in examples]
        for i, (c, w) in enumerate(zip(correct, wrong)):
            if examples[i].value is None and set(c) & set(w):  # numerical tasks score a value, not a choice
                raise TaskError(f"example {i}: {_ambiguous(examples[i])}")
        values = None
        if any(e.value is not None for e in examples):
            values = torch.tensor([float(e.value) for e in examples])
        device = model.device
        targets = Targets(_pad(correct).to(device), _pad(wrong).to(device),
                          values=None if values is None else values.to(device))
        at = _answer_positions(examples, clean)
        spans, names = None, ()
        if any(e.spans for e in examples):
            names = span_names(examples, self.schema)
            spans = span_ids(model, examples, clean, names).to(device)
        return Batch(_inputs(model, clean, at).to(device), _inputs(model, corrupt, at).to(device), targets, examples,
                     spans, names)

    def check_metric(self, model, batch: Batch | None = None, logits: Tensor | None = None) -> Tensor:
        """Evaluate the metric once on the clean prompts (logits [batch, vocab] if already computed);
        raise a MetricError on NaN or a wrong shape."""
        batch = batch or self.batch(model)
        with torch.no_grad():
            if logits is None:  # the model's own forward, at the answer positions (the engine sits above tasks)
                logits = model(batch.clean.tokens, batch.clean.attention_mask, at=batch.clean.answer_pos)
            if not bool(logits.isfinite().all()):  # the model's fault, not the metric's: say where
                raise MetricError(non_finite_message(model, batch.clean, f"the clean prompts of task {self.name!r}"))
            return checked(resolve_metric(self.metric)(logits, batch.targets.with_clean(logits)), batch.size,
                           f"metric {metric_name(self)!r} of task {self.name!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, n={self.n}, seed={self.seed}, split={self.split!r})"


def _unaligned(ex: Example, clean: list[int], corrupt: list[int]) -> str:
    return (f"clean prompt {ex.clean!r} is {len(clean)} tokens but corrupted prompt {ex.corrupt!r} is {len(corrupt)}; "
            "patching aligns positions, so they must be equally long (reword, or set aligned = False and use mean "
            "or zero ablation)")


def _ambiguous(ex: Example) -> str:
    return f"answer {ex.correct!r} is also a wrong answer ({ex.wrong!r}); a metric cannot tell them apart"


def _unusable(task: Task, model, ex: Example) -> str | None:
    """Why `model` cannot take this example (what `Task.batch` would refuse), or None: the check behind a
    shortfall's reason. The reason's kind comes before its first colon."""
    try:
        (c,), (k,) = _prompts(model, [ex.clean]), _prompts(model, [ex.corrupt])
        if task.aligned and len(c) != len(k):
            return "unequal token lengths: " + _unaligned(ex, c, k)
        single = task.metric in SINGLE_TOKEN_METRICS
        right, wrong = (_answer_ids(model, a, single, task.metric) for a in (ex.correct, ex.wrong))
    except TaskError as e:
        return f"an answer or prompt this model cannot take: {e}"
    if ex.value is None and set(right) & set(wrong):
        return "an answer that is also wrong: " + _ambiguous(ex)
    return None


# ---------------------------------------------------------------------- helpers
def _in_test(key: str, fraction: float) -> bool:
    digest = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    return digest < fraction * 16 ** 8


def _words_of(model) -> Words:
    if model is None:
        return Words()
    return Words(model.tokenizer, model.cfg.d_vocab)


def _prompts(model, prompts: list[Prompt]) -> list[list[int]]:
    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append(model.to_tokens(p)[0].tolist())
        else:
            ids = [int(t) for t in p]
            if any(not 0 <= t < model.cfg.d_vocab for t in ids):  # (answers index the logits, d_out wide)
                raise TaskError(f"prompt {ids} has token ids outside the model's vocabulary of {model.cfg.d_vocab}")
            out.append(ids)
    return out


def _answer_ids(model, answer: Answer, single: bool, metric: str) -> list[int]:
    answers = [answer] if isinstance(answer, (str, int)) else list(answer)
    if not answers:
        raise TaskError("an example has no answer")
    ids = []
    for a in answers:
        if isinstance(a, int):
            n = model.cfg.d_out or model.cfg.d_vocab
            if not 0 <= a < n:
                raise TaskError(f"answer id {a} is not a logit of {model.name} (0..{n - 1})")
            ids.append(a)
            continue
        toks = model.to_tokens(a, prepend_bos=False)[0].tolist()
        unk = getattr(model.tokenizer, "unk_token_id", None)
        if unk is not None and unk in toks:
            raise TaskError(f"answer {a!r} contains a word {model.name}'s tokenizer does not know (it becomes the "
                            "unknown token); reword it with words in the vocabulary")
        if single and len(toks) != 1:
            raise TaskError(f"answer {a!r} is {len(toks)} tokens for {model.name}; the {metric} metric needs "
                            "single-token answers (reword, or filter candidates with words.single(...))")
        ids.append(toks[0])
    return ids


def _pad(rows: list[list[int]]) -> Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long)


def _answer_positions(examples: list[Example], prompts: list[list[int]]) -> Tensor | None:
    """Each example's answer position [batch] where any example sets one (the last token otherwise), checked."""
    if all(e.answer_pos is None for e in examples):
        return None
    out = []
    for i, (e, ids) in enumerate(zip(examples, prompts)):
        at = len(ids) - 1 if e.answer_pos is None else e.answer_pos
        if isinstance(at, bool) or not isinstance(at, int) or not 0 <= at < len(ids):
            raise TaskError(f"example {i}: answer_pos {e.answer_pos!r} is not a position of its {len(ids)}-token "
                            f"prompt (0..{len(ids) - 1}; leave it None for the last)")
        out.append(at)
    return torch.tensor(out)


def _inputs(model, rows: list[list[int]], answer_pos: Tensor | None = None) -> Inputs:
    from circuitfind.models.canonical import pad_token_ids
    tokens, mask = pad_token_ids(rows, model.pad_token_id, "right", return_attention_mask=True)
    return Inputs.of(tokens, mask, answer_pos)


def metric_name(task) -> str:
    """A task's metric as a name: the built-in's, or the function's."""
    metric = task.metric
    return metric if isinstance(metric, str) else getattr(metric, "__name__", "custom")


# ---------------------------------------------------------------------- loading
def builtin_tasks() -> dict[str, type[Task]]:
    """Name → class of every built-in task (the modules of `circuitfind.tasks`)."""
    import importlib
    import pkgutil

    import circuitfind.tasks as pkg

    found: dict[str, type[Task]] = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"circuitfind.tasks.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Task) and obj is not Task and obj.name \
                    and obj.__module__ == module.__name__:
                found[obj.name] = obj
    return dict(sorted(found.items()))


def load_task(name_or_path: str | Task, n: int = 100, seed: int = 0, split: str = "train",
              metric: str | Callable | None = None, path: str | Path | None = None) -> Task:
    """A built-in task by name, a user task as "path/to/file.py:ClassName", or one of MIB's circuit-track
    datasets as "mib:ioi" (mcqa, arithmetic-addition, ...) from its local copy in `path` (`circuitfind.mib_tasks`).

    metric: score and evaluate this task under another metric than its own (a built-in name or
    fn(logits, targets) -> [batch]), e.g. "logit-diff" where the task's prob-diff or KL saturates."""
    if metric is not None:
        resolve_metric(metric)  # raises MetricError naming the built-ins
    if isinstance(name_or_path, Task):
        if metric is not None:
            raise TaskError("metric= is for a task loaded by name; set it on a Task instance you built yourself")
        return name_or_path
    spec = str(name_or_path)
    if path is not None and not spec.startswith("mib:"):
        raise TaskError(f"path= is for MIB's datasets ('mib:ioi', ...), not task {spec!r}")
    if spec.startswith("mib:"):
        from circuitfind.mib_tasks import mib_task

        task = mib_task(spec, path, n=n, seed=seed, split=split)
        if metric is not None:
            task.metric = metric
        return task
    if ":" in spec and spec.split(":")[0].endswith(".py"):
        cls = _task_from_file(*spec.rsplit(":", 1))
    elif spec.endswith(".py") and Path(spec).is_file():  # the class is missing: name the file's tasks
        module = _import_task_file(spec)
        found = [k for k, v in vars(module).items() if isinstance(v, type) and issubclass(v, Task) and v is not Task]
        raise TaskError(f"name the task class too: '{spec}:ClassName'"
                        + (f" (the file defines {', '.join(found)})" if found else " (the file defines no Task)"))
    else:
        tasks = builtin_tasks()
        if spec not in tasks:
            raise TaskError(f"unknown task {spec!r}; built-in tasks: {', '.join(tasks)} "
                            "(or pass 'path/to/file.py:ClassName')")
        cls = tasks[spec]
    if cls.metric not in METRICS and not callable(getattr(cls, "metric", None)):
        raise TaskError(f"task {cls.__name__} names metric {cls.metric!r}; known: {', '.join(METRICS)}")
    task = cls(n=n, seed=seed, split=split)
    if metric is not None:
        task.metric = metric
    return task


def _import_task_file(path: str):
    file = Path(path)
    if not file.is_file():
        raise TaskError(f"task file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"circuitfind_user_task_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 — report any failure of the user's file as a task error
        raise TaskError(f"task file {path!r} failed to import: {type(e).__name__}: {e}") from e
    return module


def _task_from_file(path: str, class_name: str) -> type[Task]:
    module = _import_task_file(path)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise TaskError(f"{path!r} has no class {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TaskError(f"{path}:{class_name} is not a circuitfind.Task subclass")
    if not cls.name:  # stores, reports and sweeps name a task by it
        cls.name = class_name
    return cls
