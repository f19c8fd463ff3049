"""Position-aware circuits (issue 32): spans, per-span scores, circuits over (edge, span) units."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.engine.ablation import ablated_outputs
from circuitfind.engine.attribution import attribute
from circuitfind.engine.patching import masked_forward
from circuitfind.engine.positional import span_attribution, span_forward, span_units
from circuitfind.prune import units_without_dangling
from circuitfind.spans import formatted, labelled, unit_index
from circuitfind.types import Inputs
from tests.conftest import VOCAB, tiny_model
from tests.reference import reference_span_logits

TEMPLATED = ["ioi", "greater-than", "sva", "gendered-pronoun", "capital-country", "docstring", "mcqa", "arithmetic"]


@pytest.fixture(scope="module")
def toy():
    return cf.load_model("toy-lm").double()


def _random_case(model, seed=0, b=3, p=7, T=3):
    """Right-padded random prompts of unequal lengths, random spans, corrupted outputs as the ablation."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([p, p - 2, p - 1][:b])
    mask = (torch.arange(p)[None] < lengths[:, None]).long()
    clean = Inputs.of(torch.randint(0, VOCAB, (b, p), generator=g), mask)
    corrupt = Inputs.of(torch.randint(0, VOCAB, (b, p), generator=g), mask)
    spans = torch.randint(0, T, (b, p), generator=g).masked_fill(mask == 0, -1)
    return clean, ablated_outputs(model, "corrupted", clean, corrupt), spans


# ---------------------------------------------------------------------- spans of tasks
def test_labelled_and_formatted_give_the_prompt_and_its_ranges():
    prompt, spans = labelled("When ", ("IO", "Mary"), " and ", ("S1", "John"), " left")
    assert prompt == "When Mary and John left" and prompt[slice(*spans["IO"])] == "Mary"
    text, spans = formatted("{a} + {b} =", {"a": "A", "b": "B"}, end="END", a=12, b=30)
    assert text == "12 + 30 =" and text[slice(*spans["B"])] == "30" and text[slice(*spans["END"])] == " ="
    tokens, spans = labelled([5, 6], ("X", [7, 8, 9]))
    assert tokens == [5, 6, 7, 8, 9] and spans == {"X": (2, 5)}
    with pytest.raises(cf.TaskError, match="twice"):
        labelled(("X", "a"), ("X", "b"))


@pytest.mark.parametrize("name", TEMPLATED)
def test_builtin_templated_tasks_label_their_spans(toy, name):
    batch = cf.load_task(name, n=8).batch(toy)
    assert batch.spans is not None and batch.span_names[-1] == "other" and len(batch.span_names) >= 3
    real = batch.clean.attention_mask.bool()
    assert bool((batch.spans[real] >= 0).all()) and bool((batch.spans[~real] == -1).all())
    for i in range(batch.size):  # every labelled span covers a token of every prompt
        assert set(batch.spans[i][real[i]].tolist()) >= set(range(len(batch.span_names) - 1))


def test_ioi_spans_sit_on_the_names(toy):
    """The IO span's token is the answer and S2's the wrong answer: the labels are where the names are."""
    batch = cf.load_task("ioi", n=16).batch(toy)
    names = batch.span_names
    for i in range(batch.size):
        at = {names[s]: int(batch.clean.tokens[i, j]) for j, s in enumerate(batch.spans[i].tolist()) if s >= 0}
        assert at["IO"] == int(batch.targets.correct[i, 0]) and at["S2"] == int(batch.targets.wrong[i, 0])
        assert at["S1"] == at["S2"]


# ---------------------------------------------------------------------- the engine
@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox", "gemma2", "bloom", "olmo2", "gpt_oss"])
def test_a_mask_the_same_at_every_span_is_masked_forward(family):
    """Every family's attention (rotary, GQA, parallel blocks, post-norms and soft-caps, ALiBi, q/k norms over
    all heads, sinks): a node-graph mask broadcast over the spans is that mask, to float64 rounding."""
    model = tiny_model(family)
    clean, abl, spans = _random_case(model)
    g = model.graph
    mask = (torch.rand(g.n_receivers, g.n_senders, generator=torch.Generator().manual_seed(1)) < 0.6).double()
    expected = masked_forward(model, clean, abl, mask)
    got = span_forward(model, clean, abl, spans, mask[None, :, :, None, None].expand(1, -1, -1, 3, 3))[0]
    assert torch.allclose(got, expected, atol=1e-10), (got - expected).abs().max()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_random_span_masks_match_the_slow_reference(family):
    model = tiny_model(family)
    clean, abl, spans = _random_case(model, seed=2)
    g = model.graph
    gen = torch.Generator().manual_seed(3)
    for density in (0.3, 0.8):
        mask = (torch.rand(g.n_receivers, g.n_senders, 3, 3, generator=gen) < density).double()
        got = span_forward(model, clean, abl, spans, mask[None])[0]
        expected = reference_span_logits(model, clean, abl, spans, mask)
        assert torch.allclose(got, expected, atol=1e-10), (got - expected).abs().max()


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gemma2"])
def test_span_eap_sums_to_eap_on_prompts_of_unequal_length(family):
    """The gradient pass reads the residual stream (GQA and rotary, parallel blocks, post-norms)."""
    model = tiny_model(family)
    clean, abl, spans = _random_case(model, seed=4)
    objective = lambda logits: logits[:, 3].mean() - logits[:, 5].mean()  # noqa: E731
    per_span = span_attribution(model, clean, abl, spans, 3, objective, alphas=(0.5, 1.0))
    whole = attribute(model, clean, abl, objective, alphas=[0.5, 1.0])
    assert torch.allclose(per_span.sum((-1, -2)), whole, atol=1e-6 * whole.abs().max()), \
        (per_span.sum((-1, -2)) - whole).abs().max()
    units = span_units(model, clean, spans, 3)
    assert not bool(per_span[~units].any())  # nothing scored where no unit exists


