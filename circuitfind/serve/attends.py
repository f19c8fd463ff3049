"""Why head H attends from token j to token i: its query–key score split into the senders' bilinear terms.

Head h of layer l scores key i from query j as s = scale · q_j · k_i, with q_j = N(x_j) W_Q + b_Q and
k_i = N(x_i) W_K + b_K, where x is the residual stream entering layer l and N the layer's pre-norm. The residual
is a sum of sender outputs (every `input`, head and MLP before layer l) and the block biases no sender owns:
x = Σ_u out_u + c. With the norm's scale frozen at each position's own statistics (what the forward divides by),
N is affine, so q_j = Σ_u Q_u + Q_c, where Q_u = P_j(out_u) W_Q (rotated to position j under rotary positions)
and Q_c holds the biases (c's part, the norm's and the projection's); the same for k_i. Then

    s = Σ_u Σ_v scale · Q_u · K_v        (u: sender into the query, v: sender into the key)

exactly: the terms [sender into q, sender into k] sum to the score the forward computes
(`tests/test_serve.py` checks it against the model's own q and k and its attention pattern). ALiBi's position
bias, where present, is one more term of its own. Families whose queries and keys pass through a norm of their
own (qk-norm) are not affine in the senders and are refused by name.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuitfind.engine.patching import sender_outputs
from circuitfind.errors import ConfigError
from circuitfind.inspect.common import position_in
from circuitfind.models.layers import apply_rotary
from circuitfind.types import Inputs


def _frozen(norm, x: Tensor, parts: Tensor) -> Tensor:
    """The linear part of the pre-norm applied to parts [n, d] of the residual x [d], with x's statistics."""
    if norm.kind == "none":
        return parts
    if norm.kind == "layernorm":
        sigma = (x.var(-1, unbiased=False) + norm.eps).sqrt()
        return (parts - parts.mean(-1, keepdim=True)) / sigma * norm.w
    rms = (x.pow(2).mean(-1) + norm.eps).sqrt()
    return parts / rms * (norm.offset + norm.w)


def _side(model, layer: int, x: Tensor, parts: Tensor, W: Tensor, b: Tensor | None, rope, pos: int) -> Tensor:
    """Each part's share of one head's query (or key) at position pos: parts [n + 1, d] (the last the constant) →
    [n + 1, d_head], the norm's and projection's biases added to the constant's."""
    norm = model.blocks[layer].ln1
    shares = _frozen(norm, x, parts) @ W  # [n + 1, d_head]
    constant = torch.zeros_like(shares[0])
    if norm.kind == "layernorm" and norm.b is not None:
        constant = constant + norm.b @ W
    if b is not None:
        constant = constant + b
    shares = torch.cat([shares[:-1], (shares[-1] + constant)[None]])
    if rope is not None and model.cfg.positional == "rotary":
        cos, sin = (r[0, pos] for r in rope)  # [rotary_dim]
        shares = apply_rotary(shares, (cos, sin))
    return shares


@torch.no_grad()
def attends(model, tokens: Tensor, layer: int, head: int, dst: int, src: int | None = None) -> dict:
    """Head `a{layer}.h{head}` at query position dst (tokens [1, pos]): its attention pattern row, and for key src
    (default: the key it attends to most) the score split into bilinear terms of the senders into its query and
    key → {"pattern": [pos], "src", "score" (the forward's), "senders": [names, "bias"], "terms": [q sender][k
    sender], "total" (their sum), "alibi" (its term, 0 without)}."""
    cfg, g = model.cfg, model.graph
    if cfg.qk_norm:
        raise ConfigError(f"{model.name} norms its queries and keys (qk-norm): the score is not a sum of the "
                          "senders' terms there; 'why it attends' needs a model without qk-norm")
    if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
        raise ConfigError(f"a{layer}.h{head}: the model has {cfg.n_layers} layers of {cfg.n_heads} heads")
    T = tokens.shape[-1]
    dst = position_in(dst, T, "query position")
    pre, q_name, k_name, p_name = (f"blocks.{layer}.{n}" for n in ("hook_resid_pre", "attn.hook_q", "attn.hook_k",
                                                                    "attn.hook_pattern"))
    _, cache = model.run_with_cache(tokens, names_filter=[pre, q_name, k_name, p_name])
    pattern = cache[p_name][0, head, dst].float()  # [pos]
    src = int(pattern.argmax()) if src is None else position_in(src, T, "key position")
    mask = torch.ones_like(tokens)
    if not bool(model.allowed(mask, layer)[..., dst, src].all()):
        raise ConfigError(f"position {dst} does not attend to position {src} in layer {layer} (a later position, "
                          "or outside its sliding window): pick a key it sees")
    rope = model.rope(model.positions(mask), layer)
    kv = head // cfg.group_size
    q_own, k_own = cache[q_name][0, dst, head], cache[k_name][0, src, kv]  # [d_head] (before rotation)
    if cfg.positional == "rotary" and rope is not None:
        q_own = apply_rotary(q_own, tuple(r[0, dst] for r in rope))
        k_own = apply_rotary(k_own, tuple(r[0, src] for r in rope))
    alibi = 0.0
    if cfg.positional == "alibi":  # slope · key position, a term of no sender
        alibi = float(model.blocks[layer].attn.alibi[head]) * src * cfg.alibi_scale
    score = float(q_own.double() @ k_own.double()) * cfg.scale + alibi
    if cfg.attn_softcap is not None:
        score_note = f"before the soft-cap tanh(s / {cfg.attn_softcap}) · {cfg.attn_softcap}"
    else:
        score_note = ""

    outs = sender_outputs(model, Inputs.of(tokens))[: g.senders_before(layer), 0]  # [n, pos, d]
    x = cache[pre][0]  # [pos, d]
    attn = model.blocks[layer].attn
    sides = []
    for pos, W, b in ((dst, attn.W_Q[head], None if attn.b_q is None else attn.b_q.view(cfg.n_heads, -1)[head]),
                      (src, attn.W_K[kv], None if attn.b_k is None else attn.b_k.view(cfg.n_kv_heads, -1)[kv])):
        parts = torch.cat([outs[:, pos], (x[pos] - outs[:, pos].sum(0))[None]])  # [n + 1, d]: the senders, the rest
        sides.append(_side(model, layer, x[pos], parts, W, b, rope, pos))
    wide = torch.promote_types(sides[0].dtype, torch.float32)  # (at least float32)
    terms = (sides[0].to(wide) @ sides[1].to(wide).T) * cfg.scale  # [n + 1, n + 1]: [into the query, into the key]
    return {"node": f"a{layer}.h{head}", "dst": dst, "src": src, "pattern": [round(float(p), 5) for p in pattern],
            "score": score, "total": float(terms.sum()) + alibi, "alibi": alibi, "note": score_note,
            "senders": g.senders[: g.senders_before(layer)] + ["bias"], "terms": terms.tolist()}
