"""The built-in metrics against values worked out by hand or by torch's own functions, and the
direction each is scored in (a score is the behaviour lost when an edge is ablated)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import circuitfind as cf
from circuitfind.metrics import HIGHER_IS_BETTER, Targets, cross_entropy, kl, logit_diff, prob_diff


def _targets():
    # example 0: correct {2}, wrong {0, 1}; example 1: correct {1, 3}, wrong {0} (-1 pads)
    return Targets(torch.tensor([[2, -1], [1, 3]]), torch.tensor([[0, 1], [0, -1]]))


def test_logit_and_probability_differences_by_hand():
    logits = torch.tensor([[1.0, 2.0, 4.0, 0.0], [0.0, 1.0, 0.0, 3.0]])
    t = _targets()
    # mean correct logit − mean wrong logit
    assert logit_diff(logits, t).tolist() == pytest.approx([4.0 - 1.5, 2.0 - 0.0])
    p = logits.softmax(-1)
    # total probability of the correct answers − of the wrong ones
    assert prob_diff(logits, t).tolist() == pytest.approx([float(p[0, 2] - p[0, 0] - p[0, 1]),
                                                           float(p[1, 1] + p[1, 3] - p[1, 0])])


def test_kl_and_cross_entropy_match_torch():
    g = torch.Generator().manual_seed(0)
    clean, logits = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)
    t = Targets(torch.tensor([[4], [0], [6]]), torch.tensor([[1], [1], [1]])).with_clean(clean)
    want = F.kl_div(logits.log_softmax(-1), clean.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    assert kl(logits, t).tolist() == pytest.approx(want.tolist(), abs=1e-6)  # KL(clean ‖ current)
    assert kl(clean, t).abs().max() < 1e-6
    assert cross_entropy(logits, t).tolist() == pytest.approx(
        F.cross_entropy(logits, torch.tensor([4, 0, 6]), reduction="none").tolist(), abs=1e-6)
    assert not math.isnan(float(kl(logits, t).sum()))
    # several runs of the batch at once ([k, batch, vocab]: the masks of a forward), the clean
    # distribution broadcast over them, as a method's per-mask mean takes it
    runs = torch.randn(4, 3, 7, generator=g)
    each = torch.stack([F.kl_div(r.log_softmax(-1), clean.log_softmax(-1), log_target=True, reduction="none").sum(-1)
                        for r in runs])
    torch.testing.assert_close(kl(runs, t), each, atol=1e-6, rtol=0)
    from circuitfind.methods.common import Setup
    setup = Setup(batch=None, ablated=None, targets=t, metric=kl, sign=-1.0)
    assert setup.per_mask(runs).tolist() == pytest.approx(each.mean(1).tolist(), abs=1e-6)


@pytest.mark.parametrize("metric", ["kl", "logit-diff"])
def test_exact_scores_are_behaviour_lost(metric):
    """Scores are the behaviour lost when an edge is ablated: under KL (lower is better) that is
    KL(ablated) − KL(clean) = KL(ablated) ≥ 0 for every edge; a metric scored in the wrong direction
    flips them all. Under logit-diff, cutting the whole model's input loses the most."""
    model = cf.load_model("toy-lm")
    task = cf.load_task("induction", n=12, metric=metric)
    scores = cf.score_edges(model, task, "exact").values()
    if metric == "kl":
        assert not HIGHER_IS_BETTER["kl"] and scores.min() >= -1e-6 and scores.max() > 0.01
    else:
        assert scores.max() > 0.5 and scores.max() > -scores.min()


def test_faithfulness_is_undefined_where_the_ablation_changes_nothing():
    from circuitfind.evaluate import faithfulness

    assert faithfulness(3.0, 5.0, 1.0) == pytest.approx(0.5)
    assert math.isnan(faithfulness(2.0, 1.0, 1.0))  # full model = empty circuit: no behaviour to recover


def test_cmd_is_the_area_of_the_distance_from_one_on_either_side():
    """CMD integrates |1 − f|: circuits that overshoot the full model (f > 1) count as far off as those
    that fall short (MIB's circuit track). Every circuit here scores 1.5 (the empty one 0, the full one 1)."""
    from unittest import mock

    import numpy as np

    from circuitfind.evaluate import MIB_FRACTIONS

    model = cf.load_model("toy-induction")
    task = cf.load_task("induction", n=8)
    scores = cf.score_edges(model, task, "exact")

    def metrics(model, parts, masks, chunk, quiet, examples=None, *spans):  # (metric per mask, full's): the empty mask first
        return torch.tensor([0.0] + [1.5] * (len(masks) - 1)), 1.0
    with mock.patch("circuitfind.evaluate._metric_of_masks", side_effect=metrics):
        curve = cf.faithfulness_curve(model, task, scores)
    overshoot = [abs(1 - f) for f in curve.faithfulness_absolute]
    assert max(curve.faithfulness_absolute) == pytest.approx(1.5) and curve.cmd > 0.4
    assert curve.cmd == pytest.approx(np.trapezoid(overshoot, MIB_FRACTIONS))
    lines = repr(curve).splitlines()  # a table of the curve, one column a size
    assert lines[0].startswith(f"CurveResult(CPR {curve.cpr:.3f}, CMD {curve.cmd:.3f}")
    assert lines[1].split()[-10:] == ["0.1", "0.2", "0.5", "1", "2", "5", "10", "20", "50", "100"]
    assert lines[3].split()[-10:] == [f"{f:.3f}" for f in curve.faithfulness_absolute[:-1]] \
        + [f"{curve.faithfulness_absolute[-1]:.3f})"]
