"""The CLI's commands that look at a model or at saved circuits: graph, inspect, export, compare and serve
(`cli/__init__.py` builds the parser and runs the rest). Each mirrors one Python call, as there."""

from __future__ import annotations

from pathlib import Path

from circuitfind.uncertainty import LEVEL, overlap_intervals


def graph(args) -> int:
    from circuitfind.models.loading import load_model

    model = load_model(args.model, dtype=args.dtype, device=args.device, experts=args.experts)
    print(model)
    print(model.graph)
    return 0


def inspect(args) -> int:
    from circuitfind import inspect as ins
    from circuitfind.errors import ConfigError
    from circuitfind.inspect.common import token_str
    from circuitfind.models.loading import load_model

    if not args.prompt and not (args.tool == "top" and args.task):
        raise ConfigError(f"inspect {args.tool} needs --prompt" + (" (or --task)" if args.tool == "top" else ""))
    if args.tool in ("lens", "top") and not args.node:
        raise ConfigError(f"inspect {args.tool} needs --node: a head (a3.h5), an MLP (m2)"
                          + (", a neuron (m2.n17)" if args.tool == "top" else ", input, or resid:L"))
    if args.tool == "why" and args.ablation == "mean" and not args.task:
        raise ConfigError("inspect why --ablation mean needs --task: the prompts whose mean replaces a node")
    model = load_model(args.model, tokenizer=args.tokenizer, dtype=args.dtype, device=args.device)
    if args.tool == "lens":
        for row in ins.logit_lens(model, args.prompt, args.node, k=args.k):
            up = ", ".join(f"{t!r} {v:+.2f}" for t, v in row.promoted)
            down = ", ".join(f"{t!r} {v:+.2f}" for t, v in row.suppressed)
            print(f"{row.position:3d} {row.token!r:>14}  promotes {up}  |  suppresses {down}")
    elif args.tool == "why":
        reference = None
        if args.ablation == "mean":
            from circuitfind.task import load_task

            reference = load_task(args.task, n=args.examples)  # the mean over its clean prompts
        c = ins.why(model, args.prompt, args.a, args.b, ablation=args.ablation, reference=reference,
                    position=args.position)
        a, b = (token_str(model, t, output=True) for t in (c.a, c.b))
        print(f"logit({a!r}) - logit({b!r}) = {c.logit_diff:.4f}  (constant part {c.constant:+.4f})")
        print(f"{'node':>10}  {'total':>9}  {'direct':>9}")
        for n in c.top(args.k):
            print(f"{n.node:>10}  {n.total:+9.4f}  {n.direct:+9.4f}")
    elif args.tool == "generate":
        ivs = [ins.Intervention(n, "zero") for n in args.ablate or []]
        for item in args.scale or []:
            node, _, factor = item.partition("=")
            ivs.append(ins.Intervention(node, "scale", float(factor)))
        out = ins.compare(model, args.prompt, ivs, args.n)
        print(f"baseline:   {args.prompt}{out['baseline']}")
        print(f"intervened: {args.prompt}{out['intervened']}")
    elif args.tool == "patchscope":
        target = load_model(args.target_model, dtype=args.dtype, device=args.device) if args.target_model else None
        text = ins.patchscope(model, args.prompt, args.layer, source_position=args.position, target_model=target,
                              target_prompt=args.target_prompt, target_layer=args.target_layer,
                              max_new_tokens=args.n)
        print(text)
    elif args.tool == "top":
        from circuitfind.task import load_task

        data = load_task(args.task, n=args.examples) if args.task else args.prompt.split("\n")
        for a in ins.top_activations(model, data, args.node, k=args.k):
            print(f"{a.value:+9.4f}  example {a.example:3d} pos {a.position:3d}  {a.context}")
    elif args.tool == "flow" and args.tokens:  # the token-by-layer graph
        from circuitfind.report import figures

        graph = ins.flow(model, args.prompt, args.threshold, position=args.position)
        print(graph)
        for e in graph.edges:
            (r0, r1), heads = e.rows, ", ".join(f"h{h} {s:.2f}" for h, s in e.heads[:3])
            print(f"  L{e.layer} {e.kind:5s} {graph.tokens[e.src]!r}@{e.src} (row {r0}) -> {graph.tokens[e.dst]!r}@{e.dst} "
                  f"(row {r1})  {e.weight:.3f}{f'  [{heads}]' if heads else ''}")
        if args.out:
            out = Path(args.out).with_suffix("")
            figures.token_flow(graph, out)
            print(f"figure: {out.with_suffix('.png')}")
    elif args.tool == "flow":
        from circuitfind.report import figures

        scores, graph = ins.flow_graph(model, args.prompt, args.threshold, position=args.position)
        print(f"{graph.n_edges} edges at threshold {args.threshold}:")
        for name in graph.edges():
            d, s = graph.graph.edge_index(name)
            print(f"  {name}  {float(scores.scores[d, s]):.3f}")
        if args.out:
            out = Path(args.out).with_suffix("")
            figures.circuit(scores, graph, out, title=f"information flow (τ={args.threshold})")
            print(f"figure: {out.with_suffix('.png')}")
    return 0