@pytest.mark.parametrize("method,options", [("eap", {}), ("eap-ig", {"steps": 2})])
def test_span_scores_sum_to_the_scores_without_positions(toy, method, options):
    task = cf.load_task("ioi", n=6)
    spans = cf.score_edges(toy, task, method, positions="spans", **options)
    plain = cf.score_edges(toy, task, method, **options)
    assert spans.spans == ("IO", "S1", "S2", "END", "other") and spans.scores.shape[-1] == 5
    assert torch.allclose(spans.scores.sum((-1, -2)), plain.scores, atol=1e-6 * plain.scores.abs().max())


def test_span_exact_matches_a_slow_reference():
    """Exact patching of single units: m(clean) − m(unit ablated), the logits from the slow loop."""
    model = tiny_model("gpt2")

    class Spanned(cf.Task):
        name = "spanned"

        def example(self, rng, words):
            a, b_, c = rng.sample(range(1, VOCAB), 3)
            prompt, spans = labelled(("A", [a, b_]), [c, 7], ("END", [9]))
            return cf.Example(clean=prompt, corrupt=[c, a, b_, 7, 9], correct=a, wrong=c, spans=spans)

    task = Spanned(n=4)
    scores = cf.score_edges(model, task, "exact", positions="spans")
    batch = task.batch(model)
    abl = ablated_outputs(model, "corrupted", batch.clean, batch.corrupt)
    units = scores.units.flatten().nonzero()[:, 0]
    picks = units[torch.randperm(len(units), generator=torch.Generator().manual_seed(0))[:4]]

    def metric(logits):
        t = batch.targets
        return float((logits.gather(1, t.correct) - logits.gather(1, t.wrong)).mean())

    full = metric(reference_span_logits(model, batch.clean, abl, batch.spans, scores.units.double()))
    for flat in picks.tolist():
        mask = scores.units.double().flatten().clone()
        mask[flat] = 0
        patched = metric(reference_span_logits(model, batch.clean, abl, batch.spans, mask.view(scores.units.shape)))
        assert scores.scores.flatten()[flat].item() == pytest.approx(full - patched, abs=1e-6)


# ---------------------------------------------------------------------- circuits over units
def _paths_ok(g, mask) -> bool:
    """Every kept unit on an input → logits path of (node, span) pairs, by explicit search."""
    T = mask.shape[-1]
    arcs = [((src, s), (int(g.receiver_node[dst]), t)) for dst, src, t, s in mask.nonzero().tolist()]
    forward, backward = {}, {}
    for a, b in arcs:
        forward.setdefault(a, []).append(b)
        backward.setdefault(b, []).append(a)
    def reach(starts, edges):
        seen, todo = set(starts), list(starts)
        while todo:
            for nxt in edges.get(todo.pop(), []):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen
    fed = reach([(0, s) for s in range(T)], forward)
    feeds = reach([(-1, t) for t in range(T)], backward)
    return all(a in fed and b in feeds for a, b in arcs)


def test_pruned_units_lie_on_paths_and_sizes_count_units(toy):
    scores = cf.score_edges(toy, cf.load_task("ioi", n=12), "eap", positions="spans")
    for n in (5, 40, 300):
        raw = cf.prune(scores, edges=n, remove_dangling=False)
        circuit = cf.prune(scores, edges=n)
        assert raw.n_edges == n and circuit.n_edges <= n and _paths_ok(toy.graph, circuit.mask)
        assert bool((circuit.mask <= raw.mask).all())
        assert not _paths_ok(toy.graph, raw.mask) or raw.n_edges == circuit.n_edges
    g = toy.graph
    mask = torch.zeros_like(scores.units)
    mask[unit_index(g, scores.spans, "a3.h1->logits@END")] = True
    mask[unit_index(g, scores.spans, "input->a3.h1<v>@IO→END")] = True
    mask[unit_index(g, scores.spans, "input->a3.h1<q>@IO")] = True  # the head at IO feeds nothing kept
    kept = units_without_dangling(g, mask)
    assert int(kept.sum()) == 2 and not kept[unit_index(g, scores.spans, "input->a3.h1<q>@IO")]


