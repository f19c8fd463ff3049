"""Reading and writing circuitfind's files: format checks, damaged-file messages, atomic writes.

Files are written to a temporary name and renamed, so an interrupted save leaves nothing half-written.
Files are read through `read_json` and `check_format`: a damaged, foreign or newer file is refused
with a ConfigError naming it and what is wrong, and nothing read is ever written back.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


from circuitfind.errors import ConfigError
from circuitfind.graph import Graph

FORMAT_VERSION = 1
INCOMPLETE = ".incomplete"  # the mark of a run directory discover has not finished writing
MAX_GRAPH = 256  # layers, and heads: more than any model has; a damaged file's graph is not allocated


def read_json(path: str | os.PathLike, what: str) -> dict:
    """The JSON object in path (`what` it should hold, for the message), or a ConfigError naming the file and
    what is wrong with it: missing, unreadable, not JSON (truncated?), not an object."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; expected {what}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path} ({getattr(e, 'strerror', None) or e}); expected {what}") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{path} is damaged: not JSON ({e}{'; truncated?' if text.strip() else '; empty'}); "
                          f"expected {what}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is damaged: it holds a JSON {type(data).__name__}, not {what}")
    return data


def check_format(data: dict, path, kind: str) -> None:
    """Refuse a file that is not of `kind` or of a format this circuitfind does not read (a newer one: say so)."""
    found = data.get("format")
    if data.get("kind", kind) != kind:
        raise ConfigError(f"{path} holds a {data.get('kind')!r}, not a circuitfind {kind}")
    if isinstance(found, int) and not isinstance(found, bool) and found > FORMAT_VERSION:
        raise ConfigError(f"{path} was written by a newer circuitfind (format {found}; this one reads format "
                          f"{FORMAT_VERSION}): upgrade circuitfind to read it")
    if found != FORMAT_VERSION:
        raise ConfigError(f"{path} has format {found!r}, not a circuitfind {kind} of format {FORMAT_VERSION}")


def graph_from(data: dict, path) -> Graph:
    """The `graph` entry of a saved file, checked (a damaged one would build any graph, or none)."""
    g = data.get("graph")
    count = lambda v, least: isinstance(v, int) and not isinstance(v, bool) and least <= v <= MAX_GRAPH  # noqa: E731
    ok = isinstance(g, dict) and set(g) <= {"n_layers", "n_heads", "parallel", "n_experts", "shared_expert"} \
        and all(count(g.get(k), 1) for k in ("n_layers", "n_heads")) and count(g.get("n_experts", 0), 0) \
        and isinstance(g.get("parallel", False), bool) and isinstance(g.get("shared_expert", False), bool) \
        and (g.get("n_experts", 0) or not g.get("shared_expert", False))
    if not ok:
        raise ConfigError(f"{path} is damaged: its 'graph' is {g!r}, not {{'n_layers': L, 'n_heads': H, "
                          "'parallel': bool}} (and, for an expert-level graph, 'n_experts': E, 'shared_expert': bool)")
    return Graph(**g)


def refuse_incomplete(d: Path) -> None:
    """A run directory discover was interrupted writing is not a run: refused, never read as one."""
    if (d / INCOMPLETE).exists():
        raise ConfigError(f"{d} is an unfinished run (discover was interrupted while writing it): nothing in it is "
                          "a result; run discover again")


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _spans_from(meta: dict, path) -> tuple[tuple[str, ...], str | None]:
    """The span names and positions mode of a saved file (none for scores without positions), checked."""
    spans, positions = meta.get("spans", []), meta.get("positions")
    if not isinstance(spans, list) or not all(isinstance(n, str) for n in spans) or len(set(spans)) != len(spans) \
            or (spans and positions not in ("spans", "tokens")) or len(spans) > 4096:
        raise ConfigError(f"{path} is damaged: 'spans' must be a list of distinct span names and 'positions' "
                          f"'spans' or 'tokens'; got {spans!r:.80}, {positions!r}")
    return tuple(spans), positions if spans else None


def _read_scores(path: Path, shape: tuple[int, ...], with_units: bool = False):
    """The `scores` tensor of a safetensors file, of this shape and finite (with_units: and its bool `units`), or
    a ConfigError naming the file and what is wrong."""
    from safetensors import safe_open

    if not path.exists():
        raise ConfigError(f"{path} does not exist; a run directory holds its scores there")
    try:
        with safe_open(str(path), framework="pt") as f:
            if "scores" not in f.keys():
                raise ConfigError(f"{path} holds no 'scores' tensor (it has {sorted(f.keys())})")
            scores = f.get_tensor("scores")
            units = f.get_tensor("units") if with_units and "units" in f.keys() else None
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 — safetensors raises its own errors (and OSError) on a damaged file
        raise ConfigError(f"{path} is damaged: not a readable safetensors file ({type(e).__name__}: {e})") from None
    if tuple(scores.shape) != shape or not scores.is_floating_point():
        raise ConfigError(f"{path} is damaged: its scores are {scores.dtype} {tuple(scores.shape)}, but scores.json's "
                          f"graph needs float {'[dst, src, T, T]' if with_units else '[dst, src]'} = {shape}")
    if not bool(scores.isfinite().all()):
        raise ConfigError(f"{path} is damaged: {int((~scores.isfinite()).sum())} of its scores are NaN or infinite")
    if with_units:
        if units is None or tuple(units.shape) != shape:
            raise ConfigError(f"{path} is damaged: position-aware scores need their 'units' of shape {shape}")
        return scores, units.bool()
    return scores
