"""The walk through a mixture-of-experts block in the expert-level graph (`Graph` with n_experts).

Each expert j is a sender whose output is its gate times its expert MLP,

    out_j = gate_j(ln(in_j<router>)) · expert_j(ln(in_j<in>)),

gate_j being j's router weight when j is in the top-k routed from its own router input, else 0. With
every mask on, every receiver reads the same residual and Σ_j out_j (+ the shared expert) is the block's
output exactly; patching an edge into `m{l}.e{j}<in>` changes what expert j computes but never which
experts are chosen, patching one into `m{l}.e{j}<router>` changes only j's gate (its weight, or whether
it is chosen at all).
"""

from __future__ import annotations

import torch
from torch import Tensor


class Experts:
    """The part of `Walk` that runs a layer's experts as senders of their own."""

    def _experts(self, l: int, resid: Tensor, base: Tensor) -> None:
        g, block = self.g, self.model.blocks[l]
        moe, E = block.mlp, g.n_experts
        senders = torch.tensor(list(g.mlp_senders(l)))
        abl = self._abl(senders)  # [s, K|1, b'|1, pos|1, d]
        add = abl.sum(0)
        live = self.active[senders]
        if not bool(live.any()):
            self.resid, self.base = self.resid + add, self.base + add
            return
        rows = torch.tensor(list(g.mlp_receivers(l)))
        x, K, resid = self._receiver_inputs(rows, resid, base, "mlp inputs", each=True)
        shape = (K, self.bp, self.p, self.d)
        if x is None:  # every receiver reads the real residual: one input for all
            one = resid.expand(*shape)
            inputs = [one] * len(rows)
            if self.on_grad is not None:  # each receiver a node of its own: its gradient is its own
                inputs = [self._gradient_view(one, rows[i:i + 1]) for i in range(len(rows))]
        else:
            inputs = list(x.view(len(rows), *shape))
        normed: dict[int, Tensor] = {}  # by id of the input: receivers reading the same tensor are normed once

        def norm(t: Tensor) -> Tensor:
            if id(t) not in normed:
                normed[id(t)] = block.ln2(t).reshape(-1, self.d)  # [K·b'·pos, d]
            return normed[id(t)]

        gates: dict[int, Tensor] = {}  # likewise routed once: [K·b'·pos, expert]
        outs = []
        for j in range(E):
            if not live[j]:
                continue
            router_in = inputs[E + j]
            if id(router_in) not in gates:
                gates[id(router_in)] = moe.gates(norm(router_in))
            gate = gates[id(router_in)][:, j]
            xj = norm(inputs[j])
            chosen = gate.nonzero()[:, 0]
            y = (moe.expert(j, xj[chosen]) * gate[chosen, None]).to(xj.dtype)
            outs.append(xj.new_zeros(xj.shape).index_add(0, chosen, y).view(shape))
        if g.shared_expert and live[-1]:
            outs.append(moe.shared(norm(inputs[-1])).view(shape))
        diff = self._diff(senders[live], torch.stack(outs), abl[live], l)
        self.resid, self.base = self.resid + add + self._kept(diff.sum(0), l), self.base + add

    def _gradient_view(self, x: Tensor, rows: Tensor) -> Tensor:
        """x as a node of its own whose gradient goes to on_grad as the receivers' `rows`."""
        view = x.view_as(x)
        on_grad = self.on_grad  # not self: see walk_grad._tracked_qkv
        view.register_hook(lambda grad: on_grad(rows, grad.reshape(1, -1), None))
        return view
