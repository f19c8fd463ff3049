"""The token-by-layer information-flow graph of one prompt (Ferrando & Voita 2024, "Information flow routes",
the picture the LLM Transparency Tool draws).

Nodes are residual states: row 0 the embeddings at each token, then per layer l the state after attention
(row 2l + 1, `hook_resid_mid`) and after the FFN (row 2l + 2, `hook_resid_post`). Into each state y the parts
that sum to it contribute:

    mid_j  = pre_j  + Σ_i Σ_h A_h[j, i] · v_h(x_i) W_O^h  + b_O      residual edge pre_j → mid_j, attention edges i → j
    post_j = mid_j  + FFN(mid_j) (+ b)                              residual edge, and the FFN's edge at token j

An edge's weight is the proximity of its part c to the sum y, max(0, ‖y‖₁ − ‖y − c‖₁), normalised over the
edges into y (biases belong to y, not to an edge), so the weights into every node sum to 1. The graph is then
pruned from the prediction's node (the top row at the answer position) backwards: an edge is kept when its weight
is at least τ and it feeds a node already kept. An attention edge is a block's (its heads summed); each kept one
names its heads by their own proximity shares. One forward with hooks, and per layer one [token, token, d_model]
product: a few forwards' cost (`benchmarks/token_flow.py`).

Sequential pre-norm blocks only (GPT-2, Llama, ...): parallel blocks and post-norms make the two rows per layer
other sums, and are refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from circuitfind.errors import ConfigError
from circuitfind.inspect.common import position_in, token_str, tokens_of


@dataclass
class FlowEdge:
    kind: str  # "attn" (token src → token dst), "ffn" (at token dst) or "resid" (the residual connection)
    layer: int
    src: int  # token of the sender state
    dst: int  # token of the receiving state
    weight: float
    rows: tuple[int, int]  # (sender state's row, receiving state's row): 2l → 2l + 1 into mid, 2l + 1 → 2l + 2 into post
    heads: list[tuple[int, float]] = field(default_factory=list)  # attn: (head, its share), largest first


@dataclass
class TokenFlow:
    """A prompt's token-by-layer graph: its tokens, the kept edges (`FlowEdge`), τ and the answer position."""

    tokens: list[str]
    n_layers: int
    position: int
    tau: float
    edges: list[FlowEdge]

    def nodes(self) -> set[tuple[int, int]]:
        """The kept states as (row, token)."""
        out = {(2 * self.n_layers, self.position)}
        for e in self.edges:
            (a, b) = e.rows
            out |= {(a, e.src), (b, e.dst)}
        return out

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "n_layers": self.n_layers, "position": self.position, "tau": self.tau,
                "edges": [{"kind": e.kind, "layer": e.layer, "src": e.src, "dst": e.dst, "rows": list(e.rows),
                           "weight": e.weight, "heads": e.heads} for e in self.edges]}

    def __repr__(self) -> str:
        kinds = {k: sum(e.kind == k for e in self.edges) for k in ("attn", "ffn", "resid")}
        return (f"TokenFlow({len(self.tokens)} tokens × {2 * self.n_layers + 1} rows, τ={self.tau}: "
                f"{len(self.nodes())} states, {kinds['attn']} attention, {kinds['ffn']} FFN and {kinds['resid']} "
                "residual edges)")


def proximity(parts: Tensor, total: Tensor) -> Tensor:
    """Normalised proximities of parts [..., n, d] to their sum's total [..., d] → [..., n] (each row sums to 1)."""
    prox = (total.abs().sum(-1)[..., None] - (total[..., None, :] - parts).abs().sum(-1)).clamp(min=0)
    return prox / prox.sum(-1, keepdim=True).clamp(min=1e-12)


def flow(model, prompt, tau: float = 0.04, position: int = -1) -> TokenFlow:
    """The token-by-layer information-flow graph of one prompt (module docstring), pruned at τ from the answer
    position's last state."""
    import circuitfind.arguments as arguments

    arguments.check(model=model, tau=tau)
    if not 0 <= tau <= 1:
        raise ConfigError(f"tau must be a weight threshold in [0, 1] (the weights into a state sum to 1); got {tau}")
    cfg = model.cfg
    if cfg.parallel or cfg.post_norms:
        raise ConfigError(f"the token-by-layer flow graph needs sequential pre-norm blocks; {model.name} has "
                          f"{'parallel blocks' if cfg.parallel else 'post-norms'} (use ci.flow_graph, the node graph)")
    tokens = tokens_of(model, prompt).to(model.device)
    T = tokens.shape[-1]
    position = position_in(position, T)
    weights, heads_of = _weights(model, tokens)
    kept = _prune(weights, cfg.n_layers, position, tau)
    edges = []
    for kind, layer, src, dst in kept:
        into_mid = kind in ("attn", "resid_pre")
        e = FlowEdge("resid" if kind == "resid_pre" else kind, layer, src, dst,
                     float(weights[kind][layer][dst, src] if kind == "attn" else weights[kind][layer][dst]),
                     (2 * layer, 2 * layer + 1) if into_mid else (2 * layer + 1, 2 * layer + 2),
                     heads_of(layer, src, dst) if kind == "attn" else [])
        edges.append(e)
    return TokenFlow([token_str(model, int(t)) for t in tokens[0]], cfg.n_layers, position, tau, edges)


