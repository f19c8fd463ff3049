"""Docstring argument completion (Heimersheim & Janiak 2023, "A circuit for Python docstrings").

A function's docstring lists its parameters in order; after ":param" the model should name the
next one. The corrupted prompt renames the parameters in the signature, so the docstring's next
parameter can no longer be copied from it; the wrong answers are the other parameter names.
"""

from __future__ import annotations

from circuitfind.task import Example, Task

WORDS = ["load", "size", "files", "last", "port", "data", "text", "name", "mode", "path", "user", "line", "page",
         "item", "key", "value", "state", "shape", "color", "image", "model", "token", "field", "table", "node"]
DESCRIPTIONS = ["the input", "a number", "the target", "some text", "the result", "a list", "the source"]


class Docstring(Task):
    name = "docstring"
    description = "Python docstrings: after ':param' name the next parameter of the signature."
    citation = "Heimersheim & Janiak 2023, A circuit for Python docstrings in a 4-layer attention-only transformer"
    metric = "logit-diff"

    def example(self, rng, words):
        names = words.single(WORDS)
        func, *params = rng.sample(names, 5)
        others = rng.sample([w for w in names if w not in params and w != func], 4)
        d1, d2 = rng.sample(DESCRIPTIONS, 2)

        def prompt(args):
            return (f"def {func}(self, {', '.join(args)}):\n    \"\"\"Compute the value.\n\n"
                    f"    :param {params[0]}: {d1}\n    :param {params[1]}: {d2}\n    :param")

        return Example(clean=prompt(params), corrupt=prompt(others), correct=" " + params[2],
                       wrong=[" " + p for p in (params[0], params[1], params[3])])
