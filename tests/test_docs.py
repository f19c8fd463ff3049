"""The documentation site: it builds with warnings as errors, and every code block of every page runs as written
(Python blocks in order, in one namespace per page; `$ circuitfind ...` lines of console blocks through the CLI;
a block whose first line is `# file: NAME` is also written to NAME first, for the page to load)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def _pages_with_code() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if any(lang in ("python", "console") for lang, _ in
                                                         BLOCK.findall(p.read_text())))


def test_the_site_builds_offline_with_warnings_as_errors(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir",
                          str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "score_edges" in api and "per_example" in api  # the reference is generated from the docstrings


def test_every_tutorial_page_is_in_the_site_and_has_code():
    nav = (ROOT / "mkdocs.yml").read_text()
    tutorials = sorted(p.relative_to(DOCS).as_posix() for p in (DOCS / "tutorials").glob("*.md"))
    assert len(tutorials) == 8 and all(t in nav for t in tutorials)
    assert all(DOCS / t in _pages_with_code() for t in tutorials)


@pytest.mark.parametrize("page", _pages_with_code(), ids=lambda p: p.relative_to(DOCS).as_posix())
def test_the_code_of_the_page_runs(page, tmp_path, monkeypatch):
    from circuitfind.cli import main
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    for lang, body in BLOCK.findall(page.read_text()):
        if lang == "python":
            if body.startswith("# file: "):
                Path(body.split("\n", 1)[0].removeprefix("# file: ").strip()).write_text(body)
            exec(compile(body, str(page), "exec"), namespace)  # noqa: S102 — the page's own code
            ran += 1
        elif lang == "console":
            for line in body.splitlines():
                if line.startswith("$ circuitfind "):
                    assert main(shlex.split(line[2:])[1:]) == 0, line
                    ran += 1
    assert ran


def test_result_json_reference_names_every_field(tmp_path):
    import circuitfind as cf
    run = cf.discover(cf.load_model("toy-lm"), "ioi", "eap", n=8, out=tmp_path / "r", report=False, quiet=True,
                      resamples=20)
    documented = set(re.findall(r"^\| `(\w+)` \|", (DOCS / "reference" / "result-json.md").read_text(), re.M))
    assert documented == set(json.loads((tmp_path / "r" / "result.json").read_text())) == set(run.result)


def test_the_readme_is_a_front_door_of_at_most_120_lines_linking_into_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 120
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert len(set(links)) >= 10 and all((ROOT / link).exists() for link in links)
    assert "make test" in readme and "make demo" in readme and "```python" in readme
