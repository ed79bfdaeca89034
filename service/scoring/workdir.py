"""The hidden work directory beside the output: a lock, the run's identity (``state.json``) and finished chunks."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any

from service.scoring.tasks import ChunkTask
from service.scoring_io import ChunkResult, ScoringError

STATE_FORMAT = "celltype-score-state/1"
"""Format tag of a work directory's ``state.json``."""


def file_fingerprint(path: Path) -> dict[str, Any]:
    """What identifies an input file's content for ``--resume``: resolved path, size, modification time."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class WorkDirectory:
    """The hidden directory beside the output holding an unfinished run: ``state.json`` and chunk results."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out.parent / f".{out.name}.partial"
        self.state_file = self.path / "state.json"
        self._lock: IO[str] | None = None

    def chunk_file(self, task: ChunkTask) -> Path:
        """Where the results of ``task`` are kept."""
        return self.path / f"chunk-{task.input_index:04d}-{task.chunk_index:07d}.npz"

    def temporary_output(self, out: Path) -> Path:
        """Where the output is assembled before its atomic move into place."""
        return self.path / f"output{out.suffix}"

    def open(self, key: dict[str, Any], resume: bool, tasks: list[ChunkTask]) -> set[tuple[int, int]]:
        """Create and lock the directory, or lock and check an existing one; return the finished chunks.

        Raises:
            ScoringError: another run is writing the same output; results of an interrupted run exist but
                ``resume`` is False, or they were made with other inputs, another model or other settings.
        """
        try:
            self.path.mkdir()
            created = True
        except FileExistsError:
            created = False
        except OSError as exc:
            raise ScoringError(f"cannot create the work directory {self.path}: {exc}") from None
        self._acquire()
        if created:
            try:
                temporary = self.state_file.with_name("state.json.tmp")
                temporary.write_text(json.dumps({"format": STATE_FORMAT, "key": key}, indent=2) + "\n")
                os.replace(temporary, self.state_file)
            except OSError as exc:
                self.remove()
                raise ScoringError(f"cannot write in the work directory {self.path}: {exc}") from None
            return set()
        if not resume:
            raise ScoringError(
                f"an interrupted run left partial results in {self.path}; add --resume to continue it, "
                "or delete that directory to start over"
            )
        self._check_key(key)
        return self._finished(tasks)

    def _acquire(self) -> None:
        """Take the directory's lock, so that two runs never write the same output at once."""
        handle = open(self.path / "lock", "a")  # noqa: SIM115 (held until release())
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ScoringError(
                f"another celltype score run is writing {self.out} right now; wait for it to finish"
            ) from None
        self._lock = handle

    def release(self) -> None:
        """Release the lock (the directory and its results stay)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _check_key(self, key: dict[str, Any]) -> None:
        try:
            state = json.loads(self.state_file.read_text())
            saved = state["key"] if state.get("format") == STATE_FORMAT else None
        except (OSError, ValueError, KeyError, TypeError):
            saved = None
        if not isinstance(saved, dict):
            raise ScoringError(
                f"cannot resume: {self.state_file} is missing or unreadable; delete {self.path} to start over"
            )
        changed = [name for name in key if saved.get(name) != key[name]]
        if changed:
            details = "; ".join(f"{name}: was {saved.get(name)!r}, now {key[name]!r}" for name in changed)
            raise ScoringError(
                f"cannot resume: the interrupted run in {self.path} used other settings ({details}); "
                f"run with the same inputs, model and settings, or delete {self.path} to start over"
            )

    def _finished(self, tasks: list[ChunkTask]) -> set[tuple[int, int]]:
        finished = set()
        for task in tasks:
            path = self.chunk_file(task)
            if not path.exists():
                continue
            try:
                complete = ChunkResult.load(path).n_cells == task.n_cells
            except (OSError, ValueError, KeyError):
                complete = False
            if complete:
                finished.add((task.input_index, task.chunk_index))
            else:
                path.unlink()
        return finished

    def remove(self) -> None:
        """Delete the directory and everything in it, and release the lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.release()

    def remove_if_empty(self) -> None:
        """Delete the directory unless it holds finished chunks worth resuming."""
        if not any(self.path.glob("chunk-*.npz")):
            self.remove()
