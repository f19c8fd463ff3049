"""The `circuitfind` command line; each subcommand mirrors one Python call.

    circuitfind zoo                    cf.models.zoo.ZOO
    circuitfind tasks [show TASK]      cf.task.builtin_tasks(), cf.load_task(TASK).examples()
    circuitfind graph MODEL            cf.load_model(MODEL).graph
"""

from __future__ import annotations

import argparse
import sys

from circuitfind.errors import CircuitfindError


def _zoo(args) -> int:
    from circuitfind.models.zoo import ZOO, is_cached

    rows = [("name", "family", "layers", "heads", "edges", "params", "source", "offline", "ground truth")]
    for e in ZOO.values():
        rows.append((e.name, e.family, str(e.layers), str(e.heads), f"{e.n_edges:,}", e.params,
                     e.location, "yes" if is_cached(e) else "no", "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _tasks(args) -> int:
    from circuitfind.task import builtin_tasks, load_task

    if args.action == "show":
        task = load_task(args.task, n=args.n, seed=args.seed, split=args.split)
        metric = task.metric if isinstance(task.metric, str) else getattr(task.metric, "__name__", "custom")
        print(f"{task.name}: {task.description} (metric: {metric})")
        for ex in task.examples():
            print(f"  clean:   {ex.clean!r}\n  corrupt: {ex.corrupt!r}\n  answer:  {ex.correct!r}  vs  {ex.wrong!r}")
        return 0
    rows = [(name, cls.metric, cls.description) for name, cls in builtin_tasks().items()]
    width = max(len(r[0]) for r in rows)
    for name, metric, description in rows:
        print(f"{name.ljust(width)}  {metric:10s}  {description}")
    return 0


def _graph(args) -> int:
    from circuitfind.models.loading import load_model

    model = load_model(args.model, dtype=args.dtype, device=args.device)
    print(model)
    print(model.graph)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="circuitfind", description="Automated circuit discovery in transformers.")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("zoo", help="list the model zoo").set_defaults(run=_zoo)
    t = sub.add_parser("tasks", help="list the built-in tasks, or show a task's examples")
    t.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    t.add_argument("task", nargs="?", help="built-in name or path/to/file.py:ClassName (with show)")
    t.add_argument("-n", type=int, default=3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--split", default="train", choices=["train", "test"])
    t.set_defaults(run=_tasks)
    g = sub.add_parser("graph", help="load a model and print its edge graph")
    g.add_argument("model", help="zoo name, local directory or hub id")
    g.add_argument("--dtype", default="float32")
    g.add_argument("--device", default="cpu")
    g.set_defaults(run=_graph)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CircuitfindError as e:
        print(f"circuitfind: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
