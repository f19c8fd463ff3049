"""Reports: figures (PNG + PDF that open), tables, the self-contained page — and the page as a reader
sees it, in headless Chromium (the `browser` extra; required where CIRCUITFIND_REQUIRE_BROWSER=1, as
in CI, skipped with a reason elsewhere)."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

import circuitfind as cf
from circuitfind.cli import main
from circuitfind.errors import ConfigError
from circuitfind.report import write_report
from circuitfind.task import Example, Task

HOSTILE = "<script>alert(1)</script>"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Hostile(Task):
    """A task whose prompts hold markup: the page must show it as text."""
    name = "hostile"
    description = "Prompts with <b>markup</b> & a script tag."
    metric = "logit-diff"

    def example(self, rng, words):
        a, b, c = rng.sample(list("abcdefgh"), 3)
        return Example(clean=f"{HOSTILE} {a} {b} {c} {a}", corrupt=f"{HOSTILE} {b} {b} {c} {a}", correct=" x", wrong=" y")


def _hostile_model():
    vocab = {"[PAD]": 0, "[BOS]": 1, "[UNK]": 2, HOSTILE: 3} | {w: i + 4 for i, w in enumerate("abcdefghxy")}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", pad_token="[PAD]", unk_token="[UNK]")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=3, n_head=4, n_embd=32, vocab_size=len(vocab), n_positions=16,
                                     bos_token_id=1, eos_token_id=1, pad_token_id=0)
    return cf.from_hf(transformers.GPT2LMHeadModel(config).eval(), tokenizer=fast, name="hostile-gpt2")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    model = _hostile_model()
    return model, cf.discover(model, Hostile(n=24), method="eap", edges=30, out=out, quiet=True)


def test_run_directory_holds_the_report(run):
    _, r = run
    d = r.out
    for name in ("circuit", "faithfulness", "heads", "scores", "lens", "flow"):
        for ext in ("png", "pdf"):
            assert (d / "figures" / f"{name}.{ext}").stat().st_size > 1000, name
    for name in ("summary", "top_edges"):
        assert (d / "tables" / f"{name}.md").exists() and (d / "tables" / f"{name}.tex").exists()
    assert (d / "report.html").exists() and (d / "inspect.json").exists()
    assert "Information flow of one prompt" in (d / "report.html").read_text()


def test_pdfs_open_and_figures_are_not_blank(run):
    pdfium = pytest.importorskip("pypdfium2", reason="pypdfium2 (test extra) renders the PDFs")
    for pdf in sorted((run[1].out / "figures").glob("*.pdf")):
        doc = pdfium.PdfDocument(str(pdf))
        image = doc[0].render(scale=1).to_pil().convert("L")
        lo, hi = image.getextrema()
        assert len(doc) == 1 and hi - lo > 100, f"{pdf.name} renders blank"
        doc.close()


def test_tables(run):
    _, r = run
    d = r.out / "tables"
    md = (d / "summary.md").read_text()
    assert f"| {r.result['n_edges']}/{r.result['n_edges_total']} |" in md
    tex = (d / "top_edges.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex
    assert "->" not in tex and r"\textgreater{}" in tex  # edge names escaped for LaTeX
    top = r.scores.top(1)[0][0]
    assert top in (d / "top_edges.md").read_text()


def test_dot_output_has_the_circuit_edges(run):
    _, r = run
    dot = (r.out / "figures" / "circuit.dot").read_text()
    assert dot.startswith("digraph") and len(re.findall(r" -> ", dot)) == r.circuit.n_edges


def test_page_is_self_contained_and_escapes_prompts(run):
    _, r = run
    page = (r.out / "report.html").read_text()
    assert HOSTILE not in page  # never raw, neither in the HTML nor in the JSON block
    assert html_escaped(HOSTILE) in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched from the network
    data = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S).group(1))
    assert data["examples"][0]["clean"].startswith(HOSTILE)


def html_escaped(text: str) -> str:
    import html

    return html.escape(text)


def test_lens_of_all_nodes_sums_to_the_logits(run):
    """Direct logits of every node + the constant part = the model's logits (no soft-capping here)."""
    model, r = run
    from circuitfind.inspect import direct_logits

    batch = Hostile(n=8, split="test").batch(model)
    per_node, const = direct_logits(model, batch.clean)
    logits = model(batch.clean.tokens, batch.clean.attention_mask)[torch.arange(8), batch.clean.answer_pos]
    torch.testing.assert_close(per_node.sum(0) + const, logits, atol=1e-4, rtol=1e-4)


