"""Turn the evidence results JSON into tables and PNG plots in ``docs/benchmarks.md`` (evidence section)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.docs_section import replace_section
from benchmarks.evidence_conclusions import DEFAULT, conclusions, score
from benchmarks.evidence_stats import per_seed_means

START, END = "<!-- evidence:start -->", "<!-- evidence:end -->"


def _fmt(values: list[float]) -> str:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f} (n={len(values)})"


def _ok(jobs: dict[str, Any]) -> list[dict[str, Any]]:
    return [j for j in jobs.values() if "error" not in j["result"]]


def _main_table(jobs: list[dict[str, Any]]) -> tuple[str, dict[tuple[str, str, str], float]]:
    main = [j for j in jobs if j["kind"] == "lobo" and j["group"] == "main"]
    datasets = sorted({j["dataset"] for j in main})
    keys = sorted({(j["variant"]["sampler"], j["variant"]["norm"]) for j in main})
    lines = ["| regime | norm | " + " | ".join(datasets) + " |", "|---|---|" + "---|" * len(datasets)]
    plot: dict[tuple[str, str, str], float] = {}
    for sampler, norm in keys:
        cells = []
        for d in datasets:
            rows = [j for j in main if j["dataset"] == d and j["variant"]["sampler"] == sampler and j["variant"]["norm"] == norm]
            values = per_seed_means(rows, "macro_f1", "holdout")
            cells.append(_fmt(values))
            if values:
                plot[(d, sampler, norm)] = float(np.mean(values))
        lines.append(f"| {sampler} | {norm} | " + " | ".join(cells) + " |")
    return "\n".join(lines), plot


def _per_batch_table(jobs: list[dict[str, Any]]) -> str:
    main = [j for j in jobs if j["kind"] == "lobo" and j["group"] == "main"]
    peers = {(j["dataset"], j["holdout"]): j["result"] for j in jobs if j["kind"] == "peer"}
    columns = [("shuffled", "batchrenorm"), ("shuffled", "batchnorm"), ("lab_homogeneous", "batchrenorm"),
               ("lab_homogeneous", "batchnorm"), ("shuffled", "layernorm"), ("shuffled", "none")]
    header = "| data set | held-out batch | " + " | ".join(f"{n} ({'shuf' if s == 'shuffled' else 'lab'})" for s, n in columns)
    header += " | BRN+AdaBN (lab) | logreg | CellTypist |"
    lines = [header, "|---|---|" + "---|" * (len(columns) + 3)]
    folds = sorted({(j["dataset"], j["holdout"]) for j in main})
    for d, b in folds:
        cells = []
        for s, n in columns:
            rows = [j for j in main if (j["dataset"], j["holdout"]) == (d, b) and j["variant"]["sampler"] == s and j["variant"]["norm"] == n]
            acc = _fmt([r["result"]["holdout"]["accuracy"] for r in rows])
            f1 = _fmt([r["result"]["holdout"]["macro_f1"] for r in rows])
            cells.append(f"{f1} / {acc}" if rows else "–")
        rows = [j for j in main if (j["dataset"], j["holdout"]) == (d, b) and j["variant"] == {"norm": "batchrenorm", "sampler": "lab_homogeneous", "batch_size": "64"}]
        cells.append(_fmt([r["result"]["adabn"]["macro_f1"] for r in rows if "adabn" in r["result"]]))
        peer = peers.get((d, b), {})
        for name in ("logreg", "celltypist"):
            cells.append(f"{peer[name]['macro_f1']:.3f} / {peer[name]['accuracy']:.3f}" if name in peer else "–")
        lines.append(f"| {d} | {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _adapt_table(jobs: list[dict[str, Any]]) -> str:
    lines = ["| setting | norm | regime | held-out | + AdaBN | + AdaBN + inputs | own training cells (eval mode) |",
             "|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for j in jobs:
        if j["kind"] not in ("lobo", "synthetic") or j["group"] != "main":
            continue
        setting = j["dataset"] if j["kind"] == "lobo" else f"synthetic effect {j['lab_effect']}" + (" confounded" if j["confounded"] else "")
        groups[(setting, j["variant"]["norm"], j["variant"]["sampler"])].append(j)
    for (setting, norm, sampler), rows in sorted(groups.items()):
        if norm not in ("batchrenorm", "batchnorm"):
            continue
        cells = [_fmt(per_seed_means(rows, "macro_f1", part)) for part in ("holdout", "adabn", "adabn_inputs", "train_eval")]
        lines.append(f"| {setting} | {norm} | {sampler} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _synthetic_table(jobs: list[dict[str, Any]]) -> str:
    syn = [j for j in jobs if j["kind"] == "synthetic"]
    lines = ["| lab effect | confounded | regime | norm | augment | own training cells (eval) | unseen lab | unseen lab + AdaBN |",
             "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list] = defaultdict(list)
    for j in syn:
        v = j["variant"]
        groups[(j["lab_effect"], j["confounded"], v["sampler"], v["norm"], v.get("augment_mode", "none"))].append(j)
    for key, rows in sorted(groups.items()):
        cells = [_fmt(per_seed_means(rows, "macro_f1", p)) for p in ("train_eval", "holdout", "adabn")]
        lines.append("| " + " | ".join(str(k) for k in key) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _lobo_variant_table(jobs: list[dict[str, Any]], group: str, label: str) -> str:
    rows_all = [j for j in jobs if j["kind"] == "lobo" and j["group"] in (group, "main")]
    lines = [f"| data set | regime | norm | {label} | macro-F1 | accuracy |", "|---|---|---|---|---|---|"]
    groups: dict[tuple, list] = defaultdict(list)
    for j in rows_all:
        v = j["variant"]
        if v["norm"] not in ("batchrenorm", "batchnorm"):
            continue
        value = v.get("augment_mode", "none") if group == "augment" else v["batch_size"]
        groups[(j["dataset"], v["sampler"], v["norm"], value)].append(j)
    datasets_in_group = {j["dataset"] for j in jobs if j["kind"] == "lobo" and j["group"] == group}
    for key, rows in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], str(kv[0][3]).zfill(4))):
        if key[0] not in datasets_in_group or (group == "augment" and key[2] != "batchrenorm"):
            continue
        lines.append("| " + " | ".join(map(str, key)) + " | " + _fmt(per_seed_means(rows, "macro_f1", "holdout"))
                     + " | " + _fmt(per_seed_means(rows, "accuracy", "holdout")) + " |")
    return "\n".join(lines)


def _peer_summary(jobs: list[dict[str, Any]]) -> str:

    peers = [j for j in jobs if j["kind"] == "peer"]
    main = [j for j in jobs if j["kind"] == "lobo" and j["group"] == "main"]
    lines = ["| data set | ours: default (BRN, lab-homogeneous) | ours: best of grid | logreg | CellTypist | folds with peers | seeds (ours) |",
             "|---|---|---|---|---|---|---|"]
    for d in sorted({j["dataset"] for j in main}):
        folds = {j["holdout"] for j in peers if j["dataset"] == d}
        ours, n_seeds = score(jobs, d, DEFAULT, folds=folds)
        best = []
        for norm, sampler in {(j["variant"]["norm"], j["variant"]["sampler"]) for j in main}:
            value, _ = score(jobs, d, {"norm": norm, "sampler": sampler, "batch_size": "64"}, folds=folds)
            if value is not None:
                best.append((value, (norm, sampler)))
        peer = [j["result"] for j in peers if j["dataset"] == d]
        lr = [p["logreg"]["macro_f1"] for p in peer if "logreg" in p]
        ct = [p["celltypist"]["macro_f1"] for p in peer if "celltypist" in p]
        top = max(best) if best else None
        lines.append(f"| {d} | {_fmt([ours]) if ours is not None else '–'} | "
                     + (f"{top[0]:.3f} ({top[1][0]}, {top[1][1]})" if top else "–")
                     + f" | {_fmt([float(np.mean(lr))]) if lr else '–'} | {_fmt([float(np.mean(ct))]) if ct else '–'} "
                     f"| {len(folds)} | {n_seeds} |")
    return "\n".join(lines)


def _plots(plot: dict[tuple[str, str, str], float], jobs: list[dict[str, Any]], img_dir: Path, prefix: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if plot:
        datasets = sorted({k[0] for k in plot})
        series = sorted({(k[1], k[2]) for k in plot})
        fig, ax = plt.subplots(figsize=(10, 4))
        width = 0.8 / len(series)
        for i, (s, n) in enumerate(series):
            ax.bar(np.arange(len(datasets)) + i * width, [plot.get((d, s, n), np.nan) for d in datasets], width,
                   label=f"{n} ({s})")
        ax.set_xticks(np.arange(len(datasets)) + 0.4 - width / 2, datasets)
        ax.set_ylabel("held-out macro-F1 (LOBO)")
        ax.set_ylim(0.4, 1.0)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = img_dir / f"{prefix}lobo_norms.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path.name)
    syn = [j for j in jobs if j["kind"] == "synthetic" and j["group"] == "main" and not j["confounded"]]
    if syn:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for ax, part, title in ((axes[0], "train_eval", "own training cells, eval mode"), (axes[1], "holdout", "unseen lab")):
            for s in sorted({j["variant"]["sampler"] for j in syn}):
                for n in sorted({j["variant"]["norm"] for j in syn}):
                    rows = sorted((j["lab_effect"], j["result"][part]["macro_f1"]) for j in syn
                                  if j["variant"]["sampler"] == s and j["variant"]["norm"] == n)
                    if rows:
                        ax.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", label=f"{n} ({s})")
            ax.set_title(title)
            ax.set_xlabel("synthetic lab-effect strength")
        axes[0].set_ylabel("macro-F1")
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        path = img_dir / f"{prefix}synthetic_lab_effect.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path.name)
    written.extend(_batch_size_plot(jobs, img_dir, prefix, plt))
    return written


def _batch_size_plot(jobs: list[dict[str, Any]], img_dir: Path, prefix: str, plt: Any) -> list[str]:
    """Held-out and own-training-cells macro-F1 against mini-batch size (BRN and BN, both regimes)."""
    sweep = sorted({j["dataset"] for j in jobs if j["kind"] == "lobo" and j["group"] == "batch_size"})
    if not sweep:
        return []
    dataset = sweep[0]
    rows = [j for j in jobs if j["kind"] == "lobo" and j["dataset"] == dataset and j["group"] in ("main", "batch_size")
            and j["variant"]["norm"] in ("batchrenorm", "batchnorm") and "augment_mode" not in j["variant"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, part, title in ((axes[0], "holdout", f"{dataset}: held-out batch"),
                            (axes[1], "train_eval", f"{dataset}: own training cells, eval mode")):
        for sampler in ("shuffled", "lab_homogeneous"):
            for norm in ("batchrenorm", "batchnorm"):
                points = []
                for size in sorted({int(j["variant"]["batch_size"]) for j in rows}):
                    values = per_seed_means([j for j in rows if j["variant"] == {"norm": norm, "sampler": sampler,
                                              "batch_size": str(size)}], "macro_f1", part)
                    if values:
                        points.append((size, float(np.mean(values))))
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{norm} ({sampler})")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("mini-batch size")
        ax.set_title(title)
    axes[0].set_ylabel("macro-F1 (mean over held-out batches)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path = img_dir / f"{prefix}batch_size.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path.name]


def write_report(results: Path, doc: Path, img_dir: Path, *, quick: bool = False) -> str:
    """Write the evidence section of ``doc`` (and plots) from ``results``; returns the section's text."""
    state = json.loads(results.read_text()) if results.is_file() else {"jobs": {}}
    jobs = _ok(state["jobs"])
    failed = [k for k, j in state["jobs"].items() if "error" in j["result"]]
    main_table, plot = _main_table(jobs)
    prefix = "quick_" if quick else ""
    images = _plots(plot, jobs, img_dir, prefix)
    seeds = sorted({j.get("seed") for j in jobs if "seed" in j})
    rel = Path("img")
    body = [
        "## Evidence: normalization layers, mini-batch regimes, peers, augmentation and adaptation",
        "",
        f"Generated by `python -m benchmarks{' --quick' if quick else ''}` from `{results.name}` "
        f"({len(jobs)} finished jobs, seeds {seeds}{', ' + str(len(failed)) + ' failed' if failed else ''}). "
        "Leave-one-batch-out: train on every other batch with `celltype train`'s defaults (plus the named "
        "overrides), score the held-out batch on the cell types present in training. Values are macro-F1 "
        "(mean ± std over seeds where there is more than one seed; else one seed).",
        "",
        "### Held-out macro-F1 by norm layer and mini-batch regime (mean over held-out batches)",
        "",
        main_table,
        "",
        *[f"![{name}]({rel / name})" for name in images],
        "",
        conclusions(jobs),
        "",
        "### Per held-out batch: macro-F1 / accuracy (seed 0 unless several seeds finished)",
        "",
        _per_batch_table(jobs),
        "",
        "### Peers on the folds they finished (ours: mean over the seeds that finished every fold; peers: one run per fold)",
        "",
        _peer_summary(jobs),
        "",
        "### Adaptation (AdaBN) and the eval-mode score of the model's own training cells",
        "",
        _adapt_table(jobs),
        "",
        "### Synthetic lab effects (3 training labs, unseen 4th lab; confounded: one type in one lab only)",
        "",
        _synthetic_table(jobs),
        "",
        "### Lab-effect augmentation (batchrenorm; none = the main grid)",
        "",
        _lobo_variant_table(jobs, "augment", "augment"),
        "",
        "### Mini-batch size",
        "",
        _lobo_variant_table(jobs, "batch_size", "batch size"),
    ]
    text = "\n".join(body)
    replace_section(doc, START, END, text)
    return text
