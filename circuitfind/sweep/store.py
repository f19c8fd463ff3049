"""The sweep store: one SQLite file (standard library), one row per job, keyed by a hash of the job's
full configuration. Only the driver writes it, one job per transaction, so a killed sweep leaves
either a whole row or none. Each finished job's run directory lives next to the store, in
`<store>.runs/<key>/`, moved there whole (an atomic rename) before its row is committed.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from circuitfind.errors import ConfigError

SCHEMA_VERSION = 1
FIGURES = ("faithfulness", "cpr", "cmd", "roc_auc", "n_edges", "n_edges_total")
COLUMNS = ("key", "model", "task", "method", "ablation", "seed", "config", "status", "error", "started", "finished",
           "seconds", "peak_mb", *FIGURES, "run_dir", "result")

_CREATE = f"""
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY, model TEXT NOT NULL, task TEXT NOT NULL, method TEXT NOT NULL, ablation TEXT NOT NULL,
    seed INTEGER NOT NULL, config TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    error TEXT, started REAL, finished REAL, seconds REAL, peak_mb REAL,
    {", ".join(f"{f} REAL" for f in FIGURES)}, run_dir TEXT, result TEXT);
"""


class Store:
    """Open (creating if needed) a sweep store; refuse one written under another schema, or any other file,
    before anything is written to it. readonly: open an existing store only to read it (reports)."""

    def __init__(self, path, readonly: bool = False):
        self.path = Path(path)
        if readonly:
            if not self.path.is_file():
                raise ConfigError(f"no sweep store at {str(self.path)!r}")
            # immutable (no lock files left beside it) unless a sweep is writing it now (its -wal is there)
            live = Path(str(self.path) + "-wal").exists()
            self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro{'' if live else '&immutable=1'}",
                                      uri=True, isolation_level=None)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None)  # explicit transactions below
        try:
            found = self._schema()  # read first: a file that is not a store is left as it was
            if not readonly:
                self.db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as e:  # any other file: refused before anything is written to it
            self.db.close()
            raise ConfigError(f"{self.path} is not a circuitfind sweep store, or is damaged ({e}); use a new "
                              "--store file") from None
        except ConfigError:
            self.db.close()
            raise
        if found is None and readonly:
            self.db.close()
            raise ConfigError(f"{self.path} holds no sweep (an empty database)")
        if found is None:
            with self.transaction():
                for statement in filter(str.strip, _CREATE.split(";")):  # executescript would COMMIT early
                    self.db.execute(statement)
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif found != str(SCHEMA_VERSION):
            self.db.close()
            newer = found.isdigit() and int(found) > SCHEMA_VERSION
            raise ConfigError(f"{self.path} was written by " + ("a newer circuitfind" if newer else
                              "a different sweep configuration schema") + f" (schema version {found}); this "
                              f"circuitfind reads version {SCHEMA_VERSION}. " +
                              ("Upgrade circuitfind to read it, or use a new --store file." if newer else
                               "Use a new --store file."))

    def _schema(self) -> str | None:
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return None
        if "meta" not in tables or "jobs" not in tables:
            raise ConfigError(f"{self.path} is an SQLite file but not a circuitfind sweep store")
        row = self.db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
        return row[0] if row else "unknown"

    def transaction(self):
        db = self.db

        class _Tx:
            def __enter__(self):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, kind, *_):
                db.execute("COMMIT" if kind is None else "ROLLBACK")

        return _Tx()

    @property
    def runs_dir(self) -> Path:
        return self.runs_dir_of(self.path)

    @staticmethod
    def runs_dir_of(store) -> Path:
        """Where a store's run directories live: beside it, as `<store>.runs/`."""
        path = Path(store)
        return path.with_name(path.name + ".runs")

    def status(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, status FROM jobs"))

    def record(self, job, outcome: dict) -> None:
        """Write one job's row (replacing an earlier failed attempt) in one transaction."""
        result = outcome.get("result") or {}
        row = {"key": job.key, "model": job.model, "task": job.task_label, "method": job.method,
               "ablation": job.ablation, "seed": job.seed, "config": json.dumps(job.config(), sort_keys=True),
               "status": outcome["status"], "error": outcome.get("error"), "started": outcome.get("started"),
               "finished": outcome.get("finished", time.time()), "seconds": outcome.get("seconds"),
               "peak_mb": outcome.get("peak_mb"), "run_dir": outcome.get("run_dir"),
               "result": json.dumps(result) if result else None} | {f: result.get(f) for f in FIGURES}
        with self.transaction():
            self.db.execute(f"INSERT OR REPLACE INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                            [row[c] for c in COLUMNS])

    def rows(self) -> list[dict]:
        """Every job's row, `config` and `result` parsed from JSON; a damaged store or row is named."""
        try:
            cur = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs ORDER BY model, task, method, ablation, seed")
            rows = [dict(zip(COLUMNS, r)) for r in cur]
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"{self.path} is damaged ({e}); its finished runs are in {self.runs_dir}") from None
        for r in rows:
            try:
                r["config"] = json.loads(r["config"])
                r["result"] = json.loads(r["result"]) if r["result"] else None
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{self.path} is damaged: the row of job {r['key']} holds no JSON there ({e})") from None
        return rows

    def close(self) -> None:
        self.db.close()
