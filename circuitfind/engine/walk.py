"""One pass through a `CircuitModel` in edge form: the machinery behind `patching` and `attribution`.

Layouts (see `patching.py` for the maths):
- masks `M [k, dst, src]`; the data batch is tiled as `[k, b']`: shared masks (k masks over the same
  b examples, b' = b) or per-example masks (k = b, b' = 1). `K` ∈ {1, k} is how many distinct
  copies a tensor holds: while every mask agrees on the layers so far, computation runs once (K = 1);
  after that, so does any receiver whose mask row is the same in every mask and reads only senders
  computed once (in a pruned circuit, heads whose queries and keys are cut).
- residual-like tensors `[K, b', pos, d_model]`; receiver inputs `[r, K, b'·pos·d_model]`;
  sender blocks `[s, K, b', pos, d_model]`; stored differences `D [K, s, b'·pos·d_model]`.

Three parts of the pass have modules of their own: `walk_heads.py` (the attention heads of a layer),
`walk_answer.py` (nodes read at the answer positions alone, computed there alone), `walk_grad.py`
(the clean pass with receiver gradients) and `walk_experts.py` (experts as senders of their own);
`walk_ops.py` holds the tensor helpers they share.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from circuitfind.engine.offload import Place, fetch, move
from circuitfind.engine.shared_prefix import SharedPrefix
from circuitfind.engine.store import DiffStore, Workspace, take
from circuitfind.engine.walk_answer import AnswerPositions
from circuitfind.engine.walk_devices import Devices
from circuitfind.engine.walk_experts import Experts
from circuitfind.engine.walk_grad import Gradients, check_relevance
from circuitfind.engine.walk_heads import Heads
from circuitfind.engine.walk_ops import gather_at, spread
from circuitfind.errors import ConfigError
from circuitfind.types import Inputs

__all__ = ["Inputs", "Walk"]


class Walk(Heads, AnswerPositions, Gradients, Experts, Devices):
    """Layer-by-layer state of one (masked) forward.

    masks None means every receiver reads the real residual stream (the clean run).
    record keeps every sender's difference D (for prefixes and attribution). on_grad, if given, is
    called during backward as `on_grad(receiver_ids, grad, span)` with the gradient w.r.t. each
    receiver's input (one mask, k = 1) at the token rows `span` (a slice of the flattened b·pos, or
    None for all) as a tensor [r, len(span)·d_model], valid only during the call (q/k/v gradients
    arrive a layer and a chunk of positions at a time, in one reused buffer). input_alpha scales the
    input sender's difference (integrated gradients over the embeddings). overwrite_ablated (a
    recorded clean run over dense, contiguous ablated outputs [src, batch, pos, d]) writes D over
    the ablated outputs, each sender's after its last use: the caller gives that memory up and reads
    D from `diffs()`. relevance ("lrp" or "lrp-ah"; with on_grad): the backward RelP's, `walk_grad.RELEVANCE`.
    input_ablated [batch|1, pos|1, d]: the input sender's ablated output, in place
    of ablated[0] (an unmasked, unrecorded walk reads no other ablated output: theirs cancel in the
    residual, so `ablated` may then be zeros [src, 1, 1, d]).
    place (`offload.Place`): where `ablated` lives; a layer's ablated outputs are fetched to the device as the
    layer is computed (`_abl`), and a recorded clean run's store (read back whole by `diffs()`, never mixed) is
    kept there too. A model placed over several devices (`CircuitModel.place`) runs each layer on its own:
    the walk's residual-stream tensors move at each layer boundary (`offload.move`).
    """

    def __init__(self, model, inputs: Inputs, ablated: Tensor, masks: Tensor | None, *, per_example: bool = False,
                 record: bool = False, on_grad: Callable[[Tensor, Tensor, slice | None], None] | None = None,
                 input_alpha: float = 1.0, branchable: bool = False, overwrite_ablated: bool = False,
                 input_ablated: Tensor | None = None, workspace: Workspace | None = None,
                 shared: SharedPrefix | None = None, drop_layer: int | None = None, relevance: str | None = None,
                 place: Place | None = None):
        self.model, self.cfg, self.g = model, model.cfg, model.graph
        self.place = place
        self.relevance = check_relevance(model, relevance, on_grad)
        # GradDrop (AtP*): layer drop_layer's outputs join the residual stream detached, so no receiver
        # gradient flows back through that layer (its own receivers' gradients are then zero)
        self.drop_layer = drop_layer
        b, p = inputs.tokens.shape
        n = 0 if shared is None else shared.n
        if ablated.ndim != 4 or ablated.shape[0] != self.g.n_senders or ablated.shape[1] not in (1, b) \
                or ablated.shape[2] not in {1, p, p - n} or ablated.shape[3] != self.cfg.d_model:
            past = f" (or the {p - n} past the shared prefix)" if n else ""
            raise ConfigError(f"ablated outputs must be [src={self.g.n_senders}, batch|1, pos|1{past}, "
                              f"d_model={self.cfg.d_model}]; got {tuple(ablated.shape)}")
        if input_ablated is not None and (masks is not None or record or per_example):
            raise ConfigError("input_ablated is for unmasked, unrecorded walks")
        # the shared prefix (shared_prefix.py): positions n.. alone, attention reading the prefix's keys
        # and values; positions and attention masks stay those of the whole prompts. The ablated outputs
        # may cover the whole prompts or only the positions past the prefix.
        self.shared = shared
        if shared is not None:
            if not self.cfg.causal:
                raise ConfigError("a shared prefix is skipped only in a causal model (it settles nothing otherwise)")
            if shared.keys[0].shape[0] != b or not 0 < n <= int(inputs.answer_pos.min()):
                raise ConfigError(f"this shared prefix ({n} positions of {shared.keys[0].shape[0]} prompts) is not "
                                  f"these prompts' ({b}, answers from position {int(inputs.answer_pos.min())}): "
                                  "make it with shared_prefix(model, inputs, other) for them")
            self.key_positions = model.positions(inputs.attention_mask)  # [batch, pos]: of every key
            self.full_mask = inputs.attention_mask
            inputs = Inputs(inputs.tokens[:, n:], inputs.attention_mask[:, n:], inputs.answer_pos - n)
            ablated = ablated[:, :, n:] if ablated.shape[2] == p > 1 else ablated
            if input_ablated is not None and input_ablated.shape[1] == p > 1:
                input_ablated = input_ablated[:, n:]
            p -= n
        self.input_abl = None if input_ablated is None else input_ablated[None]  # [1, b|1, pos|1, d]
        self.inputs, self.masks, self.per_example = inputs, masks, per_example
        self.k = 1 if masks is None else masks.shape[0]
        self.bp = 1 if per_example else b
        self.data_k = b if per_example else 1  # K of anything that depends only on the data
        self.p, self.d = p, self.cfg.d_model
        self.record, self.on_grad, self.input_alpha = record, on_grad, input_alpha
        if on_grad is not None and self.k != 1:
            raise ConfigError("receiver gradients are taken for one mask at a time")
        # ablated outputs in walk layout [src, K, b', pos, d]
        self.abl = ablated.unsqueeze(2) if per_example else ablated.unsqueeze(1)
        self.abl_is_zero = ablated.shape[1:3] == (1, 1) and not bool(ablated.any())
        self.positions = model.positions(inputs.attention_mask) if shared is None else self.key_positions[:, n:]
        self.active = self._active_senders()
        self.answer_only = self._answer_only_senders()
        self.mix_until = self._last_mixing_layer()
        # the store tracks gradients only where receivers mix stored D under a learned mask; a clean
        # run with on_grad never mixes, and records D detached
        grad = torch.is_grad_enabled() and masks is not None and (on_grad is not None or masks.requires_grad)
        buffer = None
        if overwrite_ablated:
            if masks is not None or not record or per_example or ablated.shape[1:3] != (b, p) \
                    or not ablated.is_contiguous():
                raise ConfigError("overwrite_ablated needs a recorded clean run over dense ablated outputs")
            buffer = ablated.view(1, self.g.n_senders, -1)
        # buffers reused layer after layer, and from call to call when the caller gives a workspace;
        # branches share them, running one at a time. A store that outlives the pass has its own.
        self.workspace = workspace or Workspace()
        own = record or branchable
        # off the device (or in the store's dtype) only a store nothing mixes: a recorded clean run's, read by diffs()
        placed = place is not None and masks is None and record and not branchable
        self.store = DiffStore(self.k, (self.bp, p, self.d), self.g.n_senders, grad, buffer,
                               None if own else self.workspace, place if placed else None)
        self.layer = 0
        # biases + Σ abl_u over the senders so far: what a receiver reads besides its masked D  [K|1, b'|1, pos|1, d]
        self.base: Tensor | None = None
        self._mlp_partial: tuple[Tensor, int] | None = None  # MLP input mixed early, and the columns it saw
        self._attn_const: Tensor | None = None  # what the last attention block added to the base
        self.resid: Tensor | None = None  # the real residual stream of this run  [K, b', pos, d]
        self._allowed: dict[tuple, object] = {}  # per-walk caches: attention masks and rotary rows, by K
        self._facts: tuple[list[bool], list[bool]] | None = None  # see _row_facts

    # ------------------------------------------------------------------ set-up helpers
    def _active_senders(self) -> Tensor:
        if self.masks is None or self.masks.requires_grad:  # a zero mask entry still has a gradient
            return torch.ones(self.g.n_senders, dtype=torch.bool)
        active = (self.masks.detach() != 0).flatten(0, 1).any(0).cpu()
        # post-norm heads share one normaliser: a layer's heads are computed all or none
        if self.cfg.post_norms:
            for l in range(self.cfg.n_layers):
                s = slice(self.g.head_sender(l, 0), self.g.mlp_sender(l))
                active[s] = active[s].any()
        return active

    def _last_mixing_layer(self) -> int:
        """The last layer with a receiver that mixes (n_layers = logits); later senders need no D stored."""
        if self.masks is None:  # nothing mixes: keep D only if asked to record it
            return self.cfg.n_layers if self.record else -1
        if self.record or self.masks.requires_grad:
            return self.cfg.n_layers
        full = self.g.edge_mask.to(self.masks.device, self.masks.dtype)
        mixing = (self.masks.detach() != full).any(0).any(-1).cpu()  # [dst]
        return int(self.g.receiver_layer[mixing].max()) if bool(mixing.any()) else -1

    def _kept(self, diff: Tensor, layer: int) -> Tensor:
        """A layer's D as it joins the residual stream: detached in the GradDrop layer (`drop_layer`)."""
        return diff.detach() if layer == self.drop_layer else diff

    def _diff(self, senders: Tensor, out: Tensor, abl: Tensor, layer: int) -> Tensor:
        """D = out − abl for these senders, kept in the store while a later receiver still mixes."""
        if layer <= self.mix_until:
            return self.store.append(senders, out, abl)
        return out - abl

    def _rows(self, x: Tensor, K: int) -> Tensor:
        """Per-example x [batch, ...] → attention rows [K·b', ...] for a computation with K copies."""
        if self.per_example or K == 1:
            return x
        return x.repeat(K, *([1] * (x.ndim - 1)))

    def _allowed_here(self, layer: int, K: int) -> Tensor:
        key = (layer in self.cfg.sliding_layers, K)
        if key not in self._allowed:
            if K > 1:
                self._allowed[key] = self._rows(self._allowed_here(layer, 1), K)
            elif self.shared is None:
                self._allowed[key] = self.model.allowed(self.inputs.attention_mask, layer)
            else:  # the walk's query rows, every key (the shared prefix's first)
                self._allowed[key] = self.model.allowed(self.full_mask, layer)[:, :, self.shared.n:].contiguous()
        return self._allowed[key]

    def _rope_here(self, K: int, layer: int):
        key = ("rope", K, self.model.rope_key(layer))
        if key not in self._allowed:
            rope = self.model.rope(self.positions if self.shared is None else self.key_positions, layer)
            self._allowed[key] = None if rope is None else tuple(self._rows(t, K)[:, None] for t in rope)
        return self._allowed[key]

    def _rope_query_rows(self, K: int, layer: int):
        """The queries' (cos, sin) [K·b', 1, pos, rotary_dim] where they differ from the keys' (after a
        shared prefix: the walk's positions alone), else None."""
        rope = self._rope_rows(K, layer)
        if rope is None or self.shared is None:
            return None
        return tuple(t[:, :, self.shared.n:] for t in rope)

    def _with_prefix(self, layer: int, k: Tensor, v: Tensor, kv_heads: Tensor | None) -> tuple[Tensor, Tensor]:
        """Keys and values [K·b', h, pos, d_head] with the shared prefix's in front (its kv heads
        `kv_heads`, or all of them), for every copy; as they are without one."""
        if self.shared is None:
            return k, v
        K = k.shape[0] // self.bp
        out = []
        for t, cached in ((k, self.shared.keys[layer]), (v, self.shared.values[layer])):
            cached = cached if kv_heads is None else cached[:, kv_heads]  # [batch, h, n, d_head]
            out.append(torch.cat([self._rows(cached, K), t], dim=2))
        return out[0], out[1]

    def branch(self, masks: Tensor, workspace: Workspace | None = None) -> "Walk":
        """A walk that continues this (recorded, unmasked) one from its current layer under new masks,
        in this walk's workspace or the one given."""
        other = self._copy()
        other.masks, other.k, other.record, other.on_grad = masks, masks.shape[0], False, None
        other._facts = None
        if self.layer < self.cfg.n_layers:  # (from the logits on, no sender is computed or stored)
            other.active = other._active_senders()
            other.answer_only = other._answer_only_senders()
            other.mix_until = other._last_mixing_layer()
            other.active[: self.g.senders_before(self.layer)] = True  # computed already
        other.workspace = workspace or self.workspace
        other.store = self.store.branch(other.k, other.workspace)
        return other

    def snapshot(self) -> "Walk":
        """This (recorded, unmasked, gradient-free) walk as it stands, to branch from later while this
        one walks on: it shares the stored D, which later layers only append to."""
        if self.masks is not None or self.store.grad:
            raise ConfigError("only an unmasked walk without gradients can be snapshotted")
        other = self._copy()
        other.store = self.store.snapshot()
        return other

    def _copy(self) -> "Walk":
        """This walk's state in a new walk, with caches of its own (the store is the caller's to set)."""
        other = object.__new__(Walk)
        other.__dict__.update(self.__dict__)
        other._allowed = dict(self._allowed)
        return other

    # ------------------------------------------------------------------ the pass
    def run(self, stop: int | None = None) -> Tensor | None:
        """Walk to layer `stop` (exclusive) and return None, or to the end and return logits [k, b', vocab]."""
        if self.layer == 0 and self.base is None:
            self._embed()
        placed = self.model.layer_devices is not None
        for l in range(self.layer, self.cfg.n_layers if stop is None else stop):
            if placed:
                self.layer = l
                self._to_layer_device()
            resid_pre, base_pre = self.resid, self.base
            self._attention(l)
            if self.cfg.parallel:  # the MLP reads what attention read
                self._mlp(l, resid_pre, base_pre)
            else:
                self._mlp(l, self.resid, self.base)
            self.layer = l + 1
        if placed and stop is None:
            self._to_layer_device()  # (the unembedding's device)
        return None if stop is not None else self._logits()

    def _embed(self):
        x = self.model.embed(self.inputs.tokens, self.positions)  # [batch, pos, d]
        x = x.view(self.data_k, self.bp, self.p, self.d)
        abl = self._abl(0) if self.input_abl is None else fetch(self.place, self.input_abl, self._device,
                                                                self.model.dtype)  # [K|1, b'|1, pos|1, d]
        out = x if self.input_alpha == 1.0 else abl + (x - abl) * self.input_alpha
        if self.on_grad is not None:  # weights are frozen: gradients start from the input sender
            out = out.detach().requires_grad_(True)
        self.base, self.resid = abl, out
        self.store.append(torch.tensor([0]), out[None], abl[None])

    def _mask_rows(self, rows: Tensor) -> tuple[Tensor | None, int]:
        """Mask rows [k|1, r, src] for these receivers, or None where they read the real residual.

        Returns the rows and K, the number of distinct copies the receivers' inputs have.
        """
        K_state = self.resid.shape[0]  # copies so far (the store may have stopped keeping blocks)
        if self.masks is None:
            return None, K_state
        same_rows, full_rows = self._row_facts()
        ids = rows.tolist()  # (the facts first: a walk asks this many times a layer, mostly of full rows)
        same = all(same_rows[r] for r in ids)
        if same and not self.masks.requires_grad and all(full_rows[r] for r in ids):
            return None, K_state
        M = take(self.masks, rows, 1)
        if same and (K_state == 1 or bool(self._reads_shared(M[0]).all())):
            return M[:1], 1
        return M, self.k

    def _row_facts(self) -> tuple[list[bool], list[bool]]:
        """Per receiver [dst], found once a walk (not in each of the layer's many checks): is its mask
        row the same in every mask, and is it the full graph's row?"""
        if self._facts is None:
            M = self.masks.detach()
            same = (M == M[:1]).all(2).all(0) if self.k > 1 else torch.ones(M.shape[1], dtype=torch.bool)
            full = (M[0] == self.g.edge_mask.to(M.device, M.dtype)).all(1)
            self._facts = same.tolist(), full.tolist()
        return self._facts

    def _reads_shared(self, M0: Tensor) -> Tensor:
        """Per mask row M0 [r, src] (the same in every mask): does it read only senders whose D all
        masks share? Then its receiver has one input for all masks, computed once ([r] bool)."""
        if M0.requires_grad or self.per_example or self.base.shape[0] != 1:
            return torch.zeros(M0.shape[0], dtype=torch.bool)
        varying = self.store.varying()
        if not varying:
            return torch.ones(M0.shape[0], dtype=torch.bool)
        return ~(M0[:, varying] != 0).any(1).cpu()

    def _uniform(self, M: Tensor) -> bool:
        """Do these receivers' mask rows M [k|1, r, src] agree within each mask, over the senders stored so
        far (a node circuit, a node ablated: every kept receiver reads the same senders)? Then they share
        one input per mask. Not under gradients: each receiver's input then needs its own."""
        if self.on_grad is not None or M.requires_grad:
            return False
        Mc = take(M, self.store.cols, 2)
        return bool((Mc == Mc[:, :1]).all())

    def _mix(self, M: Tensor, base: Tensor, start: int = 0, out: Tensor | None = None) -> Tensor:
        """base + Σ_u M[·, ·, u] D_u over the stored senders from column `start` on: mask rows M
        [k|1, r, src] → [r, K, b'·pos·d], into `out` where it can be."""
        x = self.store.mix(take(M, self.store.cols[start:], 2), start, out)
        x = move(x, base.device)  # (a model over several devices: the store's rows mixed where they are)
        r, K = x.shape[:2]
        shaped = x.view(r, K, self.bp, self.p, self.d)
        if x.requires_grad or out is None or x.data_ptr() != out.data_ptr():
            return (shaped + base).view(r, K, -1)
        shaped.add_(base)
        return x

    def _mix_at(self, M: Tensor, base: Tensor, pos: Tensor) -> Tensor:
        """Like `_mix`, at one position per example: pos [K|1, b'] → [r, K, b', d]."""
        return move(self.store.mix_at(take(M, self.store.cols, 2), pos), base.device) + gather_at(base, pos)

    def _receiver_inputs(self, rows: Tensor, resid: Tensor, base: Tensor, scratch: str,
                         offset: int = 0, each: bool = False) -> tuple[Tensor | None, int, Tensor]:
        """Inputs of these receivers, [r, K, b'·pos·d], or None with the residual where they read it
        (or with their one shared input [K, b', pos, d], unless `each` asks for one per receiver).

        Without gradients they are mixed into the walk's `scratch` buffer (from element `offset` on),
        reused layer after layer."""
        M, K = self._mask_rows(rows)
        if M is None:
            return None, resid.shape[0], resid
        if not each and len(rows) > 1 and self._uniform(M):  # one input per mask for all, mixed once: a residual
            x = self._mix(M[:, :1], base)  # [1, K, b'·pos·d]
            return None, K, x.view(K, self.bp, self.p, self.d)
        out = None
        if not torch.is_grad_enabled() or not (self.store.grad or M.requires_grad):
            out = self.workspace.get(scratch, (M.shape[1], K, self.store.W), M, offset)
        x = self._mix(M, base, out=out)
        if self.on_grad is not None:
            on_grad = self.on_grad  # not self: see _tracked_qkv
            x.register_hook(lambda g: on_grad(rows, g[:, 0], None))
        return x, K, resid

    def _mlp(self, l: int, resid: Tensor, base: Tensor):
        """The MLP of layer l, reading the residual and base given (pre-attention for parallel blocks)."""
        g, mlp = self.g, self.model.blocks[l].mlp
        if g.n_experts:
            return self._experts(l, resid, base)
        s = g.mlp_sender(l)
        abl = self._abl(s)
        bias = self.model.block_bias(l, "mlp")
        add = abl + (bias if bias is not None else 0)
        if not self.active[s]:
            self.resid, self.base = self.resid + add, self.base + add
            return
        rows = torch.tensor([g.mlp_receiver(l)])
        if self.answer_only[s]:
            return self._mlp_at_answer(l, s, rows, resid, base, abl, add)
        partial, self._mlp_partial = self._mlp_partial, None
        if partial is not None:  # mixed with the attention receivers; add what this layer's heads wrote
            x, start = partial
            M, K = self._mask_rows(rows)
            if not self.cfg.parallel:  # (parallel MLPs never see their layer's heads)
                x = self._mix(M, self._attn_const, start) + x if self.store.n > start else x + self._attn_const
        else:
            x, K, resid = self._receiver_inputs(rows, resid, base, "mlp inputs")
        if x is None:
            x = resid.expand(K, self.bp, self.p, self.d)
            if self.on_grad is not None:
                x = x.view_as(x)  # a node of its own: its gradient is this receiver's alone
                on_grad = self.on_grad  # not self: see _tracked_qkv
                x.register_hook(lambda g: on_grad(rows, g.reshape(1, -1), None))
        lrp = self.relevance is not None
        x = self.model.blocks[l].ln2(x.reshape(K, self.bp, self.p, self.d), lrp)
        out = mlp(x, lrp) if lrp else mlp(x)  # [K, b', pos, d]
        diff = self._diff(torch.tensor([s]), out[None], abl[None], l)[0]
        self.resid, self.base = self.resid + add + self._kept(diff, l), self.base + add

    def _logits(self) -> Tensor:
        rows = torch.tensor([self.g.logits_receiver])
        M, K = self._mask_rows(rows)
        pos = move(self.inputs.answer_pos.view(self.data_k, self.bp), self.resid.device)
        if M is None:
            x = gather_at(self.resid, pos)  # [K, b', d]
        else:
            x = self._mix_at(M, self.base, pos)[0]
        if self.on_grad is not None:
            x = x.view_as(x)
            on_grad, shape = self.on_grad, (self.bp, self.p, self.d)  # not self: see _tracked_qkv
            x.register_hook(lambda g: on_grad(rows, spread(g, pos, shape), None))
        logits = self.model.unembed(x, wide=True, detach_scale=self.relevance is not None)  # [K, b', vocab], float32
        return logits.expand(self.k, -1, -1) if logits.shape[0] != self.k else logits

    def diffs(self) -> Tensor:
        """Recorded sender differences D as [src, batch, pos, d] (requires record and masks None)."""
        return self.store.dense(self.g.n_senders).view(self.g.n_senders, -1, self.p, self.d)
