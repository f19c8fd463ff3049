"""MIB's circuit-track datasets (Mueller et al. 2025) read from a local copy, as MIB's own loader reads them.

    task = cf.load_task("mib:ioi", path="data/ioi", n=100, split="validation")
    task = cf.load_task("mib:arc-easy/answerPosition_counterfactual", path="data/arc_easy")  # another column

A local copy is a directory as the Hugging Face hub holds the dataset (`mib-bench/ioi`, `mib-bench/copycolors_mcqa`
with its `4_answer_choices` config, `mib-bench/arithmetic_addition`, `..._subtraction`, `mib-bench/arc_easy`,
`mib-bench/arc_challenge`): one file or more per split, named from the split (`train`, `validation`, `test`;
`data/train-00000-of-00001.parquet`, `validation.jsonl`, ...), in Parquet (needs pyarrow), JSON lines or a JSON
list of rows. Each row holds the clean prompt and its counterfactuals as columns named `*_counterfactual`, each a
row of its own (MIB_circuit_track/dataset.py, `HFEAPDataset`, in hannamw/MIB-circuit-track, read here field by field):

    ioi          prompt; metadata.indirect_object (correct, " " + name), metadata.subject (wrong, " " + name);
                 default counterfactual s2_io_flip_counterfactual.prompt
    mcqa, arc-*  prompt; choices.label[answerKey] (correct); the counterfactual's choices.label[its answerKey]
                 (wrong); default symbol_counterfactual
    arithmetic-* prompt, label (correct); random_counterfactual.prompt and .label (wrong); the rows of the
                 operator ("+" addition, "-" subtraction) alone

Rows are taken in file order, the first n a model can take (MIB's `head(n)` after its filter: single-token answers;
here also clean and counterfactual prompts of one token length, which the engine needs). The metric is logit
difference, as MIB's. Tests: tests/test_mib_tasks.py (files written there in this format, read back, and the
scores exported with `export --mib` and read back).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from circuitfind.errors import TaskError
from circuitfind.task import Example, Task, _unusable

# our name → (MIB's task name, the counterfactual column MIB defaults to)
MIB_TASKS = {
    "ioi": ("ioi", "s2_io_flip_counterfactual"),
    "mcqa": ("mcqa", "symbol_counterfactual"),
    "arithmetic-addition": ("arithmetic_addition", "random_counterfactual"),
    "arithmetic-subtraction": ("arithmetic_subtraction", "random_counterfactual"),
    "arc-easy": ("arc_easy", "symbol_counterfactual"),
    "arc-challenge": ("arc_challenge", "symbol_counterfactual"),
}
SPLITS = ("train", "validation", "test")
SUFFIXES = (".parquet", ".jsonl", ".json")


def mib_task(spec: str, path, n: int = 100, seed: int = 0, split: str = "train") -> "MIBTask":
    """The task "mib:NAME" or "mib:NAME/COLUMN_counterfactual" over the local copy at `path`."""
    name, _, column = spec.removeprefix("mib:").partition("/")
    name = name.replace("_", "-")
    if name not in MIB_TASKS:
        raise TaskError(f"unknown MIB task {name!r}; MIB's circuit-track tasks: {', '.join('mib:' + t for t in MIB_TASKS)}")
    if path is None:
        raise TaskError(f"task 'mib:{name}' reads a local copy of MIB's data: give its directory, "
                        f"load_task('mib:{name}', path=DIR) (on the command line --task-path DIR), e.g. the files of "
                        f"the hub dataset mib-bench/{MIB_TASKS[name][0]}")
    return MIBTask(name, Path(path), column or None, n=n, seed=seed, split=split)


class MIBTask(Task):
    """One MIB circuit-track task over its rows on disk (module docstring)."""

    metric: ClassVar[str] = "logit-diff"
    citation: ClassVar[str] = "Mueller et al. 2025, MIB: A Mechanistic Interpretability Benchmark (arXiv 2504.13151)"

    def __init__(self, task: str, path: Path, counterfactual: str | None = None, n: int = 100, seed: int = 0,
                 split: str = "train"):
        if split not in SPLITS:
            raise TaskError(f"MIB's splits are {', '.join(SPLITS)}; got {split!r}")
        super().__init__(n=n, seed=seed, split="train")
        self.split, self.task, self.path = split, task, Path(path)
        self.counterfactual = counterfactual or MIB_TASKS[task][1]
        self.name = f"mib:{task}" + (f"/{counterfactual}" if counterfactual else "")
        self.description = f"MIB's {MIB_TASKS[task][0]} ({self.counterfactual}) from {self.path}"
        self._rows = None

    def with_split(self, split: str, n: int | None = None) -> "MIBTask":
        other = MIBTask(self.task, self.path, None if self.counterfactual == MIB_TASKS[self.task][1]
                        else self.counterfactual, n=self.n if n is None else n, seed=self.seed, split=split)
        if "metric" in vars(self):
            other.metric = self.metric
        return other

    def rows(self) -> list[dict]:
        """This split's rows, as the files hold them."""
        if self._rows is None:
            self._rows = read_split(self.path, self.split)
        return self._rows

    def examples(self, model=None) -> list[Example]:
        key = id(getattr(model, "tokenizer", None)) if model is not None else 0
        if key not in self._cache:
            self._cache[key] = self._take(model)
        return self._cache[key]

    def _take(self, model) -> list[Example]:
        out, refused = [], []
        for i, row in enumerate(self.rows()):
            ex = self._example(row, i)
            if ex is None:
                continue
            why = None if model is None else _unusable(self, model, ex)
            if why is None:
                out.append(ex)
                if len(out) == self.n:
                    return out
            else:
                refused.append(why)
        kept = f"{len(out)} of its {len(self.rows())} {self.split} rows"
        reason = f"; the most common reason a row was left out: {max(refused, key=refused.count)}" if refused else ""
        raise TaskError(f"{self.name} has {kept} usable, fewer than the {self.n} asked for{reason} (ask for fewer "
                        "examples, or another split)")

    def _example(self, row: dict, i: int) -> Example | None:
        """One row as an example, or None where MIB's filter leaves it out (another operator, no counterfactual)."""
        cf = row.get(self.counterfactual)
        if self.task.startswith("arithmetic"):
            operator = "-" if self.task.endswith("subtraction") else "+"
            if row.get("operator", operator) != operator or not cf or cf.get("prompt") is None:
                return None
        if not isinstance(cf, dict):
            columns = sorted(k for k in row if k.endswith("_counterfactual"))
            raise TaskError(f"row {i} of {self.path} ({self.split}) has no counterfactual column "
                            f"{self.counterfactual!r}; its counterfactual columns: {', '.join(columns) or 'none'} "
                            f"(name one: 'mib:{self.task}/COLUMN')")
        try:
            if self.task == "ioi":
                meta = row["metadata"]
                return Example(row["prompt"], cf["prompt"], " " + meta["indirect_object"], " " + meta["subject"])
            if self.task.startswith("arithmetic"):
                return Example(row["prompt"], cf["prompt"], str(row["label"]), str(cf["label"]))
            return Example(row["prompt"], cf["prompt"], str(row["choices"]["label"][int(row["answerKey"])]),
                           str(cf["choices"]["label"][int(cf["answerKey"])]))
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise TaskError(f"row {i} of {self.path} ({self.split}) is not in MIB's {MIB_TASKS[self.task][0]} format: "
                            f"{type(e).__name__} {e} (expected fields: see circuitfind.mib_tasks)") from e


