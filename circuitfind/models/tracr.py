"""Compiled tracr models (exported by scripts/build_tracr.py) and their two ground-truth circuits.

Both circuits are derived here, at load time, from what the export ships: the weights, the label of
every residual dimension, and the RASP program's dataflow (each SOp's kind, inputs and selector).

    functional  the edges the program's computation needs (ACDC's canonical tracr circuits): a head
                implementing Aggregate(Select(keys, queries, cmp), sop) reads `queries` through its
                query, `keys` through its key (neither when cmp is TRUE: an all-true selector ignores
                both) and `sop` through its value; an MLP reads the SOps it maps, and the constant
                `one` direction where its weights use it (the biases tracr builds from it); a
                SelectorWidth is a head whose value reads BOS, then an MLP reading that head and `one`.
                The compiler's own machinery (each query's pull toward BOS, for when nothing matches)
                is not part of the program.
    weights     every edge u→v where u writes a residual dimension that v reads: which edges can
                carry information at all (a superset).

`tokens`, `indices` and `one` are written by the embedding: the sender `input`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from circuitfind.errors import ModelLoadError

EMBEDDED = ("tokens", "indices", "one")  # residual spaces the embedding writes


def load_tracr(directory: Path, meta: dict, name: str, dtype: torch.dtype, device: torch.device):
    """The model exported in directory (meta: its tracr.json), with both ground truths derived."""
    from safetensors.torch import load_file

    from circuitfind.models.canonical import CanonicalConfig, CircuitModel

    model = CircuitModel(CanonicalConfig(**meta["config"]), name=name, **meta["flags"])
    state = load_file(str(directory / "model.safetensors"))
    model.load_state_dict(state, strict=True)
    blocks = _blocks(state, meta)
    model.ground_truth = {name: functional_edges(blocks, meta["program"])}  # keyed by the task that grades it
    model.ground_truth_weights = {name: weight_edges(blocks)}
    names = {i: t for t, i in meta["input_encoding"].items()}
    model.token_names = [str(names.get(i, f"#{i}")) for i in range(model.cfg.d_vocab)]
    model.output_names = [str(v) for v in meta["output_values"]]
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _blocks(state: dict, meta: dict) -> dict:
    """Per node, the residual labels it writes (senders) or reads (receivers), from the weights:
    {"writes": {sender: set}, "reads": {receiver: set}}, receivers in the graph's order."""
    labels, cfg = meta["residual_labels"], meta["config"]
    H, dh = cfg["n_heads"], cfg["d_head"]

    def touched(w: torch.Tensor, dim: int) -> set[str]:  # the labels of the residual rows/columns w uses
        return {labels[i] for i in (w.abs().sum(dim) > 1e-6).nonzero().flatten().tolist()}

    writes = {"input": touched(state["W_E"], 0) | touched(state["W_pos"], 0)}
    reads = {}
    for l in range(cfg["n_layers"]):
        b = f"blocks.{l}."
        for h in range(H):
            cols = slice(h * dh, (h + 1) * dh)
            writes[f"a{l}.h{h}"] = touched(state[b + "attn.w_o"][cols], 0)
            for t in "qkv":
                reads[f"a{l}.h{h}<{t}>"] = touched(state[b + f"attn.w_{t}"][:, cols], 1)
        writes[f"m{l}"] = touched(state[b + "mlp.w_out"], 0)
        reads[f"m{l}"] = touched(state[b + "mlp.w_in"], 1)
    reads["logits"] = touched(state["W_U"], 1)
    return {"writes": writes, "reads": reads}


def _node(receiver: str) -> str:
    return receiver.split("<")[0]


def _feeds(src: str, dst: str) -> bool:
    """Whether sender src writes before receiver dst reads (tracr blocks are sequential: a layer's
    attention, then its MLP)."""
    if dst == "logits" or src == "input":
        return True
    order = lambda node: 2 * int(node[1:].split(".")[0]) + (node.startswith("m"))  # noqa: E731
    return order(src) < order(_node(dst))


def weight_edges(blocks: dict) -> list[str]:
    """Edges u→v where u writes a residual dimension v reads, in the graph's (dst, src) order."""
    return [f"{src}->{dst}" for dst, read in blocks["reads"].items() for src, wrote in blocks["writes"].items()
            if _feeds(src, dst) and wrote & read]


def _space(label: str) -> str:
    """The SOp a residual label belongs to: "opp_idx_4:-1" → "opp_idx_4", "map_9" → "map_9"."""
    return label.split(":", 1)[0]


def functional_edges(blocks: dict, program: list[dict]) -> list[str]:
    """The edges the RASP program's dataflow needs (module docstring), from the node each SOp was
    compiled into (found by the residual space it writes) and what the SOp reads."""
    writers = {}  # SOp label → the sender that computes it: the first to write its space, in the model's order
    for sender, wrote in blocks["writes"].items():  # (a SelectorWidth's MLP writes its head's space too, clearing it)
        for space in {_space(lab) for lab in wrote}:
            writers.setdefault(space, sender)
    for space in EMBEDDED:
        writers[space] = "input"

    def producer(sop: str) -> str:
        if sop not in writers:
            raise ModelLoadError(f"no node of the compiled model writes the residual space of SOp {sop!r}")
        return writers[sop]

    edges = []
    for sop in program:
        node = producer(sop["label"])
        if sop["kind"] in ("Aggregate", "SelectorWidth"):
            head = node if sop["kind"] == "Aggregate" else producer(sop["label"] + "_selector_width_attn_output")
            if sop["predicate"] != "TRUE":
                edges += [(producer(sop["queries"]), head + "<q>"), (producer(sop["keys"]), head + "<k>")]
            edges.append(("input" if sop["kind"] == "SelectorWidth" else producer(sop["sop"]), head + "<v>"))
            if sop["kind"] == "SelectorWidth":  # its MLP turns the head's share of BOS into the width
                edges.append((head, node))
        elif sop["kind"] in ("Map", "SequenceMap"):
            edges += [(producer(x), node) for x in sop["inputs"]]
        else:
            raise ModelLoadError(f"SOp {sop['label']!r} is a {sop['kind']}, which the ground truth does not model")
        if node.startswith("m") and "one" in blocks["reads"][node]:  # biases built from the constant direction
            edges.append(("input", node))
        if sop.get("output"):
            edges.append((node, "logits"))
    wanted = set(edges)
    return [f"{src}->{dst}" for dst in blocks["reads"] for src in blocks["writes"] if (src, dst) in wanted]
