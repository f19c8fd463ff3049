"""Spans: named parts of a task's prompts (IOI's S1, IO, S2, END), so prompts of different lengths align.

A task labels the spans of each prompt, in characters of a text prompt or in tokens of a token-id prompt:

    prompt, spans = labelled("When ", ("IO", "Mary"), " and ", ("S1", "John"), " went to the store,",
                             ("S2", " John"), " gave a drink", ("END", " to"))
    Example(clean=prompt, corrupt=..., correct=" Mary", wrong=" John", spans=spans)

`span_ids` maps them onto the model's tokens: each position of each prompt gets the index of its span in
the task's span names, tokens in no labelled span the span "other", padding -1. A position-aware method
(`score_edges(..., positions="spans")`) then scores every edge at every span: prompts of different lengths
are comparable because their spans are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from circuitfind.errors import TaskError

OTHER = "other"  # the span of every token no label covers


def labelled(*parts) -> tuple[str | list[int], dict[str, tuple[int, int]]]:
    """A prompt from pieces, each plain (unlabelled) or (label, piece), and its spans {label: (start, end)}:
    character ranges for text pieces, token ranges for lists of token ids."""
    text = all(isinstance(p if not isinstance(p, tuple) else p[1], str) for p in parts)
    prompt: str | list[int] = "" if text else []
    spans: dict[str, tuple[int, int]] = {}
    for part in parts:
        label, piece = part if isinstance(part, tuple) else (None, part)
        start = len(prompt)
        prompt = prompt + (piece if text else list(piece))
        if label is not None:
            if label in spans or label == OTHER:
                raise TaskError(f"span {label!r} is labelled twice in one prompt (or is {OTHER!r}, the name of the "
                                "unlabelled tokens); give each span one name")
            spans[label] = (start, len(prompt))
    return prompt, spans


def formatted(template: str, labels: dict[str, str | Sequence[str]], end: str | None = None,
              **values) -> tuple[str, dict[str, tuple[int, int]]]:
    """template.format(**values) and its spans: each field named in `labels` labelled (a repeated field takes a
    list, one label per occurrence), and the prompt's last word labelled `end` where given."""
    from string import Formatter

    prompt, spans, seen = "", {}, {}
    for literal, field, spec, conversion in Formatter().parse(template):
        prompt += literal
        if field is None:
            continue
        piece = format(values[field], spec or "")
        label = labels.get(field)
        if isinstance(label, (list, tuple)):
            label = label[seen.get(field, 0)]
        seen[field] = seen.get(field, 0) + 1
        if label is not None:
            spans[label] = (len(prompt), len(prompt) + len(piece))
        prompt += piece
    if end is not None:
        spans[end] = last_word(prompt)
    return prompt, spans


def last_word(prompt: str) -> tuple[int, int]:
    """The character range of a text prompt's last word, with the space before it."""
    stripped = prompt.rstrip()
    start = max(stripped.rfind(" "), stripped.rfind("\n"), 0)
    return start, len(prompt)


def span_names(examples: Sequence, schema: Sequence[str] = ()) -> tuple[str, ...]:
    """The task's span names: its schema's order, then any other label in order of first appearance, then
    "other"."""
    names = list(schema)
    for ex in examples:
        for label in ex.spans or {}:
            if label not in names:
                names.append(label)
    return tuple(n for n in names if n != OTHER) + (OTHER,)


