"""The tracr programs the ACDC paper grades methods on (Conmy et al. 2023; Lindner et al. 2023),
for the compiled models `tracr-reverse` and `tracr-xproportion` of the zoo, whose true circuits are
known. Token level: prompts are BOS + a sequence; each example reads the program's output at one
position of it, drawn at random, as ACDC's metrics read every position (the models attend both ways:
at the last position alone, xproportion's "tokens so far" would be all of them and its query and key
unused).

    tracr-reverse      reverse a sequence over {a, b, c}: position p (1..n) outputs token n − p
    tracr-xproportion  the fraction of "x" among the tokens up to p (numerical; squared error)
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
        p = rng.randint(1, n)  # BOS is position 0; position p reads token n − p of the sequence
        answer = seq[n - p]
        while other[n - p] == answer:  # the corrupted prompt changes the answer
            other[n - p] = rng.choice(values)
        return Example(clean=_encode(meta, seq), corrupt=_encode(meta, other), correct=values.index(answer),
                       wrong=[i for i, v in enumerate(values) if v != answer], answer_pos=p)


def squared_error(logits, targets):
    """(output − true value)² of the single numerical output dimension."""
    return (logits[:, 0] - targets.values) ** 2


class TracrXProportion(Task):
    name = "tracr-xproportion"
    description = "Compiled tracr program: fraction of 'x' so far (model tracr-xproportion), squared error."
    citation = "Conmy et al. 2023, Towards Automated Circuit Discovery (arXiv:2304.14997)"
    metric = staticmethod(squared_error)
    higher_is_better = False
    divergence = "l2"  # one numerical output: KL to the clean run is always 0 (ACDC's code uses L2 here too)
    models = ("tracr-xproportion",)

    def example(self, rng, words):
        meta = tracr_meta("tracr-xproportion")
        alphabet = sorted(set(meta["input_encoding"]) - {"BOS", "compiler_pad"})
        n = rng.randint(2, meta["max_seq_len"])
        seq, other = [rng.choice(alphabet) for _ in range(n)], [rng.choice(alphabet) for _ in range(n)]
        p = rng.randint(1, n)
        return Example(clean=_encode(meta, seq), corrupt=_encode(meta, other), correct=0, wrong=0,
                       value=seq[:p].count("x") / p, answer_pos=p)
