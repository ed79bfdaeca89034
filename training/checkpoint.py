"""Per-epoch training checkpoints, so that ``--resume`` continues to exactly the weights of an
uninterrupted run.

A checkpoint holds the model, the optimizer, the optimizer step, the number of finished epochs, the RNG
states (torch CPU/CUDA, numpy, Python), the early-stopping state (best score, best epoch, best weights,
epochs without improvement), the history, and the settings it was made with (resolved config and a
description of the training data), which a resume must match. Only tensors and plain Python values
are stored, so it loads with ``torch.load(weights_only=True)``: nothing is unpickled. Checkpoints live in
``OUT/checkpoints/`` and are never published.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.errors import CellTypeError

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.pt"
FORMAT = "celltype-checkpoint/1"


class CheckpointError(CellTypeError):
    """A checkpoint is missing, unreadable or was written by a different configuration."""


def checkpoint_path(out_dir: str | os.PathLike[str]) -> Path:
    """Where the latest checkpoint of a run writing to ``out_dir`` lives."""
    return Path(out_dir) / CHECKPOINT_DIR / LATEST


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states of torch (CPU and every CUDA device), numpy and Python."""
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": numpy_state[0],
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": {"version": python_state[0], "state": list(python_state[1]), "gauss": python_state[2]},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states captured by :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss"]))


def save_checkpoint(out_dir: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Atomically write ``state`` (tensors and plain values) as the run's latest checkpoint."""
    path = checkpoint_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    torch.save({"format": FORMAT, **state}, staging)
    os.replace(staging, path)
    return path


def load_checkpoint(out_dir: str | os.PathLike[str], settings: dict[str, Any]) -> dict[str, Any]:
    """Read the latest checkpoint of ``out_dir`` and check it was made with the same ``settings``
    (the resolved config and a description of the training data).

    The ``device`` may differ.

    Raises:
        CheckpointError: no checkpoint, an unreadable one, or one written with other settings.
    """
    path = checkpoint_path(out_dir)
    if not path.is_file():
        raise CheckpointError(
            f"nothing to resume: no checkpoint at {path}; run without --resume, or pass the --out "
            "directory of the interrupted run"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means an unusable file
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a celltype checkpoint")
    ignored = {"device"}
    saved = {k: v for k, v in state["settings"].items() if k not in ignored}
    current = {k: v for k, v in settings.items() if k not in ignored}
    changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise CheckpointError(
            f"cannot resume from {path}: it was made with different settings ({details}); "
            "resume with the same data and config, or start a new run in another --out directory"
        )
    return state
