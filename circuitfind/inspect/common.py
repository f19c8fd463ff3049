"""Shared by the inspection tools: prompts to tokens, token strings, node names to hook points."""

from __future__ import annotations

import numbers
import re

import torch
from torch import Tensor

from circuitfind.errors import ConfigError


def tokens_of(model, prompt) -> Tensor:
    """A prompt (text, "ids:3,17,5", a list of token ids, or a tensor) → tokens [1, pos]."""
    if isinstance(prompt, str) and prompt.startswith("ids:"):
        try:
            return torch.tensor([[int(t) for t in prompt[4:].split(",")]])
        except ValueError as e:
            raise ConfigError(f"token ids must be integers: {prompt!r}") from e
    if isinstance(prompt, str):
        return model.to_tokens(prompt)
    t = torch.as_tensor(prompt, dtype=torch.long)
    return t[None] if t.ndim == 1 else t


def prompts_of(model, data) -> tuple[Tensor, Tensor]:
    """Several prompts — texts, token-id lists, or a Task (its clean prompts) — as right-padded
    (tokens [batch, pos], attention_mask [batch, pos])."""
    from circuitfind.models.canonical import pad_token_ids
    from circuitfind.task import Task

    if isinstance(data, Task):
        data = [e.clean for e in data.examples(model)]
    data = list(data)
    if not data:
        raise ConfigError("no prompts given")
    if isinstance(data[0], str):
        return model.to_tokens(data, return_attention_mask=True)
    return pad_token_ids([[int(t) for t in row] for row in data], model.pad_token_id, "right",
                         return_attention_mask=True)


def token_str(model, i: int, output: bool = False) -> str:
    """A token id as text; `output=True` for an index into the logits (which token-level models such as
    tracr may name differently from their inputs)."""
    if model.tokenizer is not None:
        return model.tokenizer.decode([int(i)])
    names = getattr(model, "output_names" if output else "token_names", None)
    return names[int(i)] if names is not None and 0 <= int(i) < len(names) else f"#{int(i)}"


def text_after(model, before: list[int], ids: list[int]) -> str:
    """Token ids `ids` as text that reads on from `before` (ids too): a word-level tokenizer writes the
    space between two words only when it decodes them together, so ids decoded alone would run into
    the text before them."""
    tok = model.tokenizer
    head, whole = tok.decode(before), tok.decode(before + ids)
    return whole[len(head):] if whole.startswith(head) else tok.decode(ids)


def ranked_tokens(model, logits: Tensor, k: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """The k most promoted and k most suppressed tokens of logits [vocab] as (text, logit), leaving
    out padding and the unknown token (untrained outputs, noise in a ranking) unless one of them is
    also the end-of-text token."""
    tok = model.tokenizer
    skip = set()
    if tok is not None:
        skip = {tok.pad_token_id, tok.unk_token_id} - {tok.eos_token_id, tok.bos_token_id, None}
    kept = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
    kept[[i for i in skip if i < logits.shape[-1]]] = False
    k = min(k, int(kept.sum()))
    up = logits.masked_fill(~kept, float("-inf")).topk(k)
    down = (-logits).masked_fill(~kept, float("-inf")).topk(k)
    return ([(token_str(model, i, output=True), float(v)) for v, i in zip(up.values, up.indices)],
            [(token_str(model, i, output=True), -float(v)) for v, i in zip(down.values, down.indices)])


def token_id(model, token) -> int:
    """An answer token (a logit) given as an id, or as text that must be exactly one token (not the
    unknown token)."""
    if isinstance(token, str) and model.tokenizer is None and token.lstrip("#").isdigit():  # token-level: "17", "#17"
        token = int(token.lstrip("#"))
    if isinstance(token, numbers.Integral) and not isinstance(token, bool):  # numpy integers too
        n = model.cfg.d_out or model.cfg.d_vocab
        if not 0 <= token < n:
            raise ConfigError(f"token id {token} is not a logit of this model (0..{n - 1})")
        return int(token)
    ids = model.tokenizer(token, add_special_tokens=False)["input_ids"] if model.tokenizer is not None else []
    if len(ids) != 1:
        raise ConfigError(f"{token!r} is {len(ids)} tokens for this tokenizer; give a single token (or its id)")
    unk = getattr(model.tokenizer, "unk_token", None)
    if ids[0] == getattr(model.tokenizer, "unk_token_id", None) and token.strip() != unk:
        raise ConfigError(f"{token!r} is not in the vocabulary (the tokenizer reads it as {unk!r}); "
                          "give a token the model knows")
    return ids[0]


def position_in(position: int, length: int, what: str = "position") -> int:
    """A position of a prompt of `length` tokens, negative counting from the end, as 0..length-1."""
    if isinstance(position, bool) or not isinstance(position, numbers.Integral) or not -length <= position < length:
        raise ConfigError(f"{what} {position!r} is outside the prompt's {length} tokens "
                          f"(use 0..{length - 1}, or -1 for the last)")
    return int(position) % length


NODE = re.compile(r"^(?:a(\d+)\.h(\d+)|m(\d+)(?:\.n(\d+))?|input)$")


def parse_node(model, node: str) -> tuple[str, int | None, int | None]:
    """`a3.h5` → ("head", 3, 5); `m2` → ("mlp", 2, None); `m2.n17` → ("neuron", 2, 17); `input`."""
    m = NODE.match(node)
    if not m:
        raise ConfigError(f"{node!r} is not a node name like 'a3.h5', 'm2', 'm2.n17' or 'input'")
    cfg = model.cfg
    if node == "input":
        return "input", None, None
    if m.group(1) is not None:
        layer, head = int(m.group(1)), int(m.group(2))
        if layer >= cfg.n_layers or head >= cfg.n_heads:
            raise ConfigError(f"{node!r}: the model has {cfg.n_layers} layers of {cfg.n_heads} heads")
        return "head", layer, head
    layer = int(m.group(3))
    if layer >= cfg.n_layers:
        raise ConfigError(f"{node!r}: the model has {cfg.n_layers} layers")
    if m.group(4) is not None:
        neuron = int(m.group(4))
        if neuron >= cfg.d_mlp:
            raise ConfigError(f"{node!r}: layer {layer}'s MLP has {cfg.d_mlp} neurons")
        return "neuron", layer, neuron
    return "mlp", layer, None


def resid_layer(model, what: str, *, final: bool) -> int:
    """`resid:L` → L, the residual stream entering layer L (`final=True` also allows L = n_layers: the
    stream entering the final norm)."""
    top = model.cfg.n_layers if final else model.cfg.n_layers - 1
    _, _, text = what.partition(":")
    if not text.strip().isdigit() or not 0 <= int(text) <= top:
        raise ConfigError(f"{what!r}: the residual stream is named resid:L with L in 0..{top}")
    return int(text)