def span_ids(model, examples: Sequence, rows: list[list[int]], names: tuple[str, ...]) -> Tensor:
    """Each position's span [batch, pos] (an index into names; -1 past a prompt's end), from the examples'
    spans over their clean prompts `rows` (the token ids the batch holds)."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, (ex, ids) in enumerate(zip(examples, rows)):
        if not ex.spans:
            raise TaskError(f"example {i} labels no spans, but others do; position-aware scoring needs every "
                            "example's spans (Example(spans=...), see circuitfind.spans.labelled)")
        out[i, :len(ids)] = names.index(OTHER)
        ranges = _token_ranges(model, ex.clean, ids) if isinstance(ex.clean, str) else None
        for label, (start, end) in ex.spans.items():
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end):
                raise TaskError(f"example {i}: span {label!r} is {(start, end)!r}, not a (start, end) range with "
                                "0 ≤ start < end")
            if ranges is None:  # token ids: the range is in tokens
                if end > len(ids):
                    raise TaskError(f"example {i}: span {label!r} ends at token {end}, past its {len(ids)}-token "
                                    "prompt")
                out[i, start:end] = names.index(label)
                continue
            hit = [j for j, (a, b) in enumerate(ranges) if a < end and b > start]
            if not hit:
                raise TaskError(f"example {i}: span {label!r} (characters {start}..{end} of {ex.clean!r}) covers "
                                "no token")
            out[i, hit] = names.index(label)
    return out


def _token_ranges(model, text: str, ids: list[int]) -> list[tuple[int, int]]:
    """The character range of each of the prompt's tokens ([0, 0) for a BOS the model adds)."""
    tok = getattr(model, "tokenizer", None)
    if tok is None or not getattr(tok, "is_fast", False):
        raise TaskError(f"{getattr(model, 'name', 'this model')}'s tokenizer gives no character offsets (a fast "
                        "tokenizer does); label spans in token ids instead")
    enc = tok(text, add_special_tokens=True, return_offsets_mapping=True)
    own, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if own != ids and [ids[0]] + own == ids:  # the BOS the model prepends itself
        own, offsets = ids, [(0, 0)] + offsets
    if own != ids:
        raise TaskError(f"the tokenizer's offsets of {text!r} do not match the model's tokens of it; label spans "
                        "in token ids instead")
    return offsets


def token_spans(attention_mask: Tensor) -> tuple[Tensor, tuple[str, ...]]:
    """positions="tokens": each position its own span ("0", "1", ...), for prompts of one length
    (attention_mask [batch, pos]); (ids [batch, pos], names)."""
    lengths = attention_mask.sum(1)
    if bool((lengths != lengths[0]).any()):
        raise TaskError(f"positions='tokens' compares prompts position by position, but these are "
                        f"{int(lengths.min())} to {int(lengths.max())} tokens long; label spans (positions='spans')")
    p = attention_mask.shape[1]
    ids = torch.arange(p).expand(attention_mask.shape[0], p).clone()
    return ids.masked_fill(attention_mask == 0, -1), tuple(str(i) for i in range(p))


def batch_spans(batch, positions: str) -> tuple[Tensor, tuple[str, ...]]:
    """A batch's span of each position [batch, pos] and the span names, for positions "spans" (the task's
    labels) or "tokens" (each position its own)."""
    if positions == "tokens":
        return token_spans(batch.clean.attention_mask.cpu())
    if positions != "spans":
        raise TaskError(f"positions must be 'spans' or 'tokens' (or None: no positions), got {positions!r}")
    if batch.spans is None:
        raise TaskError("this task's examples label no spans (Example(spans=...)); label them, or use "
                        "positions='tokens' for prompts of one length")
    return batch.spans.cpu(), batch.span_names


def unit_name(graph, names: Sequence[str], dst: int, src: int, t: int, s: int) -> str:
    """An (edge, span) unit's name: 'a0.h1->m2@IO' at one span, 'a0.h1->a1.h2<k>@IO→END' for a key or value
    read at span s by the head's queries at span t."""
    at = names[s] if t == s else f"{names[s]}→{names[t]}"
    return f"{graph.edge_name(dst, src)}@{at}"


def unit_index(graph, names: Sequence[str], name: str) -> tuple[int, int, int, int]:
    """(dst, src, t, s) of a unit name (`unit_name`); a TaskError if it is none."""
    edge, sep, at = name.rpartition("@")
    key, arrow, query = at.partition("→")
    index = {n: i for i, n in enumerate(names)}
    if not sep or key not in index or (arrow and query not in index):
        raise TaskError(f"{name!r} is not a unit name like 'a0.h1->m2@{names[0]}' over the spans {', '.join(names)}")
    dst, src = graph.edge_index(edge)
    s = index[key]
    return dst, src, index[query] if arrow else s, s
