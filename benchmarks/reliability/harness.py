"""Processes and ports of the scenarios: ``celltype`` subprocesses in their own process groups, a live
``celltype serve``, RSS sampling, and the environment the children run in."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
"""The repository root (the working directory of every child process)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**overrides: str) -> dict[str, str]:
    """This environment without ``CELLTYPE_*``/``MLFLOW_*`` settings (the bundle cache directory aside),
    the project importable, the venv's ``bin`` first on ``PATH``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CELLTYPE_", "MLFLOW_")) or k == "CELLTYPE_CACHE_DIR"
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["MPLBACKEND"] = "Agg"
    env.update(overrides)
    return env


def celltype_command(*args: str) -> list[str]:
    """``celltype ARGS`` run by this interpreter (``python -m cli``), installed or not."""
    return [sys.executable, "-m", "cli", *args]


def run_celltype(
    args: Sequence[str], *, env: dict[str, str] | None = None, timeout_s: float = 300
) -> subprocess.CompletedProcess:
    """Run ``celltype ARGS`` to completion and capture its output."""
    return subprocess.run(
        celltype_command(*args),
        env=env or child_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


class Managed:
    """A subprocess in a session of its own, its output in ``log``; stopped by process group.

    Args:
        command: the command line.
        log: file receiving stdout and stderr.
        env: its environment (default: :func:`child_env`).
    """

    def __init__(self, command: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.command = list(command)
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as stream:
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=env or child_env(), stdout=stream, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        """The process id (also its process group id)."""
        return self.process.pid

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process group (nothing if it already exited)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def wait(self, timeout_s: float) -> int:
        """Wait for the exit code; :class:`subprocess.TimeoutExpired` after ``timeout_s``."""
        return self.process.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = 20) -> int:
        """SIGTERM the group, SIGKILL it after ``timeout_s``; returns the exit code."""
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.process.wait(timeout=10)

    def tail(self, n_chars: int = 3000) -> str:
        """The end of the log."""
        try:
            return self.log.read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""


def wait_http(url: str, process: Managed, timeout_s: float, headers: dict[str, str] | None = None) -> None:
    """Poll ``url`` until it answers 200; raise with the log's tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(
                f"{' '.join(process.command[:5])} exited with {process.process.returncode}:\n{process.tail()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2, headers=headers).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not healthy after {timeout_s:.0f} s:\n{process.tail()}")


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children, in MB."""
    process = psutil.Process(pid)
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total / 1e6


class RssMonitor:
    """Samples a process's RSS every ``interval_s`` in a thread while in a ``with`` block; keeps the peak."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.start_mb = rss_mb(pid)
        self.peak_mb = self.start_mb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(psutil.Error):
                self.peak_mb = max(self.peak_mb, rss_mb(self.pid))

    def __enter__(self) -> RssMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(psutil.Error):
            self.peak_mb = max(self.peak_mb, rss_mb(self.pid))


@dataclass
class Service:
    """A running ``celltype serve`` process."""

    url: str
    process: Managed
    api_key: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        """Authorization headers (empty without an API key)."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def stop(self) -> int:
        """Stop it gracefully; returns the exit code."""
        return self.process.stop()


def start_service(
    model: str, workdir: Path, *, settings: dict[str, str] | None = None, timeout_s: float = 120
) -> Service:
    """Start ``celltype serve --model MODEL`` on a free loopback port and wait until it is ready.

    Args:
        model: bundle directory or ``models:/...`` URI.
        workdir: where its log (and bundle cache) go.
        settings: extra environment (``CELLTYPE_API_KEY``, ``CELLTYPE_MAX_BODY_BYTES``, ``MLFLOW_TRACKING_URI``...).
    """
    port = free_port()
    env = child_env(
        CELLTYPE_DEVICE="cpu", CELLTYPE_CACHE_DIR=str(workdir / "bundle-cache"), **(settings or {})
    )
    command = celltype_command(
        "serve", "--model", model, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"
    )
    process = Managed(command, workdir / f"serve-{port}.log", env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health/ready", process, timeout_s)
    except BaseException:
        process.stop()
        raise
    return Service(url=url, process=process, api_key=env.get("CELLTYPE_API_KEY"))


def wait_for_file(path: Path, process: Managed, timeout_s: float, poll_s: float = 0.005) -> bool:
    """Poll until ``path`` exists (True) or the process exits / time runs out (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return True
        if not process.alive():
            return path.exists()
        time.sleep(poll_s)
    return False


@contextlib.contextmanager
def scoped_env(**values: str) -> Iterator[None]:
    """This process's environment variables set to ``values`` inside the block, restored after it."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

