"""The README's and the documentation's examples use the package as it is: every `cf.` / `ci.` call in their
Python blocks binds to the function's real signature, and their concrete command lines parse (a renamed or
misspelt argument fails here, not for a reader); the docs' tables name every method and model family."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import circuitfind as cf
from circuitfind import inspect as ci

README = Path(__file__).resolve().parent.parent / "README.md"
DOCS = README.parent / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]


def _blocks(language: str) -> list[str]:
    """The fenced code blocks of the README and the docs whose info string is `language` ("" for shell lines;
    "console" blocks count as shell, their `$ ` prompts taken off)."""
    blocks, current, lang = [], None, None
    lines = [line for page in PAGES for line in page.read_text().splitlines()]
    for line in lines:
        if line.startswith("```"):
            if current is None:
                current, lang = [], line[3:].strip()
            else:
                if lang == language or (language == "" and lang == "console"):
                    blocks.append("\n".join(line.removeprefix("$ ") for line in current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def _calls():
    for block in _blocks("python"):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value
                if isinstance(owner, ast.Attribute) and isinstance(owner.value, ast.Name) \
                        and owner.value.id in ("cf", "ci"):  # ci.SAE.load
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


def test_readme_command_lines_parse():
    """Every concrete `circuitfind ...` line of the README's shell blocks (no [optional] or a|b
    placeholders) is accepted by the real argument parser."""
    import shlex

    from circuitfind.cli import build_parser

    lines = [line.split("#")[0].strip() for block in _blocks("")
             for line in block.replace("\\\n", " ").splitlines() if line.startswith("circuitfind ")]
    concrete = [line for line in lines if not any(c in line for c in "[|") and "..." not in line
                and "--help" not in line]
    for line in concrete:
        args = build_parser().parse_args(shlex.split(line)[1:])
        assert callable(args.run), line
    assert any(line.startswith("circuitfind discover") for line in concrete)


def test_options_named_in_the_methods_table_exist():
    """A `key=value` in a row of the methods table (docs/tutorials/methods.md) is an option of that row's method."""
    import dataclasses
    import re

    from circuitfind.methods import METHODS

    text = (DOCS / "tutorials" / "methods.md").read_text()
    rows = [line for line in text.splitlines() if re.match(r"^\| `[a-z-]+`[^|]*\|", line)]
    named, listed = 0, []
    for row in rows:
        methods = re.findall(r"`([a-z-]+)`", row.split("|")[1])
        listed += methods
        for method in methods:
            fields = {f.name for f in dataclasses.fields(METHODS[method][1])}
            for key in re.findall(r"`(\w+)=", row):
                assert key in fields, f"{method}: {key}"
                named += 1
    assert sorted(listed) == sorted(METHODS) and named >= 6  # every method in the table, once


def test_the_families_table_lists_every_adapter():
    """The Models table names each model_type an adapter reads, and no other."""
    from circuitfind.models.adapters import SUPPORTED

    text = (DOCS / "reference" / "models.md").read_text()
    table = text[text.index("| family | `model_type` |"):]
    table = table[: table.index("\n\n")]
    named = {t for line in table.splitlines()[2:] for t in re.findall(r"`([a-z0-9_]+)`", line.split("|")[2])}
    assert named == set(SUPPORTED)
