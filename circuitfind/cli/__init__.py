"""The `circuitfind` command line; each subcommand mirrors one Python call.

    circuitfind zoo                    cf.models.zoo.ZOO
    circuitfind tasks [show TASK]      cf.task.builtin_tasks(), cf.load_task(TASK).examples()
    circuitfind discover --model M --task T --method X --out DIR    cf.discover(model, T, X, out=DIR)
    circuitfind stability --model M --task T --method X --edges N   cf.stability(model, T, X, edges=N)
    circuitfind sweep --models a,b --tasks t --methods x,y --store S    cf.sweep(models=[a, b], ..., store=S)
    circuitfind report DIR             cf.report.write_report(DIR)
    circuitfind report --sweep S       circuitfind.sweep.report.write_sweep_report(S)
    circuitfind graph --model M        cf.load_model(M).graph
    circuitfind inspect lens|why|generate|patchscope|top|flow ...   circuitfind.inspect.*
    circuitfind export DIR --eap-ig FILE                             circuitfind.interop.save_eap_ig
    circuitfind compare A B [C ...]    cf.overlap(Circuit.load(A), Circuit.load(B)) for each pair
    circuitfind serve [--model M] [--sae M=PATH] [--runs DIR | --sweep S]  circuitfind.serve.serve(...)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from circuitfind.cli.tools import check_fits_before_loading, compare, export, graph, inspect, plan, serve
from circuitfind.errors import CircuitfindError


def _zoo(args) -> int:
    from circuitfind.models.zoo import ZOO, ground_truth_summary, is_cached

    rows = [("name", "family", "layers", "heads", "edges", "params", "source", "offline", "ground truth")]
    for e in ZOO.values():
        truth = ground_truth_summary(e)
        rows.append((e.name, e.family, str(e.layers), str(e.heads), f"{e.n_edges:,}", e.params,
                     e.location, "yes" if is_cached(e) else "no", truth))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _tasks(args) -> int:
    from circuitfind.task import builtin_tasks, load_task, metric_name

    if args.action == "show":
        task = load_task(args.task, n=args.n, seed=args.seed, split=args.split, metric=args.metric, path=args.task_path)
        model = None
        if args.model:  # the examples this model sees (a task may keep the words it holds as one token)
            from circuitfind.models.loading import load_model

            model = load_model(args.model, tokenizer=args.tokenizer)
        about = f": {task.description}" if task.description else ""  # a user's task may have none
        print(f"{task.name}{about} (metric: {metric_name(task)})")
        for ex in task.examples(model):
            print(f"  clean:   {ex.clean!r}\n  corrupt: {ex.corrupt!r}\n  answer:  {ex.correct!r}  vs  {ex.wrong!r}")
        if model is not None:  # every check discover makes before its first forward
            batch = task.batch(model)
            task.check_metric(model, batch)
            lengths = sorted({int(n) for n in batch.clean.attention_mask.sum(1)})
            span = str(lengths[0]) if len(lengths) == 1 else f"{lengths[0]}–{lengths[-1]}"
            print(f"checked for {model.name}: prompts of {span} tokens, clean and corrupted alike; the answers are "
                  "tokens it can name; the metric is finite")
        return 0
    rows = [(name, metric_name(cls), cls.description) for name, cls in builtin_tasks().items()]
    width = max(len(r[0]) for r in rows)
    for name, metric, description in rows:
        print(f"{name.ljust(width)}  {metric:10s}  {description}")
    return 0


def _options(items) -> dict:
    """--option KEY=VALUE items → the method's options (values typed as `_option_value` reads them)."""
    from circuitfind.errors import ConfigError

    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--option takes KEY=VALUE, got {item!r}")
        options[key.replace("-", "_")] = _option_value(value)
    return options


