"""Docstring argument completion (Heimersheim & Janiak 2023, "A circuit for Python docstrings").

A function's docstring lists its parameters in order; after ":param" the model should name the
next one. The corrupted prompt renames the parameters in the signature, so the docstring's next
parameter can no longer be copied from it; the wrong answers are the other parameter names.
"""

from __future__ import annotations

from circuitfind.spans import formatted
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
            template = ("def {func}(self, {args}):\n    \"\"\"Compute the value.\n\n"
                        "    :param {p0}: {d1}\n    :param {p1}: {d2}\n    :param")
            return formatted(template, {"func": "FUNC", "args": "ARGS", "p0": "P1", "p1": "P2"}, end="END",
                             func=func, args=", ".join(args), p0=params[0], d1=d1, p1=params[1], d2=d2)

        clean, spans = prompt(params)
        return Example(clean=clean, corrupt=prompt(others)[0], spans=spans, correct=" " + params[2],
                       wrong=[" " + p for p in (params[0], params[1], params[3])])
