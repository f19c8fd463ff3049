"""Multiple-choice question answering: name the letter of the correct option
(Lieberum et al. 2023, "Does circuit analysis interpretability scale?"; an MIB task).

The corrupted prompt orders the options differently, so the correct letter moves; the wrong answer
is the letter where the correct option now stands.
"""

from __future__ import annotations

from circuitfind.spans import formatted
from circuitfind.task import Example, Task

QUESTIONS = [
    ("What color is the sky?", "blue", ["red", "green", "yellow"]),
    ("What animal says meow?", "cat", ["dog", "cow", "duck"]),
    ("How many legs does a spider have?", "eight", ["six", "four", "ten"]),
    ("What do bees make?", "honey", ["milk", "silk", "wax"]),
    ("Which is the largest planet?", "Jupiter", ["Mars", "Venus", "Mercury"]),
    ("What is frozen water called?", "ice", ["steam", "sand", "glass"]),
    ("Which season is the coldest?", "winter", ["summer", "spring", "autumn"]),
    ("What do cows drink?", "water", ["milk", "juice", "tea"]),
    ("Which fruit is yellow?", "banana", ["cherry", "grape", "plum"]),
    ("What do we breathe?", "air", ["water", "sand", "oil"]),
    ("Which animal can fly?", "bird", ["fish", "horse", "snake"]),
    ("What is the opposite of hot?", "cold", ["warm", "big", "fast"]),
]
LETTERS = ["A", "B", "C", "D"]


class MultipleChoice(Task):
    name = "mcqa"
    description = "Multiple-choice QA: answer with the letter (A–D) of the correct option."
    citation = "Lieberum et al. 2023, Does Circuit Analysis Interpretability Scale? (arXiv:2307.09458)"
    metric = "logit-diff"

    def example(self, rng, words):
        question, answer, distractors = rng.choice(QUESTIONS)
        options = [answer] + distractors
        order, other = rng.sample(range(4), 4), rng.sample(range(4), 4)
        while other.index(0) == order.index(0):
            other = rng.sample(range(4), 4)

        def prompt(perm):
            listed = " ".join(f"{LETTERS[i]}. {options[j]}" for i, j in enumerate(perm))
            return formatted("Question: {q} {listed} Answer:", {"q": "QUESTION", "listed": "OPTIONS"}, end="END",
                             q=question, listed=listed)

        clean, spans = prompt(order)
        return Example(clean=clean, corrupt=prompt(other)[0], spans=spans, correct=" " + LETTERS[order.index(0)],
                       wrong=" " + LETTERS[other.index(0)])
