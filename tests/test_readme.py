"""The README's Python examples call the API as it is: every `cf.` / `ci.` call in its code blocks
binds to the function's real signature (a renamed or misspelt keyword fails here, not for a reader)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import circuitfind as cf
from circuitfind import inspect as ci

README = Path(__file__).resolve().parent.parent / "README.md"


def _calls():
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value
                if isinstance(owner, ast.Attribute) and isinstance(owner.value, ast.Name):  # ci.SAE.load
                    yield f"{owner.value.id}.{owner.attr}.{node.func.attr}", node
                elif isinstance(owner, ast.Name) and owner.id in ("cf", "ci"):
                    yield f"{owner.id}.{node.func.attr}", node


def test_readme_calls_bind_to_the_real_signatures():
    modules = {"cf": cf, "ci": ci}
    checked = []
    for name, call in _calls():
        parts = name.split(".")
        fn = modules[parts[0]]
        for attr in parts[1:]:
            fn = getattr(fn, attr)  # an AttributeError names a function the README invents
        args = [None] * len(call.args)
        kwargs = {k.arg: None for k in call.keywords if k.arg is not None}
        inspect.signature(fn).bind(*args, **kwargs)  # a TypeError names the wrong argument
        checked.append(name)
    assert {"cf.load_task", "cf.score_edges", "cf.prune", "ci.patchscope", "ci.why"} <= set(checked)
