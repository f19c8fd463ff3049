"""Indirect object identification (Wang et al. 2023, "Interpretability in the Wild").

"When Mary and John went to the store, John gave a drink to" → " Mary" (the indirect object),
not " John" (the subject). ABBA and BABA templates; the corrupted prompt replaces all three name
slots with other names (the "ABC" distribution), which keeps the length and removes the signal.
"""

from __future__ import annotations

from circuitfind.spans import formatted
from circuitfind.task import Example, Task

NAMES = ["Mary", "John", "Alice", "Bob", "Sarah", "Tom", "James", "Anna", "David", "Emma", "Michael", "Laura",
         "Daniel", "Kate", "Paul", "Lisa", "Mark", "Rachel", "Peter", "Jane", "Chris", "Amy", "Steve", "Helen",
         "Ryan", "Grace", "Kevin", "Julia", "Adam", "Rose"]
PLACES = ["store", "park", "school", "station", "restaurant", "hospital", "garden", "office", "beach", "market"]
OBJECTS = ["drink", "book", "ball", "gift", "letter", "key", "bag", "ring", "pen", "card"]
TEMPLATES = [
    "When {A} and {B} went to the {place}, {S} gave a {obj} to",
    "After {A} and {B} arrived at the {place}, {S} handed a {obj} to",
    "Then, {A} and {B} had a long day at the {place}. {S} gave a {obj} to",
    "While {A} and {B} were working at the {place}, {S} passed a {obj} to",
]


class IOI(Task):
    name = "ioi"
    description = "Indirect object identification: complete 'When A and B went…, B gave a drink to' with A."
    citation = "Wang et al. 2023, Interpretability in the Wild (arXiv:2211.00593)"
    metric = "logit-diff"
    schema = ("IO", "S1", "S2", "END")

    def example(self, rng, words):
        names = words.single(NAMES)
        places, objects = words.single(PLACES), words.single(OBJECTS)
        io, s, c1, c2, c3 = rng.sample(names, 5)
        template = rng.choice(TEMPLATES)
        place, obj = rng.choice(places), rng.choice(objects)
        first, second = (io, s) if rng.random() < 0.5 else (s, io)  # ABBA or BABA
        roles = {"A": "IO" if first == io else "S1", "B": "S1" if first == io else "IO", "S": "S2"}
        clean, spans = formatted(template, roles, end="END", A=first, B=second, S=s, place=place, obj=obj)
        corrupt = template.format(A=c1, B=c2, S=c3, place=place, obj=obj)
        return Example(clean=clean, corrupt=corrupt, correct=" " + io, wrong=" " + s, spans=spans)