def split_files(path: Path, split: str) -> list[Path]:
    """The files of one split under `path` (itself, or anywhere below it), in name order."""
    if not path.exists():
        raise TaskError(f"MIB data directory {str(path)!r} does not exist")
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in SUFFIXES
                   and (f.name.startswith(split) or f.parent.name == split))
    if not files:
        raise TaskError(f"no {split} split under {str(path)!r}: expected files named {split}*.parquet, "
                        f"{split}*.jsonl or {split}*.json (as the hub holds them, e.g. data/{split}-00000-of-00001.parquet)")
    folders = sorted({str(f.parent) for f in files})
    if len(folders) > 1:  # a dataset with configs (copycolors_mcqa's 2_answer_choices, 4_answer_choices, ...)
        raise TaskError(f"{split} files in {len(folders)} folders under {str(path)!r} ({', '.join(folders)}): give "
                        "the one folder as path= (MIB's mcqa reads 4_answer_choices)")
    return files


def read_split(path: Path, split: str) -> list[dict]:
    """Every row of one split, file after file."""
    rows = []
    for file in split_files(path, split):
        if file.suffix == ".parquet":
            try:
                import pandas as pd
                frame = pd.read_parquet(file)
            except ImportError as e:
                raise TaskError(f"reading {file} needs pyarrow (pip install pyarrow), or save the split as JSON lines "
                                "(datasets: ds.to_json(...))") from e
            rows += [_plain(r) for r in frame.to_dict("records")]
            continue
        text = file.read_text()
        try:
            data = json.loads(text) if file.suffix == ".json" and text.lstrip().startswith("[") else \
                [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise TaskError(f"{file} is not JSON lines nor a JSON list of rows: {e}") from e
        rows += data
    return rows


def _plain(value):
    """A Parquet row's numpy arrays and scalars as the lists and numbers JSON would give."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
