"""Error bars: per-example scores from the same passes, the bootstrap, circuit stability."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.engine.ablation import ablated_outputs
from circuitfind.engine.attribution import attribute
from circuitfind.engine.node_ig import node_integrated_gradients
from circuitfind.engine.patching import Inputs, edge_effects
from circuitfind.methods import PER_EXAMPLE
from tests.conftest import VOCAB, tiny_hf, tiny_model


@pytest.fixture(scope="module")
def model():
    return cf.from_hf(tiny_hf("gpt2")).double()


def _inputs(batch=4, pos=7):
    g = torch.Generator().manual_seed(2)
    mask = torch.ones(batch, pos, dtype=torch.long)
    mask[1, :2] = 0  # a left-padded prompt
    clean = torch.randint(3, VOCAB, (batch, pos), generator=g)
    corrupt = torch.cat([clean[:, :2], torch.randint(3, VOCAB, (batch, pos - 2), generator=g)], 1)
    return Inputs.of(clean, mask), Inputs.of(corrupt, mask)


def _metric(logits):  # logits [..., batch, vocab] → [..., batch]
    return logits[..., 3] - logits[..., 5]


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2_moe+experts"])
def test_each_examples_part_is_that_example_scored_alone(family, monkeypatch):
    """attribute / node IG / exact patching with per_example: example i's part equals the method run on example
    i alone (its objective that example's metric over the batch size), and the parts sum to the scores. Small
    gradient chunks (12 token rows, examples of 7) make q/k/v gradients arrive in spans that hold whole examples
    (the batched product) and begin or end inside others (the ragged pieces): rows 0-12, 12-24, 24-28."""
    from circuitfind.engine import walk_grad
    monkeypatch.setattr(walk_grad, "GRAD_CHUNK_ELEMENTS", 3 * 4 * 32 * 12)  # 12 token rows a chunk (pos 7)
    model = tiny_model(family)
    clean, corrupt = _inputs()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    b = clean.batch
    mean = lambda logits: _metric(logits).mean(-1)  # noqa: E731
    for run in (lambda i, a, o, **k: attribute(model, i, a, o, alphas=(0.5, 1.0), **k),
                lambda i, a, o, **k: node_integrated_gradients(model, i, a, o, steps=2, **k)):
        scores, parts = run(clean, abl.clone(), mean, per_example=True)
        assert parts.shape == (b, *scores.shape) and parts.abs().max() > 1e-3
        assert (parts.sum(0) - scores).abs().max() <= 1e-6 * scores.abs().max()
        for i in range(b):
            alone = run(clean.rows(slice(i, i + 1)), abl[:, i:i + 1].clone(), lambda logits: mean(logits) / b)
            assert (parts[i] - alone).abs().max() <= 1e-6 * scores.abs().max()
    effects = edge_effects(model, clean, abl, _metric, per_example=True)  # [dst, src, batch]
    assert (effects.mean(-1) - edge_effects(model, clean, abl, mean)).abs().max() <= 1e-6  # (float32 effects)
    one = edge_effects(model, clean.rows(slice(2, 3)), abl[:, 2:3], mean)
    assert (effects[..., 2] - one).abs().max() <= 1e-6 and one.abs().max() > 1e-3


@pytest.mark.parametrize("method", PER_EXAMPLE)
def test_the_mean_of_per_example_scores_is_the_methods_scores(model, method):
    task = cf.load_task("induction", n=6, metric="logit-diff")
    scores = cf.score_edges(model, task, method, per_example=True)
    assert scores.per_example.shape == (6, *scores.scores.shape)
    assert scores.scores.abs().max() > 1e-4
    assert (scores.per_example.mean(0) - scores.scores).abs().max() <= 1e-6 * scores.scores.abs().max()
    point = cf.score_edges(model, task, method)  # the point estimate's own passes, without the split
    assert (scores.per_example.mean(0) - point.scores).abs().max() <= 1e-6 * point.scores.abs().max()
    assert not torch.allclose(scores.per_example[0], scores.per_example[1])  # examples do differ
    if method in ("eap", "exact"):  # a batch at a time: the same examples' scores, in order
        split = cf.score_edges(model, task, method, per_example=True, batch_size=4)
        assert (split.per_example - scores.per_example).abs().max() <= 1e-6 * scores.scores.abs().max()


def test_methods_that_do_not_average_have_no_per_example_scores(model):
    task = cf.load_task("induction", n=4, metric="logit-diff")
    for method in ("acdc", "edge-pruning", "ifr"):
        with pytest.raises(cf.ConfigError, match="does not average over examples"):
            cf.score_edges(model, task, method, per_example=True)
    with pytest.raises(cf.ConfigError, match="not each example's"):
        cf.score_edges(model, task, "eap-ig-edges", per_example=True)
    with pytest.raises(cf.ConfigError, match="per_example"):
        cf.score_edges(model, task, "eap", per_example="yes")


def test_per_example_scores_past_the_memory_bound_live_in_a_mapped_file(model, monkeypatch):
    from circuitfind.methods import common
    task = cf.load_task("induction", n=4, metric="logit-diff")
    in_memory = cf.score_edges(model, task, "eap", per_example=True).per_example
    monkeypatch.setattr(common, "EXAMPLE_MEMORY_BOUND", 1024)
    mapped = cf.score_edges(model, task, "eap", per_example=True).per_example
    assert torch.equal(mapped, in_memory)
    assert mapped.untyped_storage().filename is not None  # (a file mapping, not the heap)


# ---------------------------------------------------------------------- the bootstrap
from circuitfind import uncertainty as unc  # noqa: E402


def test_a_statistic_whose_examples_are_all_equal_has_zero_width():
    values = torch.full((30, 5), 0.25)  # (zero to float rounding: a resample's weights sum to 1 within an ulp)
    low, high = unc.mean_interval(values, resamples=200)
    assert (high - low).abs().max() <= 1e-7 and torch.allclose(low, torch.full((5,), 0.25))
    f_low, f_high = unc.faithfulness_interval(torch.full((30,), 0.7), torch.ones(30), torch.zeros(30), resamples=200)
    assert abs(f_high - f_low) <= 1e-12 and f_low == pytest.approx(0.7)


def test_the_same_seed_gives_the_same_intervals_bit_for_bit_and_another_seed_others():
    values = torch.randn(40, 3, 4, generator=torch.Generator().manual_seed(0))
    a, b = unc.mean_interval(values, seed=5), unc.mean_interval(values, seed=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], unc.mean_interval(values, seed=6)[0])


@pytest.mark.parametrize("resamples", [1, 2, 7, 1000])
def test_percentile_intervals_are_numpys_linear_percentiles(resamples):
    import numpy as np
    samples = torch.randn(resamples, 3, 5, generator=torch.Generator().manual_seed(resamples)).double()
    samples[:, 0, 0] = 1.5  # ties
    for level in (0.95, 0.5, 0.999):
        low, high = unc.interval(samples, level)
        assert low.shape == (3, 5)
        assert np.allclose(low.numpy(), np.percentile(samples.numpy(), 50 * (1 - level), axis=0), rtol=0, atol=1e-12)
        assert np.allclose(high.numpy(), np.percentile(samples.numpy(), 50 * (1 + level), axis=0), rtol=0, atol=1e-12)


def test_resampled_means_are_the_means_of_the_drawn_examples():
    """w @ values against drawing the examples by index (the definition of a bootstrap resample)."""
    values = torch.randn(12, 3, generator=torch.Generator().manual_seed(1)).double()
    w = unc.resample_weights(12, resamples=5, seed=3)
    draws = torch.randint(12, (5, 12), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(w @ values, values[draws].mean(1))


@pytest.mark.parametrize("statistic", ["mean", "faithfulness"])
def test_95_percent_intervals_cover_the_true_value_in_93_to_97_percent_of_400_trials(statistic):
    """A synthetic metric with a known sampling distribution: n = 60 examples, 400 seeded trials."""
    gen, covered = torch.Generator().manual_seed(0), 0
    for trial in range(400):
        if statistic == "mean":
            values = 2.0 + torch.randn(60, generator=gen)
            low, high = unc.mean_interval(values[:, None], resamples=1000, seed=trial)
            covered += int(low[0] <= 2.0 <= high[0])
        else:  # true faithfulness (0.6 − 0) / (1 − 0) = 0.6, numerator and denominator correlated per example
            base = torch.randn(60, generator=gen)
            circuit, full = 0.6 + 0.3 * base + 0.2 * torch.randn(60, generator=gen), 1.0 + 0.3 * base
            empty = 0.1 * torch.randn(60, generator=gen)
            low, high = unc.faithfulness_interval(circuit, full, empty, resamples=1000, seed=trial)
            covered += int(low <= 0.6 <= high)
    assert 0.93 <= covered / 400 <= 0.97, covered / 400


def test_top_k_frequency_is_one_for_a_clear_winner_and_between_for_a_tie():
    gen = torch.Generator().manual_seed(0)
    values = torch.stack([5 + 0.1 * torch.randn(50, generator=gen), 1 + torch.randn(50, generator=gen),
                          1 + torch.randn(50, generator=gen), 0.01 * torch.randn(50, generator=gen)], 1)
    freq = unc.top_k_frequency(values, k=2, resamples=400)
    assert freq[0] == 1.0 and freq[3] == 0.0 and 0.2 < freq[1] < 0.8 and freq[1] + freq[2] == pytest.approx(1.0)
    assert freq.sum() == pytest.approx(2.0)  # k per resample


# ---------------------------------------------------------------------- intervals of circuits, and stability
@pytest.fixture(scope="module")
def toy():
    return cf.load_model("toy-lm")


def _draws(n, seed, resamples=1):
    return torch.randint(n, (resamples, n), generator=torch.Generator().manual_seed(seed))


def test_one_resample_of_the_curve_is_the_curve_of_the_resampled_task(toy):
    """With one resample the interval is that resample's value: it equals CPR, CMD and faithfulness computed by
    forwards on the task whose test examples are the ones drawn (an independent route to the same number)."""
    from circuitfind.uncertainty import resampled_task
    task = cf.load_task("ioi", n=30)
    scores = cf.score_edges(toy, task, "eap")
    curve = cf.faithfulness_curve(toy, task, scores, resamples=1, seed=4)
    test = task.with_split("test")
    drawn = resampled_task(test, _draws(len(test.examples(toy)), 4)[0].tolist())
    again = cf.faithfulness_curve(toy, drawn, scores, split="test")
    assert curve.ci["cpr"] == pytest.approx([again.cpr] * 2, abs=1e-6)
    assert curve.ci["cmd"] == pytest.approx([again.cmd] * 2, abs=1e-6)
    for (low, high), f in zip(curve.ci["faithfulness_absolute"], again.faithfulness_absolute):
        assert low == pytest.approx(f, abs=1e-6) and high == pytest.approx(f, abs=1e-6)
    circuit = cf.prune(scores, edges=60)
    one = cf.evaluate(toy, task, circuit, resamples=1, seed=4)["ci"]["faithfulness"]
    assert one == pytest.approx([cf.evaluate(toy, drawn, circuit)["faithfulness"]] * 2, abs=1e-6)
    wide = cf.faithfulness_curve(toy, task, scores, resamples=500)  # and a real interval holds the estimate
    assert wide.ci["cpr"][0] < wide.cpr < wide.ci["cpr"][1] and wide.ci["cmd"][0] < wide.cmd < wide.ci["cmd"][1]
    assert (wide.cpr, wide.cmd) == (curve.cpr, curve.cmd)  # (intervals change no point estimate)


def test_stability_prunes_each_resamples_mean_which_is_the_resampled_tasks_scores(toy):
    from circuitfind.uncertainty import resampled_task
    task = cf.load_task("ioi", n=24)
    st = cf.stability(toy, task, "eap", edges=80, resamples=6, seeds=(0, 1))
    assert len(st.circuits) == 12 and len(st.jaccard_edges) == 12 * 11 // 2
    assert all(0 <= j <= 1 for j in st.jaccard_edges + st.jaccard_nodes) and min(st.jaccard_edges) < 1
    n = len(task.examples(toy))
    first = cf.prune(cf.score_edges(toy, resampled_task(task, _draws(n, 0, 6)[0].tolist()), "eap"), edges=80)
    assert torch.equal(st.circuits[0].mask, first.mask)  # seed 0's first resample, by forwards on its examples
    sizes = torch.tensor([c.n_edges for c in st.circuits], dtype=torch.float)
    assert float(st.frequency.sum()) == pytest.approx(float(sizes.mean()), rel=1e-5)
    assert set(st.always) <= set(toy.graph.edge_names(st.circuits[5].mask)) and not set(st.always) & set(st.sometimes)
    assert st.summary()["jaccard_edges"]["interval"][0] <= st.summary()["jaccard_edges"]["median"]


def test_stability_of_a_method_that_does_not_average_runs_it_again_on_each_resample(toy):
    task = cf.load_task("ioi", n=12)
    st = cf.stability(toy, task, "ifr", edges=40, resamples=3)
    assert len(st.circuits) == 3 and all(c.n_edges <= 40 for c in st.circuits)
    with pytest.raises(cf.ConfigError, match="edges=N or nodes=N"):
        cf.stability(toy, task, "eap")
    with pytest.raises(cf.ConfigError, match="resamples"):
        cf.stability(toy, task, "eap", edges=10, resamples=-1)
    with pytest.raises(cf.ConfigError, match="at least one resample"):  # before scoring anything
        cf.stability(toy, task, "eap", edges=10, resamples=0)


# ---------------------------------------------------------------------- everywhere a figure is shown
def test_discover_with_resamples_puts_intervals_in_every_artifact_and_changes_no_estimate(toy, tmp_path):
    from circuitfind.report import write_report
    plain = cf.discover(toy, "ioi", "eap", n=24, edges=120, out=tmp_path / "plain", quiet=True)
    run = cf.discover(toy, "ioi", "eap", n=24, edges=120, out=tmp_path / "ci", resamples=300, quiet=True)
    r, ci = run.result, run.result["ci"]
    for key in ("faithfulness", "cpr", "cmd"):
        assert r[key] == plain.result[key]  # (intervals change no estimate)
        assert ci[key][0] <= r[key] + 1e-9 and r[key] - 1e-9 <= ci[key][1] and ci[key][0] < ci[key][1]
    assert len(ci["curve"]["faithfulness_signed"]) == len(r["curve"]["fractions"]) and ci["resamples"] == 300
    # the same scores to float rounding (summed example by example), and the per-example ones not kept
    assert torch.allclose(run.scores.scores, plain.scores.scores, atol=1e-6) and run.scores.per_example is None
    scores = cf.EdgeScores.load(tmp_path / "ci")
    low, high, freq = (scores.intervals[k] for k in ("low", "high", "frequency"))
    on = toy.graph.edge_mask
    inside = ((low <= scores.scores + 1e-6) & (scores.scores <= high + 1e-6))[on]
    assert float(inside.float().mean()) >= 0.99 and bool((high >= low).all())
    kept = run.circuit.mask
    assert freq[kept].mean() > 0.8 > freq[on & ~kept].mean()  # the circuit's edges are in most resamples'
    assert scores.intervals["k"] == run.circuit.n_edges and scores.intervals["level"] == 0.95
    summary = (tmp_path / "ci" / "tables" / "summary.md").read_text()
    assert f"{r['cpr']:.3f} [{ci['cpr'][0]:.3f}, {ci['cpr'][1]:.3f}]" in summary
    assert "95% interval | in circuit" in (tmp_path / "ci" / "tables" / "top_edges.md").read_text()
    assert "[" in (tmp_path / "ci" / "tables" / "summary.tex").read_text()
    import json
    import re

    def page_edges(d):  # the page's data: each edge [dst, src, score] (+ low, high, frequency with intervals)
        page = (d / "report.html").read_text()
        block = re.search(r'id="report-data">(.*?)</script>', page, re.S).group(1)
        return json.loads(block)["edges"]
    with_ci, without = page_edges(tmp_path / "ci"), page_edges(tmp_path / "plain")
    assert {len(e) for e in with_ci} == {6} and {len(e) for e in without} == {3}
    d, s, _, lo, hi, f = with_ci[0]
    assert (lo, hi, f) == pytest.approx((float(low[d, s]), float(high[d, s]), float(freq[d, s])), abs=1e-6)
    write_report(tmp_path / "ci")  # re-rendered from the files alone
    (tmp_path / "ci" / "ci.safetensors").unlink()
    with pytest.raises(cf.ConfigError, match="does not hold"):
        cf.EdgeScores.load(tmp_path / "ci")


def test_methods_that_do_not_average_get_intervals_of_their_circuits_figures_only(toy, tmp_path):
    run = cf.discover(toy, "ioi", "ifr", n=16, edges=200, out=tmp_path / "r", resamples=100, quiet=True)
    assert run.result["ci"]["edges"] is None and run.result["ci"]["faithfulness"][0] < run.result["ci"]["faithfulness"][1]
    assert not (tmp_path / "r" / "ci.safetensors").exists() and run.scores.intervals is None
    with pytest.raises(cf.ConfigError, match="level"):
        cf.discover(toy, "ioi", "eap", n=16, resamples=10, level=1.5)
    with pytest.raises(cf.ConfigError, match="resamples"):
        cf.discover(toy, "ioi", "eap", n=16, resamples=-3)


def test_the_command_line_and_a_sweep_show_the_intervals(toy, tmp_path, capsys):
    from circuitfind.cli import main
    assert main(["discover", "--model", "toy-lm", "--task", "ioi", "--method", "eap", "-n", "16", "--edges", "60",
                 "--resamples", "50", "--no-report"]) == 0
    assert "95% bootstrap intervals, 50 resamples" in capsys.readouterr().out
    assert main(["stability", "--model", "toy-lm", "--task", "ioi", "--method", "eap", "-n", "16", "--edges", "60",
                 "--resamples", "4", "--seeds", "0,1", "--json", str(tmp_path / "st.json")]) == 0
    assert "Stability(8 circuits" in capsys.readouterr().out
    assert main(["stability", "--model", "no-such-model", "--task", "ioi", "--edges", "5", "--seed", "-1"]) == 2
    assert "seed must be a count" in capsys.readouterr().err  # (refused before the model is looked for)
    import json
    assert set(json.loads((tmp_path / "st.json").read_text())) >= {"jaccard_edges", "always", "sometimes"}
    df = cf.sweep(["toy-lm"], ["ioi"], ["eap", "ifr"], store=tmp_path / "s.sqlite", n=16, edges=60, resamples=50,
                  quiet=True)
    assert (df.cpr_low < df.cpr).all() and (df.cpr < df.cpr_high).all()
    assert main(["report", "--sweep", str(tmp_path / "s.sqlite")]) == 0
    assert "[" in (tmp_path / "s.sqlite.report" / "tables" / "sweep.md").read_text()


def test_compare_gives_iou_intervals_for_runs_of_one_graph_and_depth_profiles_across_models(toy, tmp_path, capsys):
    from circuitfind.circuit import depth_profile
    from circuitfind.cli import main
    from circuitfind.graph import Graph
    from circuitfind.uncertainty import overlap_interval
    a = cf.discover(toy, "ioi", "eap", n=16, edges=80, out=tmp_path / "a", resamples=200, quiet=True, report=False)
    b = cf.discover(toy, "ioi", "exact", n=16, edges=80, out=tmp_path / "b", resamples=200, quiet=True, report=False)
    low, high = overlap_interval(cf.EdgeScores.load(tmp_path / "a"), cf.EdgeScores.load(tmp_path / "b"))
    assert 0 <= low < high <= 1
    assert overlap_interval(a.scores, a.scores) == (1.0, 1.0)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert f"[{low:.3f}, {high:.3f}]" in capsys.readouterr().out
    other = Graph(10, 2)  # a deeper model: its circuit is compared by where its nodes sit
    mask = torch.zeros(other.n_receivers, other.n_senders, dtype=torch.bool)
    mask[other.logits_receiver, other.head_sender(9, 1)] = True  # one head in the last tenth of depth
    cf.Circuit(mask, other).save(tmp_path / "other.json")
    profile = depth_profile(cf.Circuit.load(tmp_path / "other.json"))
    assert profile["heads"] == [0, 0, 0, 0, 0.25] and profile["mlps"] == [0] * 5  # 1 of the 4 heads of layers 8-9
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "other.json"), "--figure", str(tmp_path / "d")]) == 0
    assert "by fifth of depth" in capsys.readouterr().out and (tmp_path / "d.png").exists()


def test_a_method_that_does_not_average_runs_again_on_resamples_for_its_edges_intervals(toy, tmp_path, capsys):
    """discover(reruns=N): the intervals and in-circuit frequencies equal those of the method run by hand on the
    resampled tasks the same seed draws (forwards on the drawn examples: an independent route)."""
    import numpy as np

    from circuitfind.cli import main
    from circuitfind.uncertainty import jaccard, resampled_task
    task = cf.load_task("ioi", n=12)
    run = cf.discover(toy, task, "ifr", edges=150, reruns=4, seed=3, out=tmp_path / "r", quiet=True, report=False)
    n = len(task.examples(toy))
    again = [cf.score_edges(toy, resampled_task(task, d.tolist()), "ifr", seed=3) for d in _draws(n, 3, 4)]
    masks = torch.stack([cf.prune(s, edges=150).mask for s in again])
    stacked = np.stack([s.scores.numpy() for s in again])
    iv = cf.EdgeScores.load(tmp_path / "r").intervals
    on = toy.graph.edge_mask
    assert torch.equal(iv["frequency"], masks.float().mean(0)) and 0 < iv["frequency"][on].max() == 1
    assert np.allclose(iv["low"].numpy(), np.percentile(stacked, 2.5, axis=0) * on.numpy(), atol=1e-6)
    assert np.allclose(iv["high"].numpy(), np.percentile(stacked, 97.5, axis=0) * on.numpy(), atol=1e-6)
    assert (iv["high"] - iv["low"])[on].max() > 0 and iv["resamples"] == 4
    pairs = [jaccard(masks[i], masks[j]) for i in range(4) for j in range(i + 1, 4)]
    stable = run.result["ci"]["stability"]
    assert stable["jaccard_edges"]["median"] == pytest.approx(float(np.median(pairs)))
    assert run.result["ci"]["reruns"] == 4 and run.result["ci"]["edges"] == "ci.safetensors"
    assert run.result["ci"].get("faithfulness") is None  # (no bootstrap of the figures asked for)
    with pytest.raises(cf.ConfigError, match="averages over examples"):
        cf.discover(toy, task, "eap", edges=40, reruns=2)
    with pytest.raises(cf.ConfigError, match="reruns"):
        cf.discover(toy, task, "ifr", edges=40, reruns=-1)
    # ACDC's circuit is its own (the edges kept at its threshold), in each re-run too; the issue's spelling
    assert main(["discover", "--model", "toy-lm", "--task", "ioi", "--method", "acdc", "-n", "4", "--option",
                 "resamples=2", "--option", "threshold=0.05", "--out", str(tmp_path / "a"), "--no-report"]) == 0
    assert "2 re-runs on resamples: Jaccard" in capsys.readouterr().out
    acdc = cf.EdgeScores.load(tmp_path / "a")
    kept = cf.Circuit.load(tmp_path / "a" / "circuit.json").mask
    assert acdc.intervals["resamples"] == 2 and set(acdc.intervals["frequency"].unique().tolist()) <= {0, 0.5, 1}
    assert acdc.intervals["frequency"][kept].mean() > acdc.intervals["frequency"][on & ~kept].mean()
    # and in a sweep, as METHOD:resamples=N (part of the job's key)
    cf.sweep(["toy-lm"], ["ioi"], ["ifr"], store=tmp_path / "s.sqlite", n=12, edges=150, quiet=True,
             options={"ifr": {"resamples": 2}})
    (written,) = list(tmp_path.glob("s*/**/ci.safetensors"))
    assert cf.EdgeScores.load(written.parent).intervals["resamples"] == 2
    with pytest.raises(cf.ConfigError, match="resamples"):
        cf.sweep(["toy-lm"], ["ioi"], ["ifr"], store=tmp_path / "t.sqlite", options={"ifr": {"resamples": -2}})
