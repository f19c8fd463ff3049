"""Inspecting a circuit's parts: vocabulary projection (logit lens) of any node's output."""

from circuitfind.inspect.lens import NodeLens, direct_logits, node_lens

__all__ = ["NodeLens", "direct_logits", "node_lens"]
