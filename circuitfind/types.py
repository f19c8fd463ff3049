"""The shape glossary used in every annotation and comment.

    batch    examples in a batch
    pos      token positions (prompts are padded to a common length)
    d_model  residual stream width
    head     attention (query) heads of one layer; kv_head: key/value heads (grouped-query)
    d_head   width of one head
    d_mlp    MLP hidden width
    vocab    vocabulary size
    src      senders of the edge graph (input, heads, MLPs), in topological order
    dst      receivers of the edge graph (q/k/v inputs of heads, MLPs, logits)
    k        a batch of masks (circuits) evaluated in one forward

Annotations are jaxtyping style, e.g. ``Float[Tensor, "batch pos d_model"]``.
"""

from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = ["Bool", "Float", "Int", "Tensor"]