def test_report_command_rerenders_without_the_model(run, tmp_path, capsys):
    _, r = run
    copy = tmp_path / "copy"
    shutil.copytree(r.out, copy)
    shutil.rmtree(copy / "figures")
    (copy / "report.html").unlink()
    assert main(["report", str(copy)]) == 0
    assert str(copy / "report.html") in capsys.readouterr().out
    assert (copy / "figures" / "circuit.pdf").exists() and (copy / "report.html").exists()


def test_report_of_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(ConfigError, match="not a complete run directory"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert not (tmp_path / "report.html").exists()


def test_report_of_a_file_points_to_sweep_reports(run, tmp_path, capsys):
    store = tmp_path / "sweep.sqlite"
    store.write_bytes(b"")
    assert main(["report", str(store)]) == 2
    assert f"circuitfind report --sweep {store}" in capsys.readouterr().err
    assert main(["report", str(run[1].out), "--out", str(tmp_path / "x")]) == 2  # --out is the sweep's
    assert "--out places a sweep's report" in capsys.readouterr().err and not (tmp_path / "x").exists()


def _browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or CHROMIUM is None:
        if os.environ.get("CIRCUITFIND_REQUIRE_BROWSER") == "1":
            pytest.fail("CIRCUITFIND_REQUIRE_BROWSER=1 but playwright or chromium is missing")
        pytest.skip("needs the browser extra (playwright) and chromium")
    return sync_playwright


def _launch(playwright, tmp_path):
    """Headless Chromium with a profile of its own, nothing fetched from the network."""
    return playwright.chromium.launch_persistent_context(
        str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--no-first-run"])


def test_page_in_a_real_browser(run, tmp_path):
    sync_playwright = _browser()
    _, r = run
    errors, dialogs = [], []
    with sync_playwright() as p:
        browser = _launch(p, tmp_path)
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto((r.out / "report.html").as_uri())
            edges = page.locator("#circuit path.edge")
            assert edges.count() == r.circuit.n_edges
            for k in (1, 3, 10, 60, 150):  # the page re-prunes exactly as cf.prune does
                page.locator("#n-edges").fill(str(k))
                assert edges.count() == cf.prune(r.scores, edges=k).n_edges, k
            assert edges.count() != r.circuit.n_edges
            assert HOSTILE in page.inner_text("body")
            page.locator("#circuit .node[data-node='input']").click()
            assert "direct effect" in page.inner_text("#node-info")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    assert not dialogs, "a prompt's markup ran as script"
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_token_flow_slider_and_states_in_a_real_browser(run, tmp_path):
    """The page's τ slider re-prunes the token-by-layer graph as inspect.flow prunes it (the stored graph's own
    pruning, tests/test_token_flow.py, equals inspect.flow at each τ); a click on a state shows its projection."""
    from tests.test_token_flow import _prune_stored
    sync_playwright = _browser()
    _, r = run
    stored = json.loads((r.out / "inspect.json").read_text())["token_flow"]
    errors = []
    with sync_playwright() as p:
        browser = _launch(p, tmp_path)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((r.out / "report.html").as_uri())
            lines = page.locator("#token-flow line.flow-edge")
            assert lines.count() == len(_prune_stored(stored, 0.04)) > 0
            for tau in ("0.1", "0.3", "0.01"):
                page.locator("#flow-tau").fill(tau)
                assert lines.count() == len(_prune_stored(stored, float(tau))), tau
            page.locator("#token-flow .flow-node").first.click()
            assert "promotes" in page.inner_text("#flow-info")
        finally:
            browser.close()
    assert not errors, errors


def test_page_of_node_scores_in_a_real_browser(tmp_path):
    """For node scores the slider counts nodes and draws the edges among them, as cf.prune(nodes=k)."""
    sync_playwright = _browser()
    model = _hostile_model()
    r = cf.discover(model, Hostile(n=24), method="eap-node", out=tmp_path / "run", quiet=True)
    g = model.graph
    assert all(bool(row[: int(row.sum())].all()) for row in g.edge_mask)  # each receiver reads a prefix of senders
    with sync_playwright() as p:
        browser = _launch(p, tmp_path)
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((r.out / "report.html").as_uri())
            edges = page.locator("#circuit path.edge")
            assert edges.count() == r.circuit.n_edges > 0 and "nodes" in page.inner_text("body")
            for k in (1, 3, 6, 10, g.n_senders):
                page.locator("#n-edges").fill(str(k))
                assert edges.count() == cf.prune(r.scores, nodes=k).n_edges, k
        finally:
            browser.close()
    assert not errors, errors


def test_curve_figure_names_both_rankings_and_takes_a_one_ranking_curve(tmp_path):
    from circuitfind.report.figures import curves
    import matplotlib.pyplot as plt

    fractions = [0.01, 0.1, 1.0]
    both = {"curve": {"fractions": fractions, "faithfulness_signed": [0.1, 0.5, 1.0],
                      "faithfulness_absolute": [0.2, 0.9, 1.0]}, "cpr": 0.5, "cmd": 0.1}
    signed_only = {"curve": {"fractions": fractions, "faithfulness_signed": [0.1, 0.5, 1.0],
                             "faithfulness_absolute": []}, "cpr": 0.5, "cmd": float("nan")}
    with pytest.MonkeyPatch.context() as mp:
        shown = {}
        mp.setattr(plt.Axes, "legend", lambda self, handles=None, **kw: shown.setdefault("labels", [
            h.get_label() for h in handles]))
        paths = curves({"eap": both, "eap-ig": signed_only}, tmp_path / "curve")
    assert all(p.exists() for p in paths)
    assert "ranked by score (CPR)" in shown["labels"] and "ranked by |score| (CMD)" in shown["labels"]


def test_node_scores_are_shown_once_per_node():
    """Node scores sit whole on every out-edge: the heatmap shows |score|, not the score times the
    out-degree (which made m0 of toy-lm look 20x a head of equal score)."""
    from circuitfind.report.figures import node_importance

    model = cf.load_model("toy-lm")
    task = cf.load_task("ioi", n=8)
    node = cf.score_edges(model, task, "eap-node")
    heads, mlps = node_importance(node)
    g = model.graph
    assert float(mlps[0]) == pytest.approx(abs(float(node.scores[g.edge_mask[:, g.mlp_sender(0)], g.mlp_sender(0)][0])))
    edge = cf.score_edges(model, task, "eap")
    assert float(node_importance(edge)[1][0]) == pytest.approx(float(edge.scores[:, g.mlp_sender(0)].abs().sum()))


def test_a_large_circuit_figure_draws_its_strongest_edges(run, monkeypatch, tmp_path):
    """A figure of 90k edges took 400 s to render (an arrow each, clipped to its nodes) and could not be
    read: past MAX_DRAWN_EDGES the figure draws the strongest ones and says so."""
    from matplotlib.text import Annotation

    from circuitfind.report import figures

    _, r = run
    drawn = {}
    monkeypatch.setattr(figures, "MAX_DRAWN_EDGES", 5)
    monkeypatch.setattr(figures, "save", lambda fig, path: drawn.update(fig=fig) or [])
    figures.circuit(r.scores, r.circuit, tmp_path / "c")
    ax = drawn["fig"].axes[0]
    arrows = [t for t in ax.texts if isinstance(t, Annotation)]
    assert len(arrows) == 5 < r.circuit.n_edges and "the strongest 5 drawn" in ax.get_title()


def test_node_scores_list_their_top_nodes(tmp_path):
    """A table of the top edges of node scores repeats each node's one score over its out-edges: node
    scores get a table of their top nodes (tables/top_nodes.*, and on the page)."""
    r = cf.discover(_hostile_model(), Hostile(n=24), method="eap-node", out=tmp_path / "run", quiet=True)
    values = r.scores.node_values()
    best = r.scores.graph.senders[int(values.abs().argmax())]
    tables_dir = tmp_path / "run" / "tables"
    assert not (tables_dir / "top_edges.md").exists()
    md = (tables_dir / "top_nodes.md").read_text()
    assert md.splitlines()[0] == "| # | node | score |" and f"| 1 | {best} |" in md
    assert "Top nodes" in (tmp_path / "run" / "report.html").read_text()
    with pytest.raises(ConfigError, match="node methods"):
        cf.score_edges(_hostile_model(), Hostile(n=8), "eap").node_values()
