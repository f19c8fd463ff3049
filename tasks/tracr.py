"""The tracr programs the ACDC paper grades methods on (Conmy et al. 2023; Lindner et al. 2023),
for the compiled models `tracr-reverse` and `tracr-xproportion` of the zoo, whose true circuits are
known. Token level: prompts are BOS + a sequence; the answer is read at the last position.

    tracr-reverse      reverse a sequence over {a, b, c}: the last output is the first token
    tracr-xproportion  the fraction of "x" among the tokens so far (numerical; squared error)
"""

from __future__ import annotations

from circuitfind.models.zoo import tracr_meta
from circuitfind.task import Example, Task


def _encode(meta, seq):
    enc = meta["input_encoding"]
    return [enc["BOS"]] + [enc[t] for t in seq]


class TracrReverse(Task):
    name = "tracr-reverse"
    description = "Compiled tracr program: reverse a sequence over {a, b, c} (model tracr-reverse)."
    citation = "Conmy et al. 2023, Towards Automated Circuit Discovery (arXiv:2304.14997)"
    metric = "logit-diff"
    models = ("tracr-reverse",)

    def example(self, rng, words):
        meta = tracr_meta("tracr-reverse")
        n = rng.randint(2, meta["max_seq_len"])
        values = meta["output_values"]
        seq, other = [rng.choice(values) for _ in range(n)], [rng.choice(values) for _ in range(n)]
        while other[0] == seq[0]:
            other[0] = rng.choice(values)
        return Example(clean=_encode(meta, seq), corrupt=_encode(meta, other), correct=values.index(seq[0]),
                       wrong=[i for i, v in enumerate(values) if v != seq[0]])


def squared_error(logits, targets):
    """(output − true value)² of the single numerical output dimension."""
    return (logits[:, 0] - targets.values) ** 2


class TracrXProportion(Task):
    name = "tracr-xproportion"
    description = "Compiled tracr program: fraction of 'x' so far (model tracr-xproportion), squared error."
    citation = "Conmy et al. 2023, Towards Automated Circuit Discovery (arXiv:2304.14997)"
    metric = staticmethod(squared_error)
    higher_is_better = False
    models = ("tracr-xproportion",)

    def example(self, rng, words):
        meta = tracr_meta("tracr-xproportion")
        alphabet = sorted(set(meta["input_encoding"]) - {"BOS", "compiler_pad"})
        n = rng.randint(2, meta["max_seq_len"])
        seq, other = [rng.choice(alphabet) for _ in range(n)], [rng.choice(alphabet) for _ in range(n)]
        return Example(clean=_encode(meta, seq), corrupt=_encode(meta, other), correct=0, wrong=0,
                       value=seq.count("x") / n)