def _stability(args) -> int:
    import circuitfind.arguments as arguments
    from circuitfind.errors import ConfigError
    from circuitfind.models.loading import load_model
    from circuitfind.task import load_task
    from circuitfind.uncertainty import stability

    options = _options(args.option)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds takes comma-separated integers, e.g. 0,1,2; got {args.seeds!r}") from None
    # every argument before the task or the model loads (the size against the graph once it is known)
    arguments.check(method=args.method, edges=args.edges, nodes=args.nodes, resamples=args.resamples, seeds=seeds,
                    ablation=args.ablation, seed=args.seed, level=args.level, n=args.n, options=options)
    task = load_task(args.task, n=args.n, metric=args.metric, path=args.task_path)
    model = load_model(args.model, experts=args.experts)
    st = stability(model, task, args.method, edges=args.edges, nodes=args.nodes, resamples=args.resamples,
                   seeds=seeds, ablation=args.ablation, seed=args.seed, level=args.level, quiet=False, **options)
    print(st)
    if args.json:
        Path(args.json).write_text(json.dumps(st.summary() | {"always": st.always, "sometimes": st.sometimes},
                                              indent=2))
        print(f"wrote {args.json}")
    return 0


def _store_arguments(parser) -> None:
    """--store-on and --store-dtype, as score_edges' store_on and store_dtype."""
    parser.add_argument("--store-on", default="device", help="where the ablated-output store and per-example "
                        "scores live: device (default), cpu (pinned on CUDA) or disk (memory-mapped, under TMPDIR); "
                        "the same scores bit for bit (eap, eap-ig, exact and their variants)")
    parser.add_argument("--store-dtype", help="the store's dtype for eap and eap-ig: bfloat16 (half the bytes; every "
                        "product and sum float32) or float32 (default: the model's dtype)")


def _device_map(value):
    """--device-map: None, "auto", or a JSON object of module name → device."""
    if value is None or value == "auto":
        return value
    import json

    from circuitfind.errors import ConfigError
    try:
        return json.loads(value)
    except ValueError as e:
        raise ConfigError(f"--device-map must be auto or a JSON object such as '{{\"model.layers.0\": 0, ...}}'; "
                          f"got {value!r} ({e})") from None


