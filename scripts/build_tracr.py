"""Compile the two tracr programs the ACDC paper grades methods on and export them to circuitfind's
canonical format (no JAX needed to load them), with ground-truth edges derived from the weights.

    pip install -e ".[tracr]" && python scripts/build_tracr.py   # writes circuitfind/zoo_models/tracr-*/

- tracr-reverse: `make_reverse(tokens)` over {a, b, c}, max length 5 (categorical output).
- tracr-xproportion: `make_frac_prevs(tokens == "x")` over {w, x, y, z}, max length 5 (numerical).

Besides the weights, each export records the label of every residual dimension and the RASP
program's dataflow (each SOp's kind, inputs and selector): `circuitfind.models.tracr` derives both
ground-truth circuits from them at load time (the functional one, ACDC's, and the one read off the
weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent.parent / "circuitfind" / "zoo_models"
PROGRAMS = {
    "tracr-reverse": dict(vocab={"a", "b", "c"}, max_seq_len=5, numerical=False),
    "tracr-xproportion": dict(vocab={"w", "x", "y", "z"}, max_seq_len=5, numerical=True),
}


def compile_program(name: str):
    from tracr.compiler import compiling, lib
    from tracr.rasp import rasp

    spec = PROGRAMS[name]
    program = lib.make_reverse(rasp.tokens) if name == "tracr-reverse" else lib.make_frac_prevs(rasp.tokens == "x")
    model = compiling.compile_rasp_to_model(program, vocab=spec["vocab"], max_seq_len=spec["max_seq_len"],
                                            compiler_bos="BOS")
    return model, program


def dataflow(program) -> list[dict]:
    """Every computed SOp of the program (not tokens, indices or selectors), from the output down:
    its kind, label and what it reads (a selector as its keys, queries and comparison)."""
    from tracr.rasp import rasp

    out, todo, seen = [], [program], set()
    while todo:
        expr = todo.pop(0)
        if expr.label in seen or isinstance(expr, (rasp.TokensType, rasp.IndicesType)):
            continue
        seen.add(expr.label)
        entry = {"label": expr.label, "kind": type(expr).__name__, "output": expr is program}
        if isinstance(expr, (rasp.Aggregate, rasp.SelectorWidth)):
            sel = expr.selector
            if not isinstance(sel, rasp.Select):
                raise NotImplementedError(f"{expr.label}: only plain Select selectors are exported")
            entry |= {"keys": sel.keys.label, "queries": sel.queries.label, "predicate": sel.predicate.name}
            if isinstance(expr, rasp.Aggregate):
                entry["sop"] = expr.sop.label
            todo += [sel.keys, sel.queries] + ([expr.sop] if isinstance(expr, rasp.Aggregate) else [])
        elif isinstance(expr, (rasp.Map, rasp.SequenceMap)):
            entry["inputs"] = [c.label for c in expr.children]
            todo += list(expr.children)
        else:
            raise NotImplementedError(f"{expr.label}: {type(expr).__name__} is not exported")
        out.append(entry)
    return out


def export(name: str) -> dict:
    model, program = compile_program(name)
    output_label = program.label
    p = {k: {kk: np.asarray(vv, dtype=np.float32) for kk, vv in v.items()} for k, v in model.params.items()}
    cfg = model.model_config
    labels = list(model.residual_labels)
    d = len(labels)
    out_space = [i for i, lab in enumerate(labels) if lab.split(":")[0] == output_label]  # the program's output SOp
    W_U = np.zeros((d, len(out_space)), dtype=np.float32)
    for j, i in enumerate(out_space):
        W_U[i, j] = 1.0
    state = {"W_E": p["token_embed"]["embeddings"], "W_pos": p["pos_embed"]["embeddings"], "W_U": W_U}
    for l in range(cfg.num_layers):
        a, m = f"transformer/layer_{l}/attn/", f"transformer/layer_{l}/mlp/"
        b = f"blocks.{l}."
        for ours, theirs in (("q", "query"), ("k", "key"), ("v", "value")):
            state[b + f"attn.w_{ours}"], state[b + f"attn.b_{ours}"] = p[a + theirs]["w"], p[a + theirs]["b"]
        state[b + "attn.w_o"], state[b + "attn.b_o"] = p[a + "linear"]["w"], p[a + "linear"]["b"]
        state[b + "mlp.w_in"], state[b + "mlp.b_in"] = p[m + "linear_1"]["w"], p[m + "linear_1"]["b"]
        state[b + "mlp.w_out"], state[b + "mlp.b_out"] = p[m + "linear_2"]["w"], p[m + "linear_2"]["b"]
    config = dict(family="tracr", n_layers=cfg.num_layers, d_model=d, n_heads=cfg.num_heads, n_kv_heads=cfg.num_heads,
                  d_head=cfg.key_size, d_mlp=cfg.mlp_hidden_size, d_vocab=state["W_E"].shape[0],
                  n_ctx=state["W_pos"].shape[0], act_fn="relu", norm="none", positional="learned", causal=False,
                  d_out=len(out_space))
    encoding = dict(model.input_encoder.encoding_map)
    decoding = [labels[i].split(":", 1)[1] if ":" in labels[i] else labels[i] for i in out_space]
    meta = {"config": config, "flags": dict(qkv_bias=True, out_bias=True, mlp_bias=True, unembed_bias=False),
            "input_encoding": encoding, "output_values": decoding, "numerical": PROGRAMS[name]["numerical"],
            "residual_labels": labels, "program": dataflow(program),
            "max_seq_len": PROGRAMS[name]["max_seq_len"], "script": "scripts/build_tracr.py"}
    target = OUT / name
    target.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.tensor(np.array(v)) for k, v in state.items()}, str(target / "model.safetensors"))
    (target / "tracr.json").write_text(json.dumps(meta, indent=1))
    return meta


if __name__ == "__main__":
    import circuitfind as cf

    for name in PROGRAMS:
        meta = export(name)
        model = cf.load_model(name)
        print(f"{name}: {meta['config']['n_layers']} layers, d_model {meta['config']['d_model']}, "
              f"outputs {meta['output_values']}, ground truth {len(model.ground_truth[name])} edges "
              f"(functional), {len(model.ground_truth_weights[name])} (weights)")
