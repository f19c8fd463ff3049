"""Greater-than (Hanna et al. 2023, "How does GPT-2 compute greater-than?").

"The war lasted from the year 1732 to the year 17" → any two-digit ending greater than 32.
The corrupted prompt starts at the year "01" (e.g. 1701), so no ending is excluded. The metric is
the probability of endings greater than the start minus that of endings not greater.
"""

from __future__ import annotations

from circuitfind.spans import formatted
from circuitfind.task import Example, Task

NOUNS = ["war", "dynasty", "expedition", "empire", "reign", "drought", "revolution", "siege", "treaty", "festival",
         "voyage", "campaign", "famine", "rebellion", "crusade", "occupation"]
CENTURIES = ["11", "12", "13", "14", "15", "16", "17", "18"]


class GreaterThan(Task):
    name = "greater-than"
    description = "Year comparison: 'from the year 1732 to the year 17' should continue with an ending > 32."
    citation = "Hanna et al. 2023, How does GPT-2 compute greater-than? (arXiv:2305.00586)"
    metric = "prob-diff"

    def example(self, rng, words):
        endings = [f"{y:02d}" for y in range(100)]
        usable = set(words.single(endings, prefix=""))
        starts = [y for y in range(2, 98) if f"{y:02d}" in usable]
        if "01" not in usable or not starts:
            raise ValueError("the tokenizer keeps '01' or the two-digit years as no single token")
        centuries = words.single(CENTURIES)
        noun, century = rng.choice(words.single(NOUNS)), rng.choice(centuries)
        start = rng.choice(starts)
        prompt = "The {noun} lasted from the year {c}{yy} to the year {c}"
        clean, spans = formatted(prompt, {"noun": "NOUN", "c": ["XX1", "XX2"], "yy": "YY"}, noun=noun, c=century,
                                 yy=f"{start:02d}")
        return Example(clean=clean, spans=spans,
                       corrupt=prompt.format(noun=noun, c=century, yy="01"),
                       correct=[e for e in endings[start + 1:] if e in usable],
                       wrong=[e for e in endings[:start + 1] if e in usable])
