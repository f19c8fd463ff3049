"""The walk at the answer positions. The logits read each prompt's answer position alone; so does a node
read only by the logits, by the query of a head read there alone, or by the input of an MLP read
there alone. Such a node is computed there alone: its D is zero elsewhere, where nobody reads it.
Every last-layer MLP and head is one (heads under post-norms excepted); in a pruned circuit, often more.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuitfind.engine.store import take
from circuitfind.engine.walk_ops import copies, gather_at, norm_over_heads, proj, proj_receivers


class AnswerPositions:
    """The part of `Walk` that finds the nodes read at the answer positions alone and computes them there."""

    def _answer_only_senders(self) -> Tensor:
        """Senders read at the answer positions alone ([src] bool), in every mask: by the logits, or by
        the query of a head or the input of an MLP that is itself read there alone (from the top down).
        Such a node is computed at the answer positions only; its D is zero elsewhere, where nobody
        reads it. A recorded walk or one with gradients keeps every position."""
        g = self.g
        out = torch.zeros(g.n_senders, dtype=torch.bool)
        if self.record or self.on_grad is not None or (self.masks is not None and self.masks.requires_grad):
            return out
        reads = g.edge_mask if self.masks is None else (self.masks.detach() != 0).any(0).cpu()  # [dst, src]
        at_answer = torch.zeros(g.n_receivers, dtype=torch.bool)  # receivers that read the answer positions alone
        at_answer[g.logits_receiver] = True
        heads = torch.arange(g.n_heads)
        for l in reversed(range(self.cfg.n_layers)):
            mlp = g.mlp_sender(l)
            # (before its heads: the MLP reads them; experts keep every position, walk_experts.py)
            if not g.n_experts and not bool((reads[:, mlp] & ~at_answer).any()):
                out[mlp] = at_answer[g.mlp_receiver(l)] = True
            if self.cfg.post_norms:  # a layer's heads share their normaliser: they keep every position
                continue
            senders = g.head_sender(l, 0) + heads
            alone = ~(reads[:, senders] & ~at_answer[:, None]).any(0)  # [heads]
            out[senders] = alone
            at_answer[g.qkv_receiver(l, "q", 0) + heads] = alone
        return out

    def _heads_at_answer(self, l: int, attn, heads: Tensor, senders: Tensor, abl: Tensor) -> Tensor:
        """D [a, K, b', pos, d] of heads read at the answer positions alone: queries mixed, projected and
        attending from there only (keys and values at every position); D is zero elsewhere."""
        g, cfg, ln, dh, bp, p, d = self.g, self.cfg, self.model.blocks[l].ln1, self.cfg.d_head, self.bp, self.p, self.d
        a, groups = len(heads), heads // cfg.group_size
        pos = self.inputs.answer_pos.view(self.data_k, bp)
        M_q, K_q = self._mask_rows(g.qkv_receiver(l, "q", 0) + heads)
        if M_q is None:  # the real residual there, one input for all: fused projection
            xq = ln(gather_at(self.resid, pos))  # [K_q, b', d]
            K_q = xq.shape[0]
            q = proj(xq.reshape(K_q * bp, 1, d), attn.w_q, attn.b_q, dh, norm_over_heads(attn, "q"))
            q = q if a == cfg.n_heads else q[:, heads]
        else:
            xq = self._mix_at(M_q, self.base, pos)  # [a, K_q, b', d]
            K_q = xq.shape[1]
            q = proj_receivers(ln, attn, "q", xq.reshape(a, K_q * bp, d), attn.W_Q, attn.b_q, heads, dh, K_q * bp, 1)
        rows = torch.cat([g.qkv_receiver(l, t, 0) + heads for t in "kv"])
        x, K_kv, resid = self._receiver_inputs(rows, self.resid, self.base, "attention inputs", each=True)
        if x is None:
            xn = ln(resid.expand(K_kv, bp, p, d).reshape(K_kv * bp, p, d))
            k, v = proj(xn, attn.w_k, attn.b_k, dh, norm_over_heads(attn, "k")), proj(xn, attn.w_v, attn.b_v, dh)
            if a < cfg.n_heads:
                k, v = k[:, groups], v[:, groups]
        else:
            k, v = (proj_receivers(ln, attn, kind, xt.reshape(a, K_kv * bp * p, d), W, bias, groups, dh, K_kv * bp, p)
                    for xt, W, bias, kind in zip(x.split(a), (attn.W_K, attn.W_V), (attn.b_k, attn.b_v), "kv"))
        K = max(K_q, K_kv)
        q, k, v = copies(q, K // K_q), copies(k, K // K_kv), copies(v, K // K_kv)
        k, v = self._with_prefix(l, k, v, None if x is None and a == cfg.n_heads else groups)
        rows_at, at = torch.arange(K * bp, device=pos.device), self._answer_rows(K)[2]  # each row's answer position
        rope = self._rope_rows(K, l)  # at the keys' positions: a shared prefix's first
        at_key = at if self.shared is None else at + self.shared.n
        q_rope = None if rope is None else tuple(t[rows_at, :, at_key][:, :, None] for t in rope)  # [K·b', 1, 1, rot]
        allowed = self._allowed_rows(l, K)[rows_at, :, at][:, :, None]  # [K·b', 1, 1, pos]
        z, _ = attn.attend(q, k, v, rope, allowed, q_rope=q_rope, heads=heads)  # [K·b', a, 1, d_head]
        out = torch.bmm(z[:, :, 0].transpose(0, 1), take(attn.W_O, heads, 0))  # [a, K·b', d]
        return self._answer_diff(senders, out.view(a, K, bp, d), abl, l)

    def _answer_rows(self, K: int) -> tuple[Tensor, Tensor, Tensor]:
        """For each of the K·b' rows of K copies of the batch: its copy, its example and its answer position."""
        pos = self.inputs.answer_pos.view(self.data_k, self.bp)
        rows = torch.arange(K * self.bp, device=pos.device)
        return rows // self.bp, rows % self.bp, pos.expand(K, self.bp).reshape(-1)

    def _answer_diff(self, senders: Tensor, out: Tensor, abl: Tensor, l: int) -> Tensor:
        """D [n, K, b', pos, d] of senders computed at the answer positions alone, out [n, K, b', d]:
        out − abl there and zero elsewhere, stored while a later receiver still mixes it (as `_diff`)."""
        n, K = out.shape[:2]
        copy, example, at = self._answer_rows(K)
        diff = out.new_zeros(n, K, self.bp, self.p, self.d)
        diff[:, copy, example, at] = out.reshape(n, K * self.bp, self.d) \
            - abl.expand(n, K, self.bp, self.p, self.d)[:, copy, example, at]
        if l <= self.mix_until:
            self.store.append_diff(senders, diff)
        return diff

    def _mlp_at_answer(self, l: int, s: int, rows: Tensor, resid: Tensor, base: Tensor, abl: Tensor,
                       add: Tensor) -> None:
        """An MLP read at the answer positions alone (`_answer_only_senders`), computed there alone; its
        D is zero elsewhere (no receiver reads it there)."""
        mlp, pos = self.model.blocks[l].mlp, self.inputs.answer_pos.view(self.data_k, self.bp)
        self._mlp_partial = None
        M, K = self._mask_rows(rows)
        x = gather_at(resid, pos) if M is None else self._mix_at(M, base, pos)[0]  # [K, b', d]
        out = mlp(self.model.blocks[l].ln2(x))  # [K, b', d]
        diff = self._answer_diff(torch.tensor([s]), out[None], abl[None], l)[0]
        self.resid, self.base = self.resid + add + self._kept(diff, l), self.base + add