def _weights(model, tokens: Tensor):
    """Per layer the normalised weights of every edge: "attn" [dst, src], "resid_pre" [dst] (pre → mid), "ffn"
    and "resid" [dst] (into post); and a function naming a kept attention edge's heads."""
    cfg, L = model.cfg, model.cfg.n_layers
    names = [f"blocks.{l}.{h}" for l in range(L) for h in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post",
                                                             "attn.hook_pattern", "attn.hook_v")]
    wanted = set(names)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=wanted.__contains__)

    def wide(t: Tensor) -> Tensor:  # at least float32
        return t.to(torch.promote_types(t.dtype, torch.float32))
    out = {"attn": [], "resid_pre": [], "ffn": [], "resid": []}
    parts_of = []  # per layer: vo [head, src, d] and the pattern [head, dst, src], for the heads' shares
    for l in range(L):
        b = f"blocks.{l}."
        pre, mid, post = (wide(cache[b + n][0]) for n in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post"))
        A = wide(cache[b + "attn.hook_pattern"][0])  # [head, dst, src]
        v = wide(cache[b + "attn.hook_v"][0])  # [src, kv_head, d_head]
        v = v.repeat_interleave(cfg.group_size, dim=1)  # one value per query head
        W_O = wide(model.blocks[l].attn.W_O)  # [head, d_head, d_model]
        vo = torch.einsum("shk,hkd->hsd", v, W_O)  # [head, src, d]: each head's output from each source token
        attn = torch.einsum("hjs,hsd->jsd", A, vo)  # [dst, src, d]: the block's part from token src into dst
        into_mid = torch.cat([pre[:, None], attn], dim=1)  # [dst, 1 + src, d]: the residual, then each source
        w_mid = proximity(into_mid, mid)
        out["resid_pre"].append(w_mid[:, 0])
        out["attn"].append(w_mid[:, 1:])
        ffn = post - mid  # the FFN's output with its bias
        w_post = proximity(torch.stack([mid, ffn], dim=1), post)  # [dst, 2]
        out["resid"].append(w_post[:, 0])
        out["ffn"].append(w_post[:, 1])
        parts_of.append((vo, A, mid))

    def heads_of(layer: int, src: int, dst: int) -> list[tuple[int, float]]:
        vo, A, mid = parts_of[layer]
        shares = proximity(A[:, dst, src, None] * vo[:, src], mid[dst])  # each head's own part, among the heads
        order = shares.argsort(descending=True).tolist()
        return [(h, round(float(shares[h]), 4)) for h in order if shares[h] > 0]
    return out, heads_of


def _prune(weights: dict, L: int, position: int, tau: float) -> list[tuple[str, int, int, int]]:
    """From the top state at `position` down: the edges of weight ≥ τ into a kept state, as (kind, layer, src, dst)."""
    kept_rows = {2 * L: {position}}
    edges = []
    for l in reversed(range(L)):
        post, mid, pre = kept_rows.get(2 * l + 2, set()), set(), set()
        for j in sorted(post):
            if float(weights["resid"][l][j]) >= tau:
                edges.append(("resid", l, j, j))
                mid.add(j)
            if float(weights["ffn"][l][j]) >= tau:
                edges.append(("ffn", l, j, j))
                mid.add(j)
        for j in sorted(mid):
            if float(weights["resid_pre"][l][j]) >= tau:
                edges.append(("resid_pre", l, j, j))
                pre.add(j)
            for i in (weights["attn"][l][j] >= tau).nonzero()[:, 0].tolist():
                edges.append(("attn", l, i, j))
                pre.add(i)
        kept_rows[2 * l + 1], kept_rows[2 * l] = mid, pre
    return edges


def state_lens(model, prompt, states, k: int = 5) -> dict[tuple[int, int], dict]:
    """The vocabulary projection of residual states (row, token) of a prompt: each one through the final norm and
    the unembedding, its k most promoted and k most suppressed tokens → {(row, token): {"up": [[token, logit]],
    "down": [...]}} (row 0 the embeddings, 2l + 1 after layer l's attention, 2l + 2 after its FFN)."""
    tokens = tokens_of(model, prompt).to(model.device)
    hooks = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_{n}" for l in range(model.cfg.n_layers)
                                           for n in ("mid", "post")]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=set(hooks).__contains__)
        out = {}
        for row, t in sorted(states):
            logits = model.unembed(cache[hooks[row]][0, t], wide=True)
            top = min(k, logits.shape[-1])  # (a compiled model may have fewer outputs than k)
            up, down = logits.topk(top), (-logits).topk(top)
            out[(row, t)] = {"up": [[token_str(model, int(i), output=True), round(float(v), 3)]
                                    for v, i in zip(up.values, up.indices)],
                             "down": [[token_str(model, int(i), output=True), round(-float(v), 3)]
                                      for v, i in zip(down.values, down.indices)]}
    return out
