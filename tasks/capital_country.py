"""Capital–country factual recall (as in the LRE and Patchscopes studies of factual lookup).

"The capital of France is" → " Paris"; the corrupted prompt names another country, whose capital is
the wrong answer.
"""

from __future__ import annotations

from circuitfind.spans import formatted
from circuitfind.task import Example, Task

PAIRS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
         ("Russia", "Moscow"), ("Egypt", "Cairo"), ("Greece", "Athens"), ("Poland", "Warsaw"), ("Austria", "Vienna"),
         ("Ireland", "Dublin"), ("Norway", "Oslo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Cuba", "Havana"),
         ("Portugal", "Lisbon"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
         ("Thailand", "Bangkok"), ("China", "Beijing"), ("England", "London")]
TEMPLATES = ["The capital of {c} is", "The capital city of {c} is", "{c}'s capital is the city of"]


class CapitalCountry(Task):
    name = "capital-country"
    description = "Factual recall: 'The capital of France is' → ' Paris'."
    citation = "Hernandez et al. 2024, Linearity of Relation Decoding in Transformer LMs (arXiv:2308.09124)"
    metric = "logit-diff"

    def example(self, rng, words):
        usable = [(c, k) for c, k in PAIRS if words.single([c, k]) == [c, k]]
        (country, city), (other, wrong) = rng.sample(usable, 2)
        template = rng.choice(TEMPLATES)
        clean, spans = formatted(template, {"c": "COUNTRY"}, end="END", c=country)
        return Example(clean=clean, corrupt=template.format(c=other), spans=spans,
                       correct=" " + city, wrong=" " + wrong)
