"""Induction (Olsson et al. 2022, "In-context learning and induction heads").

A random token sequence A repeated: A A[:-1] → A[-1]. The corrupted prompt replaces the first copy
with another random sequence B, so the second half has nothing to copy. Token-level: works for any
model, with or without a tokenizer. Scored by KL to the clean prediction, as ACDC does.
"""

from __future__ import annotations

from circuitfind.task import Example, Task


class Induction(Task):
    name = "induction"
    description = "Repeated random tokens: predict the next token of the second copy."
    citation = "Olsson et al. 2022, In-context Learning and Induction Heads (arXiv:2209.11895)"
    metric = "kl"
    length = 8

    def example(self, rng, words):
        a = words.random_tokens(rng, self.length)
        b = words.random_tokens(rng, self.length, avoid=a)
        return Example(clean=a + a[:-1], corrupt=b + a[:-1], correct=a[-1], wrong=b[-1])