def _discover(args) -> int:
    from circuitfind.discover import check_run, discover, split_reruns
    from circuitfind.errors import ConfigError
    from circuitfind.models.loading import load_model
    from circuitfind.task import load_task

    options = _options(args.option)
    reruns, options = split_reruns(args.method, options)  # acdc etc.: --option resamples=N is --reruns N
    reruns = reruns or args.reruns
    # every argument, the method's options and the run directory, before anything loads
    check_run(method=args.method, options=options, out=args.out, overwrite=args.overwrite, ablation=args.ablation,
              edges=args.edges, target=args.target, n=args.n, seed=args.seed, batch_size=args.batch_size,
              resamples=args.resamples, level=args.level, reruns=reruns, positions=args.positions,
              max_memory=args.max_memory, store_on=args.store_on, store_dtype=args.store_dtype)
    check_fits_before_loading(args)
    held = args.out is not None and Path(args.out).is_dir() and any(Path(args.out).iterdir())
    task = load_task(args.task, n=args.n, seed=args.seed, metric=args.metric, path=args.task_path)
    model = load_model(args.model, tokenizer=args.tokenizer, dtype=args.dtype, device=args.device,
                       experts=args.experts, device_map=_device_map(args.device_map))
    try:
        run = discover(model, task, args.method, args.ablation, out=args.out, edges=args.edges, target=args.target,
                       n=args.n, seed=args.seed, quiet=args.quiet, report=not args.no_report,
                       batch_size=args.batch_size, overwrite=args.overwrite, resamples=args.resamples,
                       level=args.level, reruns=reruns, positions=args.positions, max_memory=args.max_memory,
                       store_on=args.store_on, store_dtype=args.store_dtype, provenance={"command": "circuitfind " + shlex.join(args.argv)}, **options)
    except KeyboardInterrupt:  # discover wrote nothing half-way: say what is on disk
        kept = (f"{args.out} keeps the run that was there" if held else
                f"nothing was written to {args.out}" if args.out else "nothing was written")
        print(f"circuitfind: interrupted; {kept} (run the same command again to redo it)", file=sys.stderr)
        return 130
    r = run.result
    auc = "" if r["roc_auc"] is None else f", ROC AUC {r['roc_auc']:.3f}"  # where the task knows the true circuit
    ci = r.get("ci") or {}

    def shown(key):  # a figure, with its interval where the run has one
        low_high = ci.get(key)
        return f"{r[key]:.3f}" + (f" [{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else "")
    print(f"{r['model']} / {r['task']} ({r['metric_name']}) / {r['method']}: "
          f"{r['n_edges']} of {r['n_edges_total']} {'(edge, span) units' if r.get('positions') else 'edges'} "
          f"({r['n_nodes']} nodes), "
          f"faithfulness {shown('faithfulness')}, CPR {shown('cpr')}, CMD {shown('cmd')}{auc}"
          + (f" ({100 * ci['level']:g}% bootstrap intervals, {ci['resamples']} resamples)" if ci.get("resamples")
             else ""))
    if ci.get("stability"):  # a method run again on resamples of the examples
        e = ci["stability"]["jaccard_edges"]
        print(f"{ci['reruns']} re-runs on resamples: Jaccard of their circuits' edges {e['median']:.3f} "
              f"[{e['interval'][0]:.3f}, {e['interval'][1]:.3f}]")
    if run.out is not None:
        print(f"wrote {run.out}/result.json, circuit.json, scores.safetensors")
        if not args.no_report:
            print(f"report: {run.out / 'report.html'}")
    return 0


def _option_value(text: str):
    """A method option from the command line: int, float, true/false, a comma-separated list of
    these (e.g. ACDC's receivers=logits,m3), or the string itself."""
    if "," in text:
        return [_option_value(part) for part in text.split(",")]
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _report(args) -> int:
    from circuitfind.errors import ConfigError

    if (args.dir is None) == (args.sweep is None):
        raise ConfigError("give either a run directory or --sweep STORE")
    if args.sweep is not None:
        from circuitfind.sweep.report import write_sweep_report

        print(f"report: {write_sweep_report(args.sweep, args.out) / 'README.md'}")
        return 0
    if Path(args.dir).is_file():  # most likely a sweep store given where a run directory goes
        raise ConfigError(f"{args.dir!r} is a file, not a run directory; for a sweep store's report: "
                          f"circuitfind report --sweep {args.dir}")
    if args.out is not None:
        raise ConfigError("--out places a sweep's report; a run directory's report is written inside it")
    from circuitfind.report import write_report

    print(f"report: {write_report(args.dir)}")
    return 0


def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _number(text: str, what: str, kind):
    """A number of the command line (an int may be written 8e9), or a ConfigError naming where it went."""
    from circuitfind.errors import ConfigError

    try:
        value = float(text)
        return kind(value) if kind is float or value.is_integer() else kind(text)
    except (ValueError, OverflowError):
        raise ConfigError(f"{what} takes {'integers' if kind is int else 'numbers'}, got {text!r}") from None


def _sweep(args) -> int:
    from circuitfind.sweep import sweep

    options: dict[str, dict] = {}
    for item in args.option or []:  # METHOD:KEY=VALUE
        method, _, kv = item.partition(":")
        key, sep, value = kv.partition("=")
        if not sep:
            from circuitfind.errors import ConfigError

            raise ConfigError(f"--option takes METHOD:KEY=VALUE, got {item!r}")
        options.setdefault(method, {})[key.replace("-", "_")] = _option_value(value)
    resources = {}
    for item in _list(args.resources or ""):  # num_cpus=1,num_gpus=1,memory=8e9
        key, _, value = item.partition("=")
        resources[key] = _number(value, f"--resources {key}", float if key == "num_gpus" else int)
    seeds = [_number(s, "--seeds", int) for s in _list(args.seeds)]
    df = sweep(_list(args.models), _list(args.tasks), _list(args.methods), _list(args.ablations), seeds,
               store=args.store, executor=args.executor, workers=args.workers,
               n=args.n, edges=args.edges, target=args.target, options=options, dtype=args.dtype, device=args.device,
               resources=resources, metric=args.metric, quiet=args.quiet, batch_size=args.batch_size,
               resamples=args.resamples, max_memory=args.max_memory, store_on=args.store_on,
               store_dtype=args.store_dtype)
    done = df[df.status == "done"] if len(df) else df
    if len(done):
        cols = ["model", "task", "method", "ablation", "seed", "n_edges", "faithfulness", "cpr", "cmd", "roc_auc"]
        table = done[cols].astype({"n_edges": int, "roc_auc": float})  # (counts came as floats, no AUC as None)
        print(table.to_string(index=False, na_rep="–", float_format=lambda v: f"{v:.3f}"))
    failed = df[df.status == "failed"] if len(df) else df
    print(f"{len(done)} done, {len(failed)} failed; store: {args.store}")
    return 0 if len(df) and (df.status == "done").all() else 1


def _method_names() -> list[str]:
    from circuitfind.methods import METHODS

    return list(METHODS)


EDGES_HELP = "circuit size (default: smallest MIB size reaching --target; acdc: the edges it kept)"
METRIC_HELP = "score and evaluate under this metric instead of the task's own: logit-diff, prob-diff, kl, ce"
TASK_PATH_HELP = "with --task mib:NAME: the directory of MIB's data for it (the hub dataset's files, e.g. mib-bench/ioi)"


RESAMPLES_HELP = ("bootstrap resamples of the examples for error bars (e.g. 1000; default 0: none): intervals of "
                  "faithfulness, CPR, CMD and, for methods that average over examples, every edge's score")
EXPERTS_HELP = "a mixture of experts' expert-level graph: each expert a sender m{l}.e{j} (load_model(experts=True))"
DTYPE_HELP = "float32 (default), float64, float16 or bfloat16 (the logits a metric reads are at least float32)"
DEVICE_HELP = "cpu (default), cuda, cuda:1, mps"


def _state(text: str):
    """A Patchscope's layer (an int) or a state or node name, as given on the command line."""
    return int(text) if text.lstrip("-").isdigit() else text


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
    t.add_argument("--split", default="train", choices=["train", "validation", "test"],
                   help="train or test (MIB's data: also validation)")
    t.add_argument("--metric", help=METRIC_HELP)
    t.add_argument("--task-path", metavar="DIR", help=TASK_PATH_HELP)
    t.add_argument("--model", help="show: the examples this model sees, checked as discover checks them")
    t.add_argument("--tokenizer", help="show: the tokenizer's directory or hub id (default: the model's own)")
    t.set_defaults(run=_tasks)
    d = sub.add_parser("discover", help="score edges, choose the smallest faithful circuit, write a run directory")
    d.add_argument("--model", required=True, help="zoo name, local directory or hub id")
    d.add_argument("--tokenizer", help="directory or hub id of the tokenizer (default: the model's own)")
    d.add_argument("--experts", action="store_true", help=EXPERTS_HELP)
    d.add_argument("--task", required=True, help="built-in task, path/to/file.py:ClassName or mib:ioi (MIB's data)")
    d.add_argument("--task-path", metavar="DIR", help=TASK_PATH_HELP)
    d.add_argument("--method", default="eap-ig", help="one of: " + ", ".join(_method_names()))
    d.add_argument("--ablation", default="corrupted", help="corrupted, mean, mean-positional, zero, resample, optimal")
    d.add_argument("--metric", help=METRIC_HELP)
    d.add_argument("--out", help="run directory to write (written whole when the run is complete)")
    d.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    d.add_argument("--edges", type=int, help=EDGES_HELP)
    d.add_argument("--target", type=float, default=0.9, help="faithfulness the circuit must reach")
    d.add_argument("-n", type=int, default=100, help="examples")
    d.add_argument("--batch-size", type=int, help="examples a pass (default: all at once; smaller for less memory)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--max-memory", help="what the run may use, e.g. 20GiB (default: what the device has free); "
                   "the batch size is chosen to fit, or the run refused before the model loads")
    _store_arguments(d)
    d.add_argument("--device-map", help="the layers over several devices, as transformers places them: auto, or "
                   "a JSON object of module name to device (in place of --device; run on CPU only, never on GPUs)")
    d.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="method option, e.g. steps=10 or receivers=logits,m3 "
                        "(an unknown key lists the method's options)")
    d.add_argument("--dtype", default="float32", help=DTYPE_HELP)
    d.add_argument("--device", default="cpu", help=DEVICE_HELP)
    d.add_argument("--no-report", action="store_true", help="skip figures, tables and report.html")
    d.add_argument("--resamples", type=int, default=0, help=RESAMPLES_HELP)
    d.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    d.add_argument("--reruns", type=int, default=0, help="acdc, edge-pruning, ifr: run again on this many bootstrap "
                   "resamples of the examples (each edge's interval and in-circuit frequency; also written "
                   "--option resamples=N; default 0)")
    d.add_argument("--positions", choices=("spans", "tokens"), help="a position-aware circuit: every edge at every "
                   "span the task labels (spans) or token position (tokens, prompts of one length); eap, eap-ig, exact")
    d.set_defaults(run=_discover)
    st = sub.add_parser("stability", help="how much of a circuit is the prompts' noise: circuits on bootstrap "
                                          "resamples of the examples (and task seeds), their Jaccard overlaps")
    st.add_argument("--model", required=True, help="zoo name, local directory or hub id")
    st.add_argument("--experts", action="store_true", help=EXPERTS_HELP)
    st.add_argument("--task", required=True, help="built-in task, path/to/file.py:ClassName or mib:ioi (MIB's data)")
    st.add_argument("--task-path", metavar="DIR", help=TASK_PATH_HELP)
    st.add_argument("--method", default="eap-ig", help="one of: " + ", ".join(_method_names()))
    st.add_argument("--ablation", default="corrupted", help="corrupted, mean, mean-positional, zero, resample, optimal")
    st.add_argument("--metric", help=METRIC_HELP)
    size = st.add_mutually_exclusive_group(required=True)
    size.add_argument("--edges", type=int, help="the circuit's size in edges")
    size.add_argument("--nodes", type=int, help="the circuit's size in nodes")
    st.add_argument("--resamples", type=int, default=20, help="bootstrap resamples of the examples (default 20)")
    st.add_argument("--seeds", default="0", help="comma-separated task sampling seeds (default 0)")
    st.add_argument("--seed", type=int, default=0, help="the bootstrap's and the method's seed (default 0)")
    st.add_argument("-n", type=int, default=100, help="examples")
    st.add_argument("--option", action="append", metavar="KEY=VALUE", help="method option, as for discover")
    st.add_argument("--level", type=float, default=0.95, help="level of the Jaccard intervals (default 0.95)")
    st.add_argument("--json", metavar="FILE", help="also write the summary and the always / sometimes edges")
    st.set_defaults(run=_stability)
    r = sub.add_parser("report", help="re-render a run directory's figures, tables and report.html (no model "
                                      "needed), or a sweep's comparison report")
    r.add_argument("dir", nargs="?", help="run directory written by discover")
    r.add_argument("--sweep", metavar="STORE", help="sweep store: write comparison figures and tables")
    r.add_argument("--out", help="where the sweep report goes (default STORE.report)")
    r.set_defaults(run=_report)
    w = sub.add_parser("sweep", help="run models × tasks × methods × ablations × seeds into a resumable store")
    w.add_argument("--models", required=True, help="comma-separated zoo names, directories or hub ids")
    w.add_argument("--tasks", required=True, help="comma-separated tasks")
    w.add_argument("--methods", required=True, help="comma-separated methods")
    w.add_argument("--ablations", default="corrupted", help="comma-separated ablations")
    w.add_argument("--metric", help=METRIC_HELP + " (every task of the sweep)")
    w.add_argument("--seeds", default="0", help="comma-separated seeds")
    w.add_argument("--store", default="sweep.sqlite", help="SQLite store (created, or resumed)")
    w.add_argument("--executor", default="local", choices=["local", "ray"])
    w.add_argument("--workers", type=int, default=1, help="local worker processes")
    w.add_argument("--resources", help="ray: per model group, e.g. num_cpus=1,num_gpus=1,memory=8e9")
    w.add_argument("-n", type=int, default=100, help="examples per job")
    w.add_argument("--batch-size", type=int, help="examples a pass, for the methods that take one (less memory)")
    w.add_argument("--resamples", type=int, default=0, help=RESAMPLES_HELP)
    w.add_argument("--max-memory", help="what the run may use, e.g. 20GiB (default: what the device has free); "
                   "the batch size is chosen to fit, or the run refused before the model loads")
    _store_arguments(w)
    w.add_argument("--edges", type=int, help=EDGES_HELP)
    w.add_argument("--target", type=float, default=0.9)
    w.add_argument("--option", action="append", metavar="METHOD:KEY=VALUE", help="method option, e.g. eap-ig:steps=10")
    w.add_argument("--dtype", default="float32", help=DTYPE_HELP)
    w.add_argument("--device", default="cpu", help=DEVICE_HELP)
    w.set_defaults(run=_sweep)
    pl = sub.add_parser("plan", help="a run's peak memory and time, planned from the model's config (no weights)")
    pl.add_argument("--model", required=True, help="zoo name, local directory or cached hub id (its config.json)")
    pl.add_argument("--task", required=True, help="built-in task or path/to/file.py:ClassName")
    pl.add_argument("--method", default="eap-ig", help="eap, eap-ig, exact, curve (the faithfulness curve), ...")
    pl.add_argument("-n", type=int, default=100, help="examples")
    pl.add_argument("--seed", type=int, default=0)
    pl.add_argument("--batch-size", type=int, help="examples a pass (default: all)")
    pl.add_argument("--steps", type=int, default=5, help="eap-ig's steps")
    pl.add_argument("--positions", type=int, help="token positions (default: the task's, by the model's tokenizer)")
    pl.add_argument("--examples", type=int, help="examples (with --positions: the task need not be tokenized)")
    pl.add_argument("--max-memory", help="also the largest batch size that fits this, e.g. 20GiB")
    _store_arguments(pl)
    pl.add_argument("--dtype", default="float32", help=DTYPE_HELP)
    pl.add_argument("--device", default="cpu", help=DEVICE_HELP)
    pl.set_defaults(run=plan)
    i = sub.add_parser("inspect", help="inspect a model's parts: lens, why, generate, patchscope, top, flow")
    i.add_argument("tool", choices=["lens", "why", "generate", "patchscope", "top", "flow"])
    i.add_argument("--model", required=True, help="zoo name, local directory or hub id")
    i.add_argument("--tokenizer", help="directory or hub id of the tokenizer (default: the model's own)")
    i.add_argument("--prompt", default="", help="the prompt (top: several, one per line)")
    i.add_argument("--node", help="a3.h5, m2, m2.n17, input, or resid:L (lens)")
    i.add_argument("--a", help="why: token A (default: the model's top prediction)")
    i.add_argument("--b", help="why: token B (default: its best other prediction)")
    i.add_argument("--ablation", default="zero", help="why: zero, or mean (over --task's clean prompts)")
    i.add_argument("--ablate", action="append", metavar="NODE", help="generate: zero-ablate a node or neuron")
    i.add_argument("--scale", action="append", metavar="NODE=FACTOR", help="generate: scale a node or neuron")
    i.add_argument("-n", type=int, default=10, help="tokens to generate")
    i.add_argument("-k", type=int, default=10, help="how many to show")
    i.add_argument("--layer", type=_state, default=0, help="patchscope: the source, a layer (the stream after it) "
                                                          "or a name: resid:L, resid_mid:L, input, a1.h2, m0")
    i.add_argument("--position", type=int, default=-1,
                   help="why, flow: the position explained; patchscope: the source position (default: the last)")
    i.add_argument("--target-model", help="patchscope: another model of the same width")
    i.add_argument("--target-prompt", default="cat -> cat; 1135 -> 1135; hello -> hello; ?",
                   help="patchscope: the prompt whose last position receives the state (default: an identity prompt)")
    i.add_argument("--target-layer", type=_state, help="patchscope: the state written (a layer, resid:L, resid_mid:L; "
                                                        "default: where the source sits in the stream)")
    i.add_argument("--task", help="top: search this task's prompts; why --ablation mean: average over them")
    i.add_argument("--examples", type=int, default=100, help="top, why: how many task examples")
    i.add_argument("--threshold", type=float, default=0.04, help="flow: τ")
    i.add_argument("--tokens", action="store_true", help="flow: the token-by-layer graph (residual states at each "
                                                         "layer and token) instead of the node graph")
    i.add_argument("--out", help="flow: write the figure here (.png and .pdf)")
    i.add_argument("--dtype", default="float32", help=DTYPE_HELP)
    i.add_argument("--device", default="cpu", help=DEVICE_HELP)
    i.set_defaults(run=inspect)
    x = sub.add_parser("export", help="write a run directory's scores and circuit as EAP-IG / MIB graph JSON")
    x.add_argument("dir", help="run directory")
    x.add_argument("--eap-ig", metavar="FILE", help="the EAP-IG graph JSON (scores and circuit)")
    x.add_argument("--mib", metavar="DIR", help="add the scores to a MIB submission folder: DIR/<task>_<model>/")
    x.add_argument("--model-name", help="the model's name in the MIB folder (default: from the scores)")
    x.add_argument("--overwrite", action="store_true", help="replace files an earlier export wrote")
    x.set_defaults(run=export)
    c = sub.add_parser("compare", help="how much circuits agree: shared edges and nodes, intersection over union")
    c.add_argument("circuits", nargs="+", help="run directories or circuit.json files (of one model)")
    c.add_argument("-k", type=int, default=10, help="edges listed as only in one circuit (two circuits)")
    c.add_argument("--figure", help="circuits of different models: draw their depth profiles to FILE(.png/.pdf)")
    c.set_defaults(run=compare)
    g = sub.add_parser("graph", help="load a model and print its edge graph")
    g.add_argument("--model", required=True, help="zoo name, local directory or hub id")
    g.add_argument("--experts", action="store_true", help=EXPERTS_HELP)
    g.add_argument("--dtype", default="float32", help=DTYPE_HELP)
    g.add_argument("--device", default="cpu", help=DEVICE_HELP)
    g.set_defaults(run=graph)
    v = sub.add_parser("serve", help="the live explorer: a local web page over a model's prompts, parts and runs")
    v.add_argument("--model", action="append", help="a model the page offers (zoo name, local dir or hub id; "
                                                    "repeatable); the zoo's offline models are always offered")
    v.add_argument("--runs", help="a folder of run directories for the runs view")
    v.add_argument("--sweep", help="a sweep store whose finished jobs the runs view shows")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs --token)")
    v.add_argument("--port", type=int, default=8765)
    v.add_argument("--token", help="the secret every request must carry (default off loopback: a generated one)")
    v.add_argument("--sae", action="append", metavar="[MODEL=]PATH",
                   help="an SAE (safetensors: W_enc, b_enc, W_dec, b_dec; the hook in its metadata) whose latents "
                        "the intervention panel offers as sae:i for MODEL (repeatable; MODEL= may be left out "
                        "with one --model)")
    v.add_argument("--device", default="cpu", help=DEVICE_HELP)
    v.set_defaults(run=serve)
    return parser


