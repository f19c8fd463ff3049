"""Comparison report of a whole sweep (`circuitfind report --sweep STORE`):

    figures/faithfulness-<model>-<task>.{png,pdf}   curves of every method (and ablation, seed) there
    figures/cpr_cmd.{png,pdf}                        CPR and CMD of every finished job, as bars
    tables/overlap-<model>-<task>.{md,tex}           how much the circuits there agree: edge IoU, pairwise
    tables/sweep.{md,tex}                            one row per finished job
    README.md                                        the above, linked, with the failures listed
"""

from __future__ import annotations

import re
from pathlib import Path

from circuitfind.circuit import Circuit, overlap
from circuitfind.errors import ConfigError
from circuitfind.report import _write, _write_table, figures, tables
from circuitfind.sweep import load_sweep
from circuitfind.uncertainty import overlap_intervals


def _slug(text: str) -> str:
    """A model or task name as part of a file name: "./ck-neox" → "ck_neox",
    "Qwen/Qwen2.5-0.5B" → "Qwen_Qwen2.5_0.5B"."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("._")


def _cpr_cmd(df, path: Path):
    import matplotlib.pyplot as plt

    labels = [f"{r.model}/{r.task}/{r.method}" + (f"/{r.ablation}" if df.ablation.nunique() > 1 else "")
              + (f"/s{r.seed}" if df.seed.nunique() > 1 else "") for r in df.itertuples()]
    fig, axes = plt.subplots(1, 2, figsize=(figures.COLUMN * 2, max(1.6, 0.18 * len(df) + 0.8)), sharey=True)
    ys = list(range(len(df)))
    for ax, col, title in ((axes[0], "cpr", "CPR (higher is better)"), (axes[1], "cmd", "CMD (lower is better)")):
        values = df[col].fillna(0)
        errors = None
        if f"{col}_low" in df and df[f"{col}_low"].notna().any():  # bootstrap intervals as error bars
            errors = [(values - df[f"{col}_low"]).fillna(0).clip(lower=0).tolist(),
                      (df[f"{col}_high"] - values).fillna(0).clip(lower=0).tolist()]
        ax.barh(ys, values.tolist(), color="#4c72b0", xerr=errors, error_kw={"lw": 0.8, "capsize": 2})
        ax.set_title(title)
        ax.axvline(0, color="k", lw=0.5)
    axes[0].set_yticks(ys, labels)
    return figures.save(fig, path)


def _overlap_table(part, labels, base: Path, path: Path, what: str) -> list[str]:
    """Pairwise edge IoU of the circuits of one model and task (README lines; the table written as .md and .tex)."""
    found = [(label, base / r.run_dir / "circuit.json") for label, r in zip(labels, part.itertuples()) if r.run_dir]
    circuits = {label: Circuit.load(file) for label, file in found if file.exists()}
    if len(circuits) < 2:
        return []
    names = list(circuits)
    intervals = overlap_intervals([base / r.run_dir for label, r in zip(labels, part.itertuples())
                                   if label in circuits])  # (under resampling of the prompts, where kept)

    def cell(i, j):
        iou = f"{overlap(circuits[names[i]], circuits[names[j]])['edges']['iou']:.2f}"
        return iou if intervals is None else f"{iou} [{intervals[i][j][0]:.2f}, {intervals[i][j][1]:.2f}]"
    rows = [[x] + [cell(i, j) for j in range(len(names))] for i, x in enumerate(names)]
    caption = f"Edge overlap (intersection over union) of the circuits found for {what}."
    md = _write_table(path, ["edge IoU", *names], rows, caption, f"tab:{path.name}")
    return ["How much the circuits agree (shared edges over either's):", "", md]


def write_sweep_report(store, out=None) -> Path:
    """Write the comparison figures and tables for a sweep store; return the report directory."""
    df = load_sweep(store)
    if df.empty:
        raise ConfigError(f"the sweep store {store} holds no jobs yet")
    out = Path(out) if out is not None else Path(str(store) + ".report")
    done = df[df.status == "done"].reset_index(drop=True)
    lines = [f"# Sweep report: `{Path(store).name}`", "",
             f"{len(done)} jobs done, {int((df.status == 'failed').sum())} failed.", ""]
    for (model, task), part in done.groupby(["model", "task"], sort=True):
        several = part.ablation.nunique() > 1 or part.seed.nunique() > 1
        labels = [f"{r.method}/{r.ablation}/s{r.seed}" if several else r.method for r in part.itertuples()]
        runs = dict(zip(labels, part.result))
        name = f"faithfulness-{_slug(model)}-{_slug(task)}"
        figures.curves(runs, out / "figures" / name, title=f"{task} on {model}")
        lines += [f"## {task} on {model}", "", f"![faithfulness](figures/{name}.png)", ""]
        table = out / "tables" / f"overlap-{_slug(model)}-{_slug(task)}"
        lines += _overlap_table(part, labels, Path(store).parent, table, f"{task} on {model}")
    if len(done):
        _cpr_cmd(done, out / "figures" / "cpr_cmd")
        lines += ["## CPR and CMD", "", "![CPR and CMD](figures/cpr_cmd.png)", ""]
    rows = tables.summary_rows([r for r in done.result])
    md = _write_table(out / "tables" / "sweep", tables.SUMMARY_COLUMNS, rows, "Circuits found in the sweep.",
                      "tab:sweep")
    lines += ["## All jobs", "", md]
    failed = df[df.status == "failed"]
    if len(failed):
        lines += ["## Failures", ""] + [f"- {r.model}/{r.task}/{r.method}/{r.ablation}/s{r.seed}: "
                                         f"`{r.error.splitlines()[0]}`" for r in failed.itertuples()]
    _write(out / "README.md", "\n".join(lines) + "\n")
    return out