def export(args) -> int:
    from circuitfind.circuit import Circuit, EdgeScores
    from circuitfind.errors import ConfigError
    from circuitfind.interop import mib_path, mib_task_name, save_eap_ig, write_mib_submission

    if not (args.eap_ig or args.mib):
        raise ConfigError("say where to write: --eap-ig FILE and/or --mib DIR")
    scores = EdgeScores.load(args.dir)
    name = args.model_name or scores.model.split("/")[-1]
    task = mib_task_name(scores.task)
    held = [p for p in ([Path(args.eap_ig)] if args.eap_ig else [])
            + ([mib_path(args.mib, task, name)] if args.mib else []) if p.exists()]
    if held and not args.overwrite:  # an earlier export is data, as a run directory is: replaced only when asked
        raise ConfigError(f"{held[0]} exists; pass --overwrite to replace it, or write elsewhere")
    if args.eap_ig:
        circuit = Circuit.load(Path(args.dir) / "circuit.json")
        print(f"wrote {save_eap_ig(args.eap_ig, scores, circuit)}")
    if args.mib:
        print(f"wrote {write_mib_submission(args.mib, {(task, name): scores})[0]}")
    return 0


def compare(args) -> int:
    from circuitfind.circuit import Circuit, overlap

    if len(args.circuits) < 2:
        from circuitfind.errors import ConfigError

        raise ConfigError("compare needs at least two run directories or circuit files")
    circuits = [Circuit.load(path) for path in args.circuits]  # (a run directory: checked as a whole)
    dirs = [Path(p) if Path(p).is_dir() else Path(p).parent for p in args.circuits]
    labels = [chr(ord("A") + i) if i < 26 else f"C{i}" for i in range(len(circuits))]
    if len({c.graph for c in circuits}) > 1:  # circuits of different models: where their nodes sit, by depth
        return _depth_profiles(args, labels, circuits)
    o = [[overlap(a, b) for b in circuits] for a in circuits]
    intervals = overlap_intervals(dirs)  # [i][j] (low, high) where every run kept resampled circuits, else None
    for label, path, c in zip(labels, args.circuits, circuits):
        method = c.provenance.get("method", "")
        print(f"{label}: {path}{f' ({method})' if method else ''}: {c.n_edges} edges, {len(c.nodes())} nodes")
    if len(circuits) == 2:
        a, b = circuits
        ci = "" if intervals is None else f" [{intervals[0][1][0]:.3f}, {intervals[0][1][1]:.3f}]"
        print(f"edges: {o[0][1]['edges']['shared']} shared, IoU {o[0][1]['edges']['iou']:.3f}{ci}; "
              f"nodes: {o[0][1]['nodes']['shared']} shared, IoU {o[0][1]['nodes']['iou']:.3f}")
        for label, only in (("A", a - b), ("B", b - a)):
            names = only.edges()
            shown = ", ".join(names[: args.k]) + (f", ... ({len(names) - args.k} more)" if len(names) > args.k else "")
            print(f"only in {label} ({len(names)}): {shown or '-'}")
        return 0
    for level in ("edges", "nodes"):  # pairwise intersection over union
        print(f"{level} IoU:\n      " + " ".join(f"{x:>6}" for x in labels))
        for x, row in zip(labels, o):
            print(f"{x:>6} " + " ".join(f"{pair[level]['iou']:6.3f}" for pair in row))
    if intervals is not None:
        print(f"edge IoU, {100 * LEVEL:g}% intervals under resampling of each run's prompts:")
        for x, row in zip(labels, intervals):
            print(f"{x:>6} " + " ".join(f"[{lo:.2f},{hi:.2f}]" for lo, hi in row))
    return 0


