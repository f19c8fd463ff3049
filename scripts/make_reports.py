"""Regenerate the example reports under reports/ with the package's own commands (CLI), offline:

    python scripts/make_reports.py        # about two minutes on two CPU cores

reports/ioi-toy-lm/            circuitfind discover --model toy-lm --task ioi --method eap-ig
reports/tracr-reverse/         circuitfind discover --model tracr-reverse --task tracr-reverse (zero ablation; ground truth)
reports/induction-edge-pruning/ circuitfind discover --model toy-induction --task induction --method edge-pruning
reports/sweep/                 circuitfind sweep (toy-lm × 3 tasks × 3 methods) + circuitfind report --sweep
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "reports"

RUNS = {
    "ioi-toy-lm": ["--model", "toy-lm", "--task", "ioi", "--method", "eap-ig"],
    "tracr-reverse": ["--model", "tracr-reverse", "--task", "tracr-reverse", "--method", "eap-ig", "--ablation", "zero",
                      "--dtype", "float64", "-n", "60"],
    "induction-edge-pruning": ["--model", "toy-induction", "--task", "induction", "--method", "edge-pruning",
                               "--option", "sparsity=0.8", "-n", "40"],
}
SWEEP = ["--models", "toy-lm", "--tasks", "ioi,greater-than,capital-country", "--methods", "eap,eap-ig,clean-corrupted",
         "-n", "60"]


def cli(*args: str) -> None:
    print("$ circuitfind", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "circuitfind.cli", "--quiet", *args], check=True, cwd=ROOT)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, args in RUNS.items():
        shutil.rmtree(OUT / name, ignore_errors=True)
        cli("discover", *args, "--out", f"reports/{name}")
    shutil.rmtree(OUT / "sweep", ignore_errors=True)
    (OUT / "sweep").mkdir()
    cli("sweep", *SWEEP, "--store", "reports/sweep/sweep.sqlite")
    cli("report", "--sweep", "reports/sweep/sweep.sqlite", "--out", "reports/sweep")
    shutil.rmtree(OUT / "sweep" / "sweep.sqlite.runs")  # the per-job run directories: not needed for the example
    (OUT / "sweep" / "sweep.sqlite.lock").unlink(missing_ok=True)
    readme = ["# Example reports", "",
              "Made by `python scripts/make_reports.py` with the package's own commands, offline, on the shipped "
              "models. Open any `report.html` from disk (self-contained: no network).", ""]
    for name, args in RUNS.items():
        readme += [f"## {name}", "", f"`circuitfind discover {' '.join(args)} --out reports/{name}` — "
                   f"[report.html]({name}/report.html), [summary]({name}/tables/summary.md)", "",
                   (OUT / name / "tables" / "summary.md").read_text(), f"![circuit]({name}/figures/circuit.png)",
                   f"![faithfulness]({name}/figures/faithfulness.png)", ""]
    readme += ["## sweep", "", f"`circuitfind sweep {' '.join(SWEEP)} --store sweep.sqlite` then "
               "`circuitfind report --sweep sweep.sqlite` — [the sweep report](sweep/README.md)", "",
               "![CPR and CMD](sweep/figures/cpr_cmd.png)", ""]
    (OUT / "README.md").write_text("\n".join(readme))
    print(f"wrote {OUT / 'README.md'}")


if __name__ == "__main__":
    main()
