"""The clean walk with gradients (attribution): each head's D stored detached and the graph carrying
only the heads' sum, and q/k/v gradients pulled back to each receiver's input through the norm's
closed-form VJP, a chunk of positions at a time."""

from __future__ import annotations

import torch
from torch import Tensor

from circuitfind.engine.store import take
from circuitfind.engine.walk_ops import out_minus, proj, transposed
from circuitfind.errors import ConfigError

# The backward's rules besides the gradient (`Walk(relevance=)`), RelP's (Jafari et al. 2025): every norm's
# scale a constant (LRP's LN-rule), an activation's coefficient act(x)/x (identity rule), a gate's product
# halved (half rule); "lrp-ah" also holds each attention pattern constant (AH-rule). Values are unchanged.
RELEVANCE = ("lrp", "lrp-ah")


def check_relevance(model, relevance: str | None, on_grad) -> str | None:
    """`relevance` if the walk can take it; a ConfigError where it cannot, saying what to use instead."""
    if relevance is None:
        return None
    if relevance not in RELEVANCE:
        raise ConfigError(f"relevance must be one of {', '.join(RELEVANCE)} or None, got {relevance!r}")
    if on_grad is None:
        raise ConfigError("relevance rules change the backward only: give the walk on_grad")
    cfg = model.cfg
    quirks = [name for name, present in (("q/k norms", cfg.qk_norm), ("post-norms", cfg.post_norms),
                                         ("mixture-of-experts MLPs", cfg.n_experts)) if present]
    if quirks:
        raise ConfigError(f"relevance rules are implemented for pre-norm dense models; {model.name!r} has "
                          f"{', '.join(quirks)}: use eap or eap-ig on it")
    return relevance


# q/k/v receiver gradients are handed out this many elements at a time (16 MiB in fp32): a chunk of
# positions, consumed by on_grad while still in cache, and no [3·heads, batch·pos, d] buffer
GRAD_CHUNK_ELEMENTS = 1 << 22


class Gradients:
    """The part of `Walk` that runs the clean pass with receiver gradients (`on_grad`)."""

    def _tracked_head_diffs(self, l: int, attn, heads: Tensor, z: Tensor, senders: Tensor, abl: Tensor,
                            K: int) -> Tensor:
        """The clean run with gradients: each head's D goes to the store detached (written in place,
        outside the graph); the graph carries only Σ_h (out_h − abl_h), from one fused product."""
        a, B, p, dh = len(heads), z.shape[0], z.shape[2], self.cfg.d_head
        abl_sum = abl.sum(0)  # before D may overwrite the ablated outputs
        if self.record:
            target = self.store.reserve(senders, z)  # None for a store off the device (or in another dtype)
            abl3 = abl.expand(a, K, self.bp, p, self.d).reshape(a, B * p, self.d) if abl.shape[2:4] != (1, 1) \
                else abl.reshape(a, 1, self.d)
            diff = out_minus(abl3, z.detach().transpose(0, 1).reshape(a, B * p, dh), attn.W_O,
                             None if target is None else target.view(a, B * p, self.d))
            if target is None:  # computed on the device in the model's dtype, then copied to the store
                self.store.append_diff(senders, diff.view(a, K, self.bp, p, self.d))
        total = z.transpose(1, 2).reshape(B * p, a * dh) @ attn.w_o  # Σ_h out_h  [B·pos, d]
        return (total.view(K, self.bp, p, self.d) - abl_sum)[None]

    def _tracked_qkv(self, l: int, ln, attn, heads: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v [B, a, pos, d_head] from the shared residual x [B, pos, d], one key and value per
        *query* head, projected together. Their gradient is pulled back through W and the norm
        to each receiver's input (the norm's closed-form VJP: no per-receiver copy of the input is
        made in the forward) and handed to on_grad a chunk of positions at a time, in one reused
        buffer, as [3a, chunk·d] with rows q then k then v."""
        dh, a, B, p = self.cfg.d_head, len(heads), x.shape[0], x.shape[1]
        groups = heads // self.cfg.group_size
        parts = ((attn.w_q, attn.b_q, heads), (attn.w_k, attn.b_k, groups), (attn.w_v, attn.b_v, groups))
        lrp = self.relevance is not None
        xn = ln(x, lrp)
        # separate products: autograd keeps the weights by reference, no gathered copies
        y = torch.cat([take(proj(xn, w, b, dh), idx, 1) for w, b, idx in parts], dim=1)  # [B, 3a, pos, d_head]
        bias = None if all(b is None for _, b, _ in parts) else torch.cat(
            [W.new_zeros(len(i), dh) if b is None else b.view(-1, dh)[i] for W, b, i in parts]).view(3 * a, 1, dh)
        rows = torch.cat([self.g.qkv_receiver(l, t, 0) + heads for t in "qkv"])
        x_flat = x.detach().reshape(B * p, self.d)
        # The hook holds neither y nor the walk: either would close a cycle through the autograd graph
        # (walk → residual → graph → hook → walk), which Python's collector cannot see into, and
        # every walk with gradients would outlive its pass.
        y_data, on_grad, workspace, d = y.detach(), self.on_grad, self.workspace, self.d

        def pull_back(g):  # g [B, 3a, pos, d_head]
            def heads_first(t):  # [B, 3a, pos, d_head] → [3a, B·pos, d_head]
                return t.transpose(0, 1).reshape(3 * a, B * p, dh)
            projected = heads_first(y_data)
            if bias is not None:
                projected = projected - bias
            chunk = max(1, GRAD_CHUNK_ELEMENTS // (3 * a * d))
            WT = workspace.get("weights", (3 * a, dh, d), g)
            torch.cat([transposed(w, dh, idx) for w, _, idx in parts], out=WT)  # [3a, d_head, d]
            for span, grad in ln.input_grads(x_flat, heads_first(g), WT, projected=projected, chunk=chunk,
                                             buffer=workspace.get("grads", (3 * a * chunk * d,), g),
                                             detach_scale=lrp):
                on_grad(rows, grad.view(3 * a, -1), span)

        y.register_hook(pull_back)
        return y[:, :a], y[:, a:2 * a], y[:, 2 * a:]
