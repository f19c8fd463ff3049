"""The runs view: the run directories under `--runs` (any depth) or the jobs of a sweep store (`--sweep`), each
read as `circuitfind report` reads it, and two runs' overlap. A run is named by its path relative to the root
(or by its job key in a store); nothing outside the root is ever read."""

from __future__ import annotations

import base64
from pathlib import Path

from circuitfind.circuit import Circuit
from circuitfind.errors import ConfigError
from circuitfind.report import read_run
from circuitfind.report.html import drawing_data
from circuitfind.report.spans import flat
from circuitfind.report.tables import SUMMARY_COLUMNS, summary_rows

MAX_RUNS = 500


class Runs:
    """Where the explorer finds runs: a folder of run directories, or a sweep store's finished jobs."""

    def __init__(self, root=None, store=None):
        self.root = Path(root).resolve() if root is not None else None
        self.store = Path(store) if store is not None else None
        if self.root is not None and not self.root.is_dir():
            raise ConfigError(f"--runs {str(root)!r} is not a folder; give the folder that holds run directories")
        if self.store is not None:
            from circuitfind.sweep.store import Store

            Store(self.store, readonly=True).close()  # a store, or the error that says what it is instead

    def list(self) -> list[dict]:
        """[{"name", "model", "task", "method", "faithfulness", "n_edges"}] of every complete run."""
        out = []
        for name, d in self._dirs():
            if (d / "result.json").exists() and (d / "circuit.json").exists():
                try:
                    _, _, result, _ = read_run(d)
                except ConfigError:
                    continue  # damaged or incomplete: not listed (opening it by name says why)
                out.append({"name": name, **{k: result.get(k) for k in ("model", "task", "method", "ablation",
                                                                        "faithfulness", "n_edges", "n_edges_total")}})
        return out[:MAX_RUNS]

    def _dirs(self):
        if self.root is not None:
            for result in sorted(self.root.rglob("result.json")):
                d = result.parent
                yield d.relative_to(self.root).as_posix() or ".", d
        if self.store is not None:
            from circuitfind.sweep.store import Store

            store = Store(self.store, readonly=True)
            try:
                rows = store.rows()
            finally:
                store.close()
            for row in rows:
                if row.get("status") == "done" and row.get("run_dir"):
                    d = Path(row["run_dir"])
                    yield f"job:{row['key']}", d if d.is_absolute() else self.store.parent / d

    def path(self, name: str) -> Path:
        """A listed run's directory, by name; any other name is refused (no path outside the root is read)."""
        for listed, d in self._dirs():
            if listed == name:
                return d
        raise ConfigError(f"no run named {name!r} here; the runs view lists the ones there are")

    def show(self, name: str) -> dict:
        """A run's drawing data (as report.html holds it), its summary table, curve and figures."""
        d = self.path(name)
        scores, circuit, result, inspect = read_run(d)
        scores, circuit = flat(scores, circuit)  # a position-aware run: its node-graph view
        data, start = drawing_data(scores, circuit, inspect)
        data.pop("tokenFlow", None)
        curve = result.get("curve") or {}
        figures = {}
        for fig in ("faithfulness", "heads"):
            png = d / "figures" / f"{fig}.png"
            if png.exists():
                figures[fig] = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
        return {"name": name, "drawing": data, "start": start, "n_edges": circuit.n_edges,
                "summary": {"header": list(SUMMARY_COLUMNS), "rows": summary_rows([result])},
                "curve": {k: curve.get(k) or [] for k in ("fractions", "faithfulness_signed", "faithfulness_absolute")},
                "figures": figures}

    def overlap(self, a: str, b: str) -> dict:
        """Two runs' circuits compared: shared edges, each one's own, and their intersection over union."""
        ca, cb = (read_run(self.path(n))[1] for n in (a, b))
        if ca.spans != cb.spans:
            raise ConfigError(f"{a!r} and {b!r} are over different spans ({', '.join(ca.spans) or 'none'} and "
                              f"{', '.join(cb.spans) or 'none'}): their edges cannot be compared one to one")
        if ca.graph.senders != cb.graph.senders or ca.graph.receivers != cb.graph.receivers:
            raise ConfigError(f"{a!r} and {b!r} are circuits of different graphs (models): their edges cannot be "
                              "compared one to one")
        both, either = ca.mask & cb.mask, ca.mask | cb.mask
        names = ca.graph.edge_names if not ca.spans else \
            (lambda m: Circuit(m, ca.graph, {}, ca.spans, ca.positions).edges())
        return {"a": a, "b": b, "shared": int(both.sum()), "only_a": int((ca.mask & ~cb.mask).sum()),
                "only_b": int((cb.mask & ~ca.mask).sum()),
                "iou": float(both.sum()) / max(1, int(either.sum())), "shared_edges": names(both)[:50]}
