"""Pure parts of ``benchmarks.novelty`` and ``benchmarks.lobo``: AUROC, rule choice, win/tie/loss, reports."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.lobo import accuracy_goal_lines, fold_table, format_section
from benchmarks.novelty import auroc, summarize
from benchmarks.novelty import format_section as novelty_section


def test_auroc_counts_ties_half_and_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    positive, negative = rng.integers(0, 5, 30).astype(float), rng.integers(0, 5, 40).astype(float)
    pairs = (positive[:, None] > negative[None, :]).mean() + 0.5 * (positive[:, None] == negative[None, :]).mean()
    assert auroc(positive, negative) == pytest.approx(pairs)
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert np.isnan(auroc(np.array([]), np.array([1.0])))


def _fold(dataset: str, removed: str, rules: dict[str, tuple[float, float]]) -> dict:
    return {
        "dataset": dataset, "removed": removed, "holdout": "b1", "known_accuracy": 0.9,
        "rules": {r: {"removed_unknown": a, "known_unknown": b} for r, (a, b) in rules.items()},
        "auroc": {m: 0.8 for m in ("mahalanobis", "relative_mahalanobis", "knn", "energy", "max_softmax")},
    }


def test_summary_picks_the_best_rule_within_the_known_unknown_budget() -> None:
    rules = {"max_softmax@0.5": (0.1, 0.0), "mahalanobis@0.95": (0.95, 0.10), "mahalanobis@0.99": (0.85, 0.04),
             "energy@0.99": (0.6, 0.02)}
    folds = [_fold("a", "T1", rules), _fold("a", "T2", rules), _fold("b", "T1", rules)]
    summary = summarize(folds)
    assert summary["default"] == "mahalanobis@0.99"
    assert summary["rules"]["mahalanobis@0.95"]["removed_unknown"] == pytest.approx(0.95)
    text = novelty_section(summary, folds, [0], "python -m benchmarks.novelty")
    assert "`mahalanobis@0.99` (best ≤ 5%)" in text and "goal is met" in text


def test_lobo_outcome_is_a_tie_within_half_a_point() -> None:
    result = {
        "dataset": "d", "batches": ["x", "y", "z"],
        "ours": [{"batch": b, "seed": s, "macro_f1": f, "accuracy": f} for s in (0, 1)
                 for b, f in (("x", 0.900), ("y", 0.900), ("z", 0.900))],
        "peers": {"x": {"logreg": {"macro_f1": 0.896, "accuracy": 0.9}},
                  "y": {"logreg": {"macro_f1": 0.880, "accuracy": 0.9}},
                  "z": {"logreg": {"macro_f1": 0.910, "accuracy": 0.9}}},
    }
    outcomes = [row["logreg_outcome"] for row in fold_table(result)]
    assert outcomes == ["tie", "win", "loss"]
    calibration = {"ece_before": 0.1, "ece_after": 0.02, "known_unknown_today": 0.0, "known_unknown_novelty": 0.03,
                   "temperature": 0.5, "n_unseen": 0}
    for run in result["ours"]:
        run.update(calibration)
    text = format_section([result], [0, 1], [], "mahalanobis@0.99")
    assert "1 wins, 1 ties, 1 losses over 3 folds" in text
    assert "met on every set" in text


def test_the_accuracy_goal_line_says_whether_ours_beats_celltypist_by_a_point() -> None:
    names = {"celltypist": "CellTypist 1.7.1"}
    close = {"a": {"ours": 0.935, "celltypist": 0.932}, "b": {"ours": 0.90, "celltypist": 0.90}}
    assert accuracy_goal_lines(close, names) == [
        "- Mean over the 2 sets: ours 0.9175, CellTypist 1.7.1 0.9160 (+0.15 pp). Goal (≥ +1 pp, no set more"
        " than 0.5 pp below): **not met**: +0.15 pp on average; no set is more than 0.5 pp below."
    ]
    ahead_but_one_set_below = {"a": {"ours": 0.95, "celltypist": 0.92}, "b": {"ours": 0.90, "celltypist": 0.91}}
    assert accuracy_goal_lines(ahead_but_one_set_below, names)[0].endswith(
        "**not met**; below by more than 0.5 pp: b -1.0 pp.")
    ahead = {"a": {"ours": 0.96, "celltypist": 0.93}, "b": {"ours": 0.91, "celltypist": 0.91}}
    assert accuracy_goal_lines(ahead, names)[0].endswith("met.")
    assert accuracy_goal_lines({"a": {"ours": 0.9}}, names) == []
