"""Subject–verb agreement (Finlayson et al. 2021; Linzen et al. 2016).

"The key near the cabinets" → " is" (singular head noun), not " are". The corrupted prompt swaps the
head noun's number ("The keys to the cabinets"), flipping the correct verb form.
"""

from __future__ import annotations

from circuitfind.spans import formatted
from circuitfind.task import Example, Task

NOUNS = [("key", "keys"), ("author", "authors"), ("dog", "dogs"), ("teacher", "teachers"), ("car", "cars"),
         ("picture", "pictures"), ("doctor", "doctors"), ("house", "houses"), ("friend", "friends"),
         ("letter", "letters"), ("student", "students"), ("bird", "birds")]
ATTRACTORS = ["cabinets", "houses", "students", "cars", "trees", "windows", "boxes", "friends", "rooms"]
VERBS = [(" is", " are"), (" was", " were"), (" has", " have")]
PREPOSITIONS = ["near the", "behind the", "next to the", "with the", "beside the"]


class SubjectVerbAgreement(Task):
    name = "sva"
    description = "Subject–verb agreement across an attractor: 'The key near the cabinets' → ' is'."
    citation = "Finlayson et al. 2021, Causal Analysis of Syntactic Agreement Mechanisms (arXiv:2106.06087)"
    metric = "logit-diff"

    def example(self, rng, words):
        singular, plural = rng.choice([p for p in NOUNS if words.single(p) == list(p)])
        attractor, prep = rng.choice(words.single(ATTRACTORS)), rng.choice(PREPOSITIONS)
        sg, pl = rng.choice([v for v in VERBS if words.single(v, prefix="") == list(v)])
        plural_subject = rng.random() < 0.5
        subject, other = (plural, singular) if plural_subject else (singular, plural)
        clean, spans = formatted("The {s} {p} {a}", {"s": "SUBJECT", "a": "ATTRACTOR"}, s=subject, p=prep, a=attractor)
        return Example(clean=clean, corrupt=f"The {other} {prep} {attractor}", spans=spans,
                       correct=pl if plural_subject else sg, wrong=sg if plural_subject else pl)
