"""Gendered pronoun (Mathwin et al. 2023; the ACDC paper's gendered-pronoun task).

"So Mary is such a good cook, isn't" → " she", not " he". The corrupted prompt uses a name of the
other gender, which flips the pronoun.
"""

from __future__ import annotations

from circuitfind.spans import formatted
from circuitfind.task import Example, Task

FEMALE = ["Mary", "Alice", "Sarah", "Anna", "Emma", "Laura", "Kate", "Lisa", "Rachel", "Jane", "Amy", "Helen"]
MALE = ["John", "Bob", "Tom", "James", "David", "Michael", "Daniel", "Paul", "Mark", "Peter", "Steve", "Kevin"]
TEMPLATES = ["So {name} is such a good {role}, isn't", "Well, {name} is a very kind {role}, isn't",
             "Yes, {name} was a great {role}, wasn't"]
ROLES = ["cook", "friend", "teacher", "doctor", "writer", "player", "singer", "driver"]


class GenderedPronoun(Task):
    name = "gendered-pronoun"
    description = "Tag-question pronoun: 'So Mary is such a good cook, isn't' → ' she'."
    citation = "Mathwin et al. 2023, Identifying a preliminary circuit for predicting gendered pronouns in GPT-2 small"
    metric = "logit-diff"

    def example(self, rng, words):
        female, male = words.single(FEMALE), words.single(MALE)
        template, role = rng.choice(TEMPLATES), rng.choice(words.single(ROLES))
        she = rng.random() < 0.5
        name, other = (rng.choice(female), rng.choice(male)) if she else (rng.choice(male), rng.choice(female))
        clean, spans = formatted(template, {"name": "NAME", "role": "ROLE"}, end="END", name=name, role=role)
        return Example(clean=clean, corrupt=template.format(name=other, role=role), spans=spans,
                       correct=" she" if she else " he", wrong=" he" if she else " she")