def _depth_profiles(args, labels, circuits) -> int:
    """Circuits of different models: the fraction of heads and of MLPs in each, by fifth of depth."""
    from circuitfind.circuit import depth_profile

    profiles = [depth_profile(c) for c in circuits]
    bins, width = profiles[0]["bins"], max(len(path) for path in args.circuits)
    print("circuits of different models: the fraction of each kind of node in the circuit, by fifth of depth")
    header = " ".join(f"{f'{100 * i // bins}-{100 * (i + 1) // bins}%':>9}" for i in range(bins))
    for kind in ("heads", "mlps"):
        print(f"{kind}:{'':<{width + 3}}{header}")
        for label, path, profile in zip(labels, args.circuits, profiles):
            print(f"  {label}: {path:<{width}} " + " ".join(f"{v:9.3f}" for v in profile[kind]))
    if args.figure:
        from circuitfind.report.figures import depth_profiles
        written = depth_profiles(dict(zip([f"{lab}: {c.provenance.get('model', '')}" for lab, c in
                                           zip(labels, circuits)], profiles)), Path(args.figure))
        print("wrote " + ", ".join(str(w) for w in written))
    return 0


def serve(args) -> int:
    from circuitfind.errors import ConfigError
    from circuitfind.serve import sae_arguments
    from circuitfind.serve import serve as run

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a port (0..65535)")

    def ready(url):
        print(f"circuitfind explorer at {url}  (Ctrl-C stops it)", flush=True)
    saes = sae_arguments(args.sae, args.model)
    run(models=args.model, runs=args.runs, sweep=args.sweep, host=args.host, port=args.port, token=args.token,
        device=args.device, on_ready=ready, saes=saes)
    return 0


def plan(args) -> int:
    """`circuitfind plan`: the run's planned memory and time from the model's config (no weights loaded)."""
    import torch

    from circuitfind.plan import _size, fit
    from circuitfind.plan import plan as make_plan
    from circuitfind.task import load_task

    task = load_task(args.task, n=args.n, seed=args.seed)
    store = {"store_on": args.store_on, "store_dtype": args.store_dtype}
    options = {"dtype": getattr(torch, args.dtype, None) or torch.float32, "steps": args.steps,
               "positions": args.positions, "examples": args.examples} | store
    p = make_plan(args.model, task, args.method, args.batch_size, args.device, **options)
    print(p)
    if args.max_memory is not None:
        best = fit(args.model, task, args.method, args.max_memory, args.device, dtype=options["dtype"],
                   steps=args.steps, **store)
        print(f"fits {args.max_memory} at batch_size={best.batch_size} (of {best.examples} examples): "
              f"{_size(best.total)}")
    return 0


def check_fits_before_loading(args) -> None:
    """discover's refusal from the model's config alone, before its weights load: a MemoryPlanError where the run
    fits the memory given at no batch size. Where the config cannot be planned offline, discover plans it again
    once the model is loaded."""
    from circuitfind.errors import CircuitfindError, MemoryPlanError
    from circuitfind.plan import batch_size_for
    from circuitfind.task import load_task

    if getattr(args, "positions", None) is not None:  # the plan covers the node-graph engine alone
        return
    try:
        task = load_task(args.task, n=args.n, seed=args.seed, metric=args.metric)
        store = {k: v for k, v in (("store_on", args.store_on), ("store_dtype", args.store_dtype))
                 if v not in ("device", None)}
        batch_size_for(args.model, task, args.method, args.ablation, args.batch_size, args.max_memory,
                       device=args.device, dtype=args.dtype, options=store)
    except MemoryPlanError:
        raise
    except (CircuitfindError, OSError, ValueError):
        return
