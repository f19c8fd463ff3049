"""Two-digit addition (Stolfo et al. 2023, "A Mechanistic Interpretation of Arithmetic Reasoning").

"23 + 45 =" → " 68". The corrupted prompt changes the first operand (same length), whose sum is
the wrong answer. Operands and sums are kept to what the tokenizer holds as single tokens.
"""

from __future__ import annotations

from circuitfind.spans import formatted
from circuitfind.task import Example, Task


class Arithmetic(Task):
    name = "arithmetic"
    description = "Two-digit addition: '23 + 45 =' → ' 68'."
    citation = "Stolfo et al. 2023, A Mechanistic Interpretation of Arithmetic Reasoning (arXiv:2305.15054)"
    metric = "logit-diff"

    def example(self, rng, words):
        while True:
            a, b, c = rng.randint(10, 49), rng.randint(10, 49), rng.randint(10, 49)
            if a != c and words.single([str(a + b), str(c + b)]) == [str(a + b), str(c + b)]:
                break
        clean, spans = formatted("{a} + {b} =", {"a": "A", "b": "B"}, end="END", a=a, b=b)
        return Example(clean=clean, corrupt=f"{c} + {b} =", correct=f" {a + b}", wrong=f" {c + b}", spans=spans)
