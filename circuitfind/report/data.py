"""What a report needs from the model, computed once at discovery time and saved as `inspect.json`,
so `circuitfind report DIR` re-renders without the model: the test examples as text, and each node's
logit lens (direct effect on the answer, promoted/suppressed tokens, top examples)."""

from __future__ import annotations

from circuitfind.inspect.common import token_str
from circuitfind.inspect.flow import flow_graph
from circuitfind.inspect.lens import node_lens
from circuitfind.inspect.token_flow import flow, state_lens
from circuitfind.task import metric_name

MAX_EXAMPLES = 100


def _text(model, x) -> str:
    """A prompt as text: strings as they are, token ids through the tokenizer (or the model's token names)."""
    if isinstance(x, str):
        return x
    ids = [x] if isinstance(x, int) else list(x)
    joiner = "" if model.tokenizer is not None else " "
    return joiner.join(token_str(model, i) for i in ids)


def _answers(model, x) -> str:
    """Answers: strings as they are, ids as the logits they index."""
    items = x if isinstance(x, list) else [x]
    shown = [a if isinstance(a, str) else token_str(model, a, output=True) for a in items[:8]]
    return " | ".join(shown) + (" | …" if len(items) > 8 else "")


TOKEN_FLOW_FLOOR = 0.01  # the page re-prunes the token-by-layer graph at any τ above this, exactly


def _token_flow(model, prompt, position: int) -> dict | None:
    """The first test example's token-by-layer flow graph at the floor τ, with the vocabulary projection of each of
    its states, for the page's τ slider (None for blocks it does not model: parallel, post-norms)."""
    if model.cfg.parallel or model.cfg.post_norms:
        return None
    graph = flow(model, prompt, tau=TOKEN_FLOW_FLOOR, position=position)
    lens = state_lens(model, prompt, graph.nodes())
    data = graph.to_dict()
    data["lens"] = {f"{r},{t}": v for (r, t), v in lens.items()}
    return data


def collect(model, test_task) -> dict:
    """The examples (at most MAX_EXAMPLES) and the lens of every node over them."""
    if test_task.n > MAX_EXAMPLES:
        test_task = test_task.with_split(test_task.split, n=MAX_EXAMPLES)
    batch = test_task.batch(model)
    examples = [{"clean": _text(model, e.clean), "corrupt": _text(model, e.corrupt),
                 "correct": _answers(model, e.correct), "wrong": _answers(model, e.wrong)} for e in batch.examples]
    first = batch.clean
    prompt = first.tokens[0, : int(first.attention_mask[0].sum())]
    flow_scores, flow = flow_graph(model, prompt, position=int(first.answer_pos[0]))
    edges = [[name, float(flow_scores.scores[flow.graph.edge_index(name)])] for name in flow.edges()]
    return {"flow": {"example": 0, "threshold": flow.provenance["threshold"], "edges": edges},
            "token_flow": _token_flow(model, prompt, int(first.answer_pos[0])),
            "task": {"name": test_task.name, "description": test_task.description, "citation": test_task.citation,
                     "metric": metric_name(test_task)},
            "examples": examples, "lens": [row.to_dict() for row in node_lens(model, batch)]}
