"""Compile the two tracr programs the ACDC paper grades methods on and export them to circuitfind's
canonical format (no JAX needed to load them), with ground-truth edges derived from the weights.

    pip install -e ".[tracr]" && python scripts/build_tracr.py   # writes circuitfind/zoo_models/tracr-*/

- tracr-reverse: `make_reverse(tokens)` over {a, b, c}, max length 5 (categorical output).
- tracr-xproportion: `make_frac_prevs(tokens == "x")` over {w, x, y, z}, max length 5 (numerical).

Ground truth: a block writes to the residual dimensions its output weights touch; a receiver reads
the dimensions its input weights touch (W_Q / W_K / W_V rows, the MLP's first layer, the output
projection for the logits). An edge u→v belongs to the circuit when u writes a dimension v reads.
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
    return model, program.label


def export(name: str) -> dict:
    model, output_label = compile_program(name)
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
            "residual_labels": labels, "ground_truth": ground_truth(state, config),
            "max_seq_len": PROGRAMS[name]["max_seq_len"], "script": "scripts/build_tracr.py"}
    target = OUT / name
    target.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.tensor(np.array(v)) for k, v in state.items()}, str(target / "model.safetensors"))
    (target / "tracr.json").write_text(json.dumps(meta, indent=1))
    return meta


def ground_truth(state: dict, config: dict) -> list[str]:
    """Edges u→v where block u writes a residual dimension that receiver v reads."""
    def dims(w, axis):  # residual dimensions a weight touches
        return set(np.nonzero(np.abs(w).sum(axis=axis) > 1e-6)[0].tolist())

    H, dh = config["n_heads"], config["d_head"]
    writes = {"input": dims(state["W_E"], 0) | dims(state["W_pos"], 0)}
    reads = {"logits": dims(state["W_U"], 1)}
    for l in range(config["n_layers"]):
        b = f"blocks.{l}."
        for h in range(H):
            cols = slice(h * dh, (h + 1) * dh)
            writes[f"a{l}.h{h}"] = dims(state[b + "attn.w_o"][cols], 0)
            for t in "qkv":
                reads[f"a{l}.h{h}<{t}>"] = dims(state[b + f"attn.w_{t}"][:, cols], 1)
        writes[f"m{l}"] = dims(state[b + "mlp.w_out"], 0)
        reads[f"m{l}"] = dims(state[b + "mlp.w_in"], 1)
    from circuitfind.graph import Graph
    g = Graph(config["n_layers"], H)
    return [g.edge_name(dst, src) for dst, src in g.edge_mask.nonzero().tolist()
            if writes[g.senders[src]] & reads[g.receivers[dst]]]


if __name__ == "__main__":
    for name in PROGRAMS:
        meta = export(name)
        print(f"{name}: {meta['config']['n_layers']} layers, d_model {meta['config']['d_model']}, "
              f"outputs {meta['output_values']}, {len(meta['ground_truth'])} ground-truth edges")