def test_a_node_graph_circuit_at_every_span_evaluates_as_itself(toy):
    task = cf.load_task("ioi", n=8)
    scores = cf.score_edges(toy, task, "eap", positions="spans")
    plain = cf.prune(cf.score_edges(toy, task, "eap"), edges=60)
    expanded = cf.Circuit(plain.mask[..., None, None] & scores.units, toy.graph, {}, scores.spans, "spans")
    a, b = cf.evaluate(toy, task, plain), cf.evaluate(toy, task, expanded)
    assert b["metric_circuit"] == pytest.approx(a["metric_circuit"], abs=1e-9)
    full = cf.Circuit(scores.units, toy.graph, {}, scores.spans, "spans")
    assert cf.evaluate(toy, task, full)["faithfulness"] == pytest.approx(1.0, abs=1e-9)


def test_span_scores_and_circuits_round_trip(toy, tmp_path):
    scores = cf.score_edges(toy, cf.load_task("arithmetic", n=6), "eap", positions="spans")
    scores.save(tmp_path)
    back = cf.EdgeScores.load(tmp_path)
    assert back.spans == scores.spans and back.positions == "spans" and torch.equal(back.scores, scores.scores)
    assert torch.equal(back.units, scores.units) and back.top(3) == scores.top(3)
    circuit = cf.prune(scores, edges=30)
    circuit.save(tmp_path / "circuit.json")
    again = cf.Circuit.load(tmp_path / "circuit.json")
    assert torch.equal(again.mask, circuit.mask) and again.spans == circuit.spans
    assert cf.overlap(circuit, again)["edges"]["iou"] == 1.0


def test_tokens_positions_need_prompts_of_one_length(toy):
    scores = cf.score_edges(toy, cf.load_task("arithmetic", n=6), "eap", positions="tokens")
    assert scores.spans == tuple(str(i) for i in range(5)) and scores.positions == "tokens"
    circuit = cf.prune(scores, edges=40)
    assert cf.evaluate(toy, cf.load_task("arithmetic", n=6), circuit)["n_edges"] == circuit.n_edges
    with pytest.raises(cf.TaskError, match="one length|tokens long"):
        cf.score_edges(toy, cf.load_task("ioi", n=12), "eap", positions="tokens")


def test_bad_position_requests_are_refused_before_work(toy):
    with pytest.raises(cf.ConfigError, match="positions"):
        cf.score_edges(toy, "ioi", "acdc", positions="spans")
    with pytest.raises(cf.ConfigError, match="positions"):
        cf.score_edges(toy, "ioi", "eap", positions="words")
    with pytest.raises(cf.TaskError, match="label no spans"):
        cf.score_edges(toy, cf.load_task("induction", n=4, metric="logit-diff"), "eap", positions="spans")
    scores = cf.score_edges(toy, cf.load_task("arithmetic", n=6), "eap", positions="spans")
    with pytest.raises(cf.ConfigError, match="edges= or threshold="):
        cf.prune(scores, edges=10, strategy="greedy")
    from circuitfind.interop import to_eap_ig
    with pytest.raises(cf.ConfigError, match="no positions"):
        to_eap_ig(scores)


def test_discover_report_and_command_line_take_positions(tmp_path, capsys):
    from circuitfind.cli import main

    model = cf.load_model("toy-lm")
    run = cf.discover(model, cf.load_task("arithmetic", n=8), "eap", positions="spans", out=tmp_path / "run",
                      quiet=True)
    r = run.result
    assert r["positions"] == "spans" and r["spans"] == ["A", "B", "END", "other"]
    assert r["n_edges_total"] == run.scores.n_edges > model.graph.n_edges and r["n_edges"] == run.circuit.n_edges
    page = (tmp_path / "run" / "report.html").read_text()
    assert 'id="span-circuit"' in page and "(edge, span) units" in page
    assert (tmp_path / "run" / "tables" / "top_units.md").exists()
    assert main(["--quiet", "discover", "--model", "toy-lm", "--task", "arithmetic", "-n", "8", "--method", "eap",
                 "--positions", "spans", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert f"{r['n_edges']} of {r['n_edges_total']} (edge, span) units" in out
    assert main(["discover", "--model", "toy-lm", "--task", "ioi", "--method", "acdc", "--positions", "spans"]) != 0
    assert "position-aware circuits are scored by eap" in capsys.readouterr().err
