"""The attention heads of one layer in a `Walk` (`walk.py`): which heads share one computation across
the masks, how their q/k/v inputs are mixed (together, by kind, or with the MLP's), and their D.
Layouts as in `walk.py`."""

from __future__ import annotations

import torch
from torch import Tensor

from circuitfind.engine.store import take
from circuitfind.engine.walk_ops import copies, norm_over_heads, out_minus, proj, proj_receivers


class Heads:
    """The part of `Walk` that runs a layer's attention heads."""

    def _attention(self, l: int):
        g, attn = self.g, self.model.blocks[l].attn
        heads = torch.tensor([h for h in range(g.n_heads) if self.active[g.head_sender(l, h)]], dtype=torch.long)
        senders = torch.tensor([g.head_sender(l, h) for h in range(g.n_heads)])
        abl = self._abl(senders)  # [h, K|1, b'|1, pos|1, d]
        bias = self.model.block_bias(l, "attn")
        inc = abl.sum(0) + (bias if bias is not None else 0)
        outs = []
        groups = self._head_groups(l, heads)
        at_answer = [bool(self.answer_only[take(senders, group, 0)].all()) for group in groups]
        split = [not here and self._split_by_kind(l, group) for group, here in zip(groups, at_answer)]
        fuse_mlp = not any(split) and not any(at_answer) and self._fuse_mlp(l, groups)
        for group, by_kind, here in zip(groups, split, at_answer):  # all groups read the same residual
            if here:  # read at the answer positions alone: queries there only
                outs.append(self._heads_at_answer(l, attn, group, take(senders, group, 0), take(abl, group, 0)))
                continue
            if by_kind:  # q, k and v mixed apart, into thirds of one buffer: [(x [a, K_t, b'·pos·d], K_t)] × 3
                third = len(group) * self.k * self.store.W
                x = [self._receiver_inputs(g.qkv_receiver(l, t, 0) + group, self.resid, self.base,
                                           "attention inputs", i * third, each=True)[:2] for i, t in enumerate("qkv")]
                K, resid = self.k, self.resid
            else:
                rows = torch.cat([g.qkv_receiver(l, t, 0) + group for t in "qkv"])
                if fuse_mlp:
                    rows = torch.cat([rows, torch.tensor([g.mlp_receiver(l)])])
                x, K, resid = self._receiver_inputs(rows, self.resid, self.base, "attention inputs")
                if fuse_mlp:
                    self._mlp_partial, x = (x[-1:], self.store.n), x[:-1]
            diff = self._heads(l, attn, group, x, resid, K, take(senders, group, 0), take(abl, group, 0))
            outs.append(diff)  # D of these heads [a, K, b', pos, d]
        resid = self.resid + inc
        for diff in outs:
            resid = resid + self._kept(diff.sum(0), l)  # resid stays base + Σ D (skipped heads wrote their ablation)
        self.base, self._attn_const = self.base + inc, inc
        self.resid = resid

    def _split_by_kind(self, l: int, heads: Tensor) -> bool:
        """Mix these heads' q, k and v inputs apart? When some kinds have one input for all masks and
        others one per mask (in a pruned circuit, often queries and keys cut, values not): the
        shared kinds are then mixed, normed and projected once."""
        if self.masks is None or self.k == 1 or self.on_grad is not None or self.cfg.post_norms:
            return False
        found = [self._mask_rows(self.g.qkv_receiver(l, t, 0) + heads) for t in "qkv"]
        return all(M is not None for M, _ in found) and {K for _, K in found} == {1, self.k}

    def _fuse_mlp(self, l: int, groups: list[Tensor]) -> bool:
        """Mix the MLP receiver in the attention receivers' GEMM (one read of D per layer, not two)?

        Only when both mix with the same copies; the MLP then adds its layer's own heads later.
        """
        if self.g.n_experts or len(groups) != 1 or not self.active[self.g.mlp_sender(l)] or self.on_grad is not None \
                or self.answer_only[self.g.mlp_sender(l)]:
            return False
        rows = torch.cat([self.g.qkv_receiver(l, t, 0) + groups[0] for t in "qkv"])
        M_attn, K_attn = self._mask_rows(rows)
        M_mlp, K_mlp = self._mask_rows(torch.tensor([self.g.mlp_receiver(l)]))
        # (uniform attention rows are mixed once, as one residual: cheaper than any fusion)
        return M_attn is not None and M_mlp is not None and K_attn == K_mlp and not self._uniform(M_attn)

    def _head_groups(self, l: int, heads: Tensor) -> list[Tensor]:
        """Split heads into those whose q/k/v mask rows agree across the k masks (computed once)
        and those whose rows differ (computed per mask): patching one edge into one head of a
        layer then costs one head per mask at that layer, not the whole layer. Once the masks differ
        below, a head is computed once only if its rows also read only senders the masks share (in
        a pruned circuit, heads whose inputs are all cut)."""
        if len(heads) == 0:
            return []
        if self.masks is None or self.k == 1 or self.cfg.post_norms:
            return [heads]
        rows = torch.stack([self.g.qkv_receiver(l, t, 0) + heads for t in "qkv"])  # [3, a]
        same_rows = self._row_facts()[0]
        same = torch.tensor([all(same_rows[r] for r in head) for head in rows.T.tolist()])  # [a]
        if self.resid.shape[0] != 1:  # the masks differ below: only heads reading shared senders alone
            same &= self._reads_shared(self.masks[0, rows.flatten()]).view(3, -1).all(0)
        if bool(same.all()) or not bool(same.any()):
            return [heads]
        return [heads[same], heads[~same]]

    def _heads(self, l: int, attn, heads: Tensor, x: Tensor | None, resid: Tensor, K: int, senders: Tensor,
               abl: Tensor) -> Tensor:
        """D = out − abl [a, K, b', pos, d] of the given heads of layer l (stored as needed)."""
        cfg, a, B, p, dh = self.cfg, len(heads), K * self.bp, self.p, self.cfg.d_head
        ln = self.model.blocks[l].ln1
        groups = heads // cfg.group_size
        if x is None and self.on_grad is not None and cfg.qk_norm_width == "all":
            # a query's norm reads every head's projection of its input: each receiver gets a view of its own,
            # whose gradient is that receiver's alone (rows q, k, v as the walk's other receivers)
            x = resid.reshape(1, -1).expand(3 * a, -1)
            rows, on_grad = torch.cat([self.g.qkv_receiver(l, t, 0) + heads for t in "qkv"]), self.on_grad
            x.register_hook(lambda g: on_grad(rows, g, None))
        if x is None and self.on_grad is not None:  # shared input, one gradient per receiver
            q, k, v = self._tracked_qkv(l, ln, attn, heads, resid.reshape(B, p, self.d))
            kv_heads = groups  # (one key and value per query head)
        elif x is None:  # one shared input: fused projections, keys and values once per kv head
            xn = ln(resid.expand(K, self.bp, p, self.d).reshape(B, p, self.d))
            q = proj(xn, attn.w_q, attn.b_q, dh, norm_over_heads(attn, "q"))
            k, v = proj(xn, attn.w_k, attn.b_k, dh, norm_over_heads(attn, "k")), proj(xn, attn.w_v, attn.b_v, dh)
            kv_heads = None  # every kv head, in order
            if a < cfg.n_heads:
                q, k, v, kv_heads = q[:, heads], k[:, groups], v[:, groups], groups
        else:  # a separate input per receiver, normed in the projection: [3a, K·b'·pos, d], or per kind
            if not isinstance(x, list):  # [(x_t, K_t)] with K_t ∈ {1, K}: a shared kind is projected once
                x = [(part, K) for part in x.reshape(3 * a, -1).split(a)]
            weights = ((attn.W_Q, attn.b_q, heads, "q"), (attn.W_K, attn.b_k, groups, "k"),
                       (attn.W_V, attn.b_v, groups, "v"))
            q, k, v = (copies(proj_receivers(ln, attn, kind, xt.reshape(a, Kt * self.bp * p, self.d), W, bias, idx,
                                         dh, Kt * self.bp, p), K // Kt)
                       for (xt, Kt), (W, bias, idx, kind) in zip(x, weights))
            kv_heads = groups
        k, v = self._with_prefix(l, k, v, kv_heads)  # a shared prefix's keys and values in front
        z, _ = attn.attend(q, k, v, self._rope_rows(K, l), self._allowed_rows(l, K),
                           q_rope=self._rope_query_rows(K, l), heads=heads,
                           detach_pattern=self.relevance == "lrp-ah")  # [B, a, pos, d_head]
        if self.on_grad is not None and self.masks is None and attn.post_norm is None:
            return self._tracked_head_diffs(l, attn, heads, z, senders, abl, K)
        z = z.transpose(0, 1).reshape(a, B * p, dh)
        W_O = take(attn.W_O, heads, 0)
        if attn.post_norm is not None:
            out = attn.post_norm.shares(torch.bmm(z, W_O), dim=0).view(a, K, self.bp, p, self.d)
            return self._diff(senders, out, abl, l)
        # D = z W_O − abl in one op, written straight into the store where it is kept
        keep = l <= self.mix_until
        target = self.store.reserve(senders, z) if keep and K == 1 and not z.requires_grad else None
        target = None if target is None else target.view(a, B * p, self.d)
        abl3 = abl.expand(a, K, self.bp, p, self.d).reshape(a, B * p, self.d) if abl.shape[2:4] != (1, 1) \
            else abl.reshape(a, 1, self.d)
        if self.abl_is_zero:  # D = z W_O: no input to copy in
            diff = torch.bmm(z, W_O, out=target).view(a, K, self.bp, p, self.d)
        else:
            diff = out_minus(abl3, z, W_O, target).view(a, K, self.bp, p, self.d)
        if keep and target is None:
            self.store.append_diff(senders, diff)
        return diff

