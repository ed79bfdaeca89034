"""``celltype score`` SIGKILLed mid-way: no complete-looking output, ``--resume`` gives identical bytes."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from benchmarks.reliability.harness import Managed, celltype_command, run_celltype
from benchmarks.reliability.inputs import save_random_bundle
from benchmarks.reliability.outcome import Outcome, expect, run_scenario


def kill_scoring_and_resume(
    workdir: Path, *, n_cells: int, n_genes: int = 300, chunk_size: int = 2000
) -> Outcome:
    """SIGKILL ``celltype score`` after its first finished chunk: no output may look complete, and
    ``--resume`` must produce the same bytes as an uninterrupted run."""

    def body(numbers: dict[str, Any]) -> str:
        from training.synthetic import write_synthetic_h5ad

        workdir.mkdir(parents=True, exist_ok=True)
        cells = write_synthetic_h5ad(workdir / "cells.h5ad", n_cells, n_genes, seed=5)
        bundle = save_random_bundle(workdir / "score-bundle", n_genes, seed=4)
        common = ["--model", str(bundle), "--chunk-size", str(chunk_size), "--device", "cpu", "--no-progress"]
        reference, out = workdir / "reference.csv", workdir / "scored.csv"
        first = run_celltype(["score", str(cells), "--out", str(reference), *common])
        expect(first.returncode == 0, f"uninterrupted scoring failed: {first.stderr[-2000:]}")
        partial = out.parent / f".{out.name}.partial"
        process = Managed(
            celltype_command("score", str(cells), "--out", str(out), *common), workdir / "score.log"
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.alive() and not any(partial.glob("chunk-*.npz")):
            time.sleep(0.002)
        process.signal(signal.SIGKILL)
        code = process.wait(timeout_s=30)
        expect(
            code == -signal.SIGKILL,
            f"scoring was not killed mid-way (exit code {code}); make the input larger",
        )
        done = len(list(partial.glob("chunk-*.npz")))
        total = -(-n_cells // chunk_size)
        numbers.update(chunks_done_at_kill=done, chunks=total)
        expect(not out.exists(), f"{out} exists after the kill: an incomplete file in the output's place")
        expect(done < total, "every chunk was finished before the kill")
        resumed = run_celltype(["score", str(cells), "--out", str(out), *common, "--resume"])
        expect(resumed.returncode == 0, f"--resume failed: {resumed.stderr[-2000:]}")
        expect(
            out.read_bytes() == reference.read_bytes(),
            "the resumed output differs from the uninterrupted one",
        )
        expect(not partial.exists(), f"{partial} was left behind")
        numbers["output_bytes"] = out.stat().st_size
        return (
            f"killed with {done} of {total} chunks done: no file at the output path; --resume wrote "
            f"{numbers['output_bytes']} bytes identical to an uninterrupted run"
        )

    return run_scenario("celltype score SIGKILL mid-way, then --resume", body)