class _Warnings(logging.Handler):
    """circuitfind's warnings on the command line: `circuitfind: warning: …` on whatever sys.stderr is
    when they come (Python's fallback printed the bare message, run into the line before it)."""

    def emit(self, record):
        print(f"circuitfind: warning: {record.getMessage()}", file=sys.stderr)


def _show_warnings() -> None:
    logger = logging.getLogger("circuitfind")
    if not any(isinstance(h, _Warnings) for h in logger.handlers):
        logger.addHandler(_Warnings(logging.WARNING))


def main(argv: list[str] | None = None) -> int:
    _show_warnings()
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # for the run's provenance
    if rest:  # --quiet may come after the subcommand too
        args.quiet = args.quiet or "--quiet" in rest
        unknown = [r for r in rest if r != "--quiet"]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        if args.quiet:  # no progress bars means transformers' loading bar too
            from circuitfind.models.loading import quiet_loading

            with quiet_loading():
                return args.run(args)
        return args.run(args)
    except CircuitfindError as e:
        print(f"circuitfind: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("circuitfind: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`| head`): stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (Python's own flush at exit would fail)
        return 141
    except OSError as e:  # the disk or a path said no (full, read-only, gone): a line, not a traceback
        where = f": {e.filename}" if e.filename else ""
        print(f"circuitfind: {type(e).__name__}: {e.strerror or e}{where}", file=sys.stderr)
        return 2

