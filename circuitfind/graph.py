"""The edge graph of a transformer: who writes to the residual stream before whom it is read.

Senders (in topological order): `input`, then per layer every head `a{l}.h{h}` and the MLP `m{l}`.
Receivers (in order): per layer the query, key and value inputs of every head (`a{l}.h{h}<q>`, all
queries first, then keys, then values) and the MLP `m{l}`; finally `logits`.
An edge u→v exists where u writes before v reads. In parallel blocks (GPT-NeoX) the heads of layer l
do not feed `m{l}`. Grouped-query models get a q/k/v receiver per *query* head (the MIB convention).

GPT-2 small: 157 senders, 445 receivers, 32,491 edges — the graph of EAP-IG, MIB and auto-circuit.
Edge names are `"a0.h1->a1.h2<q>"`; masks and scores are dense `[dst, src]`.

The expert-level graph of a mixture of experts (`load_model(..., experts=True)`): each expert is a
sender `m{l}.e{j}` (its output weighted by its router gate) with two receivers, its input
`m{l}.e{j}<in>` and the input its gate is routed from, `m{l}.e{j}<router>` (all inputs first, then
all router inputs, as q/k/v); Qwen-MoE's shared expert is the sender and receiver `m{l}.shared`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from circuitfind.errors import ConfigError

QKV = ("q", "k", "v")


@dataclass(frozen=True)
class Graph:
    """The edges a model of this shape can have (module docstring); built from the config alone."""

    n_layers: int
    n_heads: int
    parallel: bool = False
    n_experts: int = 0  # > 0: the expert-level graph of a mixture of experts (module docstring)
    shared_expert: bool = False  # with n_experts: Qwen-MoE's shared expert `m{l}.shared`

    def __post_init__(self):
        if self.n_experts < 0 or (self.shared_expert and not self.n_experts):
            raise ConfigError(f"n_experts={self.n_experts}, shared_expert={self.shared_expert}: a shared expert "
                              "needs the expert-level graph (n_experts > 0)")

    @classmethod
    def from_config(cls, cfg) -> "Graph":
        """From a `CanonicalConfig` or any Hugging Face config (no weights needed)."""
        if hasattr(cfg, "n_heads") and hasattr(cfg, "parallel"):
            experts = cfg.n_experts if getattr(cfg, "expert_senders", False) else 0
            return cls(cfg.n_layers, cfg.n_heads, cfg.parallel, experts, bool(experts and cfg.d_mlp_shared))
        if getattr(cfg, "text_config", None) is not None and not hasattr(cfg, "num_hidden_layers"):
            cfg = cfg.text_config  # an image-text model: the graph of its language model
        layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
        heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
        if layers is None or heads is None:
            raise ConfigError(f"cannot read layer and head counts from {type(cfg).__name__}")
        from circuitfind.models.adapters import parallel_of  # (models sit below the graph)
        parallel = parallel_of(cfg)
        return cls(layers, heads, parallel)

    # ---------------------------------------------------------------- indices
    @property
    def mlp_parts(self) -> int:
        """Senders an MLP block has: 1, or its experts (and shared expert) in the expert-level graph."""
        return self.n_experts + self.shared_expert if self.n_experts else 1

    @property
    def mlp_inputs(self) -> int:
        """Receivers an MLP block has: 1, or each expert's input and router input (and the shared expert's)."""
        return 2 * self.n_experts + self.shared_expert if self.n_experts else 1

    @property
    def senders_per_layer(self) -> int:
        return self.n_heads + self.mlp_parts

    @property
    def receivers_per_layer(self) -> int:
        return 3 * self.n_heads + self.mlp_inputs

    @property
    def n_senders(self) -> int:
        return 1 + self.n_layers * self.senders_per_layer

    @property
    def n_receivers(self) -> int:
        return self.n_layers * self.receivers_per_layer + 1

    def head_sender(self, layer: int, head: int) -> int:
        return 1 + layer * self.senders_per_layer + head

    def mlp_sender(self, layer: int) -> int:
        """The MLP node of a layer (in the expert-level graph: its first expert)."""
        return 1 + layer * self.senders_per_layer + self.n_heads

    def mlp_senders(self, layer: int) -> range:
        """Every sender of a layer's MLP block: the MLP, or its experts then its shared expert."""
        first = self.mlp_sender(layer)
        return range(first, first + self.mlp_parts)

    def expert_sender(self, layer: int, expert: int) -> int:
        return self.mlp_sender(layer) + expert

    def senders_before(self, layer: int) -> int:
        """How many senders write before layer `layer`'s attention reads (== first sender of that layer)."""
        return 1 + layer * self.senders_per_layer

    def qkv_receiver(self, layer: int, kind: str, head: int) -> int:
        return layer * self.receivers_per_layer + QKV.index(kind) * self.n_heads + head

    def mlp_receiver(self, layer: int) -> int:
        """The MLP's input (in the expert-level graph: the first expert's)."""
        return layer * self.receivers_per_layer + 3 * self.n_heads

    def mlp_receivers(self, layer: int) -> range:
        """Every receiver of a layer's MLP block: the MLP's, or each expert's input, each router input, the shared."""
        first = self.mlp_receiver(layer)
        return range(first, first + self.mlp_inputs)

    def expert_receiver(self, layer: int, kind: str, expert: int) -> int:
        """kind "in" (the expert's input) or "router" (the input its gate is routed from)."""
        return self.mlp_receiver(layer) + ("in", "router").index(kind) * self.n_experts + expert

    @property
    def logits_receiver(self) -> int:
        return self.n_receivers - 1

    @cached_property
    def senders(self) -> list[str]:
        names = ["input"]
        for l in range(self.n_layers):
            names += [f"a{l}.h{h}" for h in range(self.n_heads)] + self._mlp_names(l)
        return names

    def _mlp_names(self, l: int) -> list[str]:
        if not self.n_experts:
            return [f"m{l}"]
        return [f"m{l}.e{j}" for j in range(self.n_experts)] + ([f"m{l}.shared"] if self.shared_expert else [])

    @cached_property
    def receivers(self) -> list[str]:
        names = []
        for l in range(self.n_layers):
            names += [f"a{l}.h{h}<{t}>" for t in QKV for h in range(self.n_heads)]
            if self.n_experts:
                names += [f"m{l}.e{j}<{t}>" for t in ("in", "router") for j in range(self.n_experts)]
                names += [f"m{l}.shared"] if self.shared_expert else []
            else:
                names.append(f"m{l}")
        return names + ["logits"]

    @cached_property
    def receiver_layer(self) -> Tensor:
        """Layer each receiver reads at ([dst] long); `logits` reads at n_layers."""
        return torch.arange(self.n_receivers) // self.receivers_per_layer

    @cached_property
    def receiver_node(self) -> Tensor:
        """The sender each receiver feeds ([dst] long; -1 for logits): `a1.h2<k>` feeds `a1.h2`."""
        node = torch.full((self.n_receivers,), -1, dtype=torch.long)
        for l in range(self.n_layers):
            for t in range(3):
                for h in range(self.n_heads):
                    node[l * self.receivers_per_layer + t * self.n_heads + h] = self.head_sender(l, h)
            if self.n_experts:
                for j in range(self.n_experts):
                    for t in ("in", "router"):
                        node[self.expert_receiver(l, t, j)] = self.expert_sender(l, j)
                if self.shared_expert:
                    node[self.mlp_receivers(l)[-1]] = self.mlp_senders(l)[-1]
            else:
                node[self.mlp_receiver(l)] = self.mlp_sender(l)
        return node

    @cached_property
    def edge_mask(self) -> Tensor:
        """Bool [dst, src]: True where the edge exists."""
        reads = torch.empty(self.n_receivers, dtype=torch.long)  # how many senders each receiver sees
        for l in range(self.n_layers):
            start = l * self.receivers_per_layer
            reads[start:start + 3 * self.n_heads] = self.senders_before(l)
            for r in self.mlp_receivers(l):
                reads[r] = self.senders_before(l) + (0 if self.parallel else self.n_heads)
        reads[-1] = self.n_senders
        return torch.arange(self.n_senders)[None, :] < reads[:, None]

    @cached_property
    def n_edges(self) -> int:
        return int(self.edge_mask.sum())

    # ---------------------------------------------------------------- names
    @cached_property
    def _sender_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.senders)}

    @cached_property
    def _receiver_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.receivers)}

    def edge_name(self, dst: int, src: int) -> str:
        return f"{self.senders[src]}->{self.receivers[dst]}"

    def edge_index(self, name: str) -> tuple[int, int]:
        """`"a0.h1->a1.h2<q>"` → (dst, src). Raises on an unknown name or a non-edge."""
        src_name, sep, dst_name = name.partition("->")
        if not sep or src_name not in self._sender_index or dst_name not in self._receiver_index:
            experts = f", {self.n_experts} experts per layer" if self.n_experts else ""
            raise ConfigError(f"{name!r} is not an edge name like 'a0.h1->a1.h2<q>' of this graph "
                              f"({self.n_layers} layers, {self.n_heads} heads{experts})")
        dst, src = self._receiver_index[dst_name], self._sender_index[src_name]
        if not self.edge_mask[dst, src]:
            raise ConfigError(f"{name!r} is not an edge: {src_name} does not write before {dst_name} reads")
        return dst, src

    def edge_names(self, mask: Tensor | None = None) -> list[str]:
        """Names of the edges in a bool mask [dst, src] (all edges if None), in (dst, src) order."""
        mask = self.edge_mask if mask is None else mask.bool() & self.edge_mask
        return [self.edge_name(int(d), int(s)) for d, s in mask.nonzero().tolist()]

    def mask_from_edges(self, names) -> Tensor:
        """Bool [dst, src] with the named edges set."""
        mask = torch.zeros(self.n_receivers, self.n_senders, dtype=torch.bool)
        for name in names:
            mask[self.edge_index(name)] = True
        return mask

    # ---------------------------------------------------------------- node view
    def nodes_to_edges(self, node_mask: Tensor) -> Tensor:
        """A node (sender) mask [src] → the edge mask [dst, src] keeping all out-edges of kept nodes."""
        if node_mask.shape[-1] != self.n_senders:
            raise ConfigError(f"node mask has {node_mask.shape[-1]} entries; this graph has {self.n_senders} senders")
        return self.edge_mask & node_mask.bool()[..., None, :]

    def to_networkx(self, mask: Tensor | None = None, scores: Tensor | None = None):
        """A networkx DiGraph of components: sender → component, labelled with the q/k/v input.

        Edges into the same component through q, k and v are kept apart as `a1.h2<q>` etc. nodes,
        each joined to `a1.h2` by an internal edge, so paths from `input` to `logits` are real paths.
        """
        import networkx as nx

        g = nx.DiGraph()
        g.add_nodes_from(self.senders + ["logits"])
        for dst, src in (self.edge_mask if mask is None else mask.bool() & self.edge_mask).nonzero().tolist():
            rname = self.receivers[dst]
            attrs = {"score": float(scores[dst, src])} if scores is not None else {}
            g.add_edge(self.senders[src], rname, **attrs)
            if "<" in rname:
                node, kind = rname[:-1].split("<")
                g.add_edge(rname, node, internal=True, qkv=kind)
        return g

    def __repr__(self) -> str:
        experts = f" × {self.n_experts} experts{' + shared' if self.shared_expert else ''}" if self.n_experts else ""
        return (f"Graph({self.n_layers} layers × {self.n_heads} heads{experts}{', parallel' if self.parallel else ''}: "
                f"{self.n_senders} senders, {self.n_receivers} receivers, {self.n_edges:,} edges)")
