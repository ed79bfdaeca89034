"""Fast checks of the distributed benchmark's bookkeeping and the generated evidence conclusions."""

from __future__ import annotations

from benchmarks.bench_distributed import Case, grid, step_times_ms
from benchmarks.evidence_conclusions import conclusions, score


def test_step_times_skip_the_first_epoch_and_divide_by_that_epochs_steps() -> None:
    history = [
        {"epoch": 1, "step": 10, "seconds": 5.0},
        {"epoch": 2, "step": 20, "seconds": 0.2},
        {"epoch": 3, "step": 25, "seconds": 0.5},
    ]
    assert step_times_ms(history) == [20.0, 100.0]


def test_grid_runs_single_process_cases_once() -> None:
    cases = grid([1, 2], ["batchrenorm"], [16], ["local", "sync"])
    assert cases == [Case(1, "-", "batchrenorm", 16), Case(2, "local", "batchrenorm", 16),
                     Case(2, "sync", "batchrenorm", 16)]


def _job(norm: str, sampler: str, holdout: str, seed: int, f1: float, own: float) -> dict:
    return {"kind": "lobo", "group": "main", "dataset": "d", "holdout": holdout, "seed": seed,
            "variant": {"norm": norm, "sampler": sampler, "batch_size": "64"},
            "result": {"holdout": {"macro_f1": f1}, "train_eval": {"macro_f1": own}}}


def test_scores_use_only_seeds_that_finished_every_fold() -> None:
    jobs = [_job("batchrenorm", "shuffled", "a", 0, 0.8, 1.0), _job("batchrenorm", "shuffled", "b", 0, 0.6, 1.0),
            _job("batchrenorm", "shuffled", "a", 1, 0.1, 1.0)]
    value, seeds = score(jobs, "d", {"norm": "batchrenorm", "sampler": "shuffled", "batch_size": "64"})
    assert (round(value, 6), seeds) == (0.7, 1)


def test_conclusions_quote_the_measured_difference() -> None:
    jobs = [_job("batchrenorm", "lab_homogeneous", "a", 0, 0.90, 1.0), _job("batchnorm", "lab_homogeneous", "a", 0, 0.85, 0.9)]
    text = conclusions(jobs)
    assert "d +5.0 pp (better on average (+5.0 pp))" in text
