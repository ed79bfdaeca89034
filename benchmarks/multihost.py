"""Two "hosts" on one machine: a pair of network namespaces joined by a veth pair (``ip netns``, as root).

Each namespace has its own loopback and one end of a veth pair with an address in a private /30
(``10.231.X.1`` and ``10.231.X.2``) that exists only inside the two namespaces, so traffic between them
crosses a real network interface and never leaves them; files are shared (only the network is
separate), as on a cluster with a shared file system. :func:`namespace_pair` creates them and always
deletes them again, after stopping every process started in them through :meth:`NamespacePair.start`.

    with namespace_pair() as pair:
        scheduler = pair.start(pair.first, ["dask", "scheduler", "--host", pair.first.address], log)
        ...

``tests/multihost/`` runs torchrun (one node per namespace) and a Dask cluster split over the two.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "celltype-"
"""Start of the names of the namespaces made here (``celltype-<pid>-a`` / ``-b``)."""
SUBNET = "10.231"
"""The /16 the /30 of each pair is taken from; it is only ever configured inside the namespaces."""
STOP_TIMEOUT_S = 10.0


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, or no ``ip netns``); the message says why."""


@dataclass(frozen=True)
class Namespace:
    """One side of the pair: the namespace, its veth device and that device's IPv4 address."""

    name: str
    device: str
    address: str


@dataclass
class NamespacePair:
    """Two namespaces joined by a veth pair; :meth:`start` runs commands in either of them."""

    first: Namespace
    second: Namespace
    processes: list[subprocess.Popen] = field(default_factory=list)

    def command(self, namespace: Namespace, argv: Sequence[str]) -> list[str]:
        """``argv`` as a command that runs inside ``namespace``."""
        return ["ip", "netns", "exec", namespace.name, *argv]

    def start(
        self, namespace: Namespace, argv: Sequence[str], log: Path, env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen:
        """Start ``argv`` in ``namespace`` (own process group, output to ``log``); stopped on teardown."""
        with open(log, "wb") as stream:
            process = subprocess.Popen(
                self.command(namespace, argv), stdout=stream, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def run(
        self, namespace: Namespace, argv: Sequence[str], env: dict[str, str] | None = None,
        cwd: Path | None = None, timeout_s: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``namespace`` to completion; output captured as text."""
        return subprocess.run(
            self.command(namespace, argv), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout_s
        )

    def stop_all(self) -> None:
        """Stop every process started with :meth:`start` (SIGTERM to its group, SIGKILL if it lingers)."""
        for process in self.processes:
            stop_group(process)
        self.processes.clear()

    def close(self) -> None:
        """Stop the processes started in the namespaces, then delete both namespaces (and the veth pair)."""
        try:
            self.stop_all()
        finally:
            for side in (self.first, self.second):
                delete_namespace(side.name)


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group of ``process``, SIGKILL after :data:`STOP_TIMEOUT_S`; wait for it."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT_S)
    except ProcessLookupError:
        process.wait(timeout=STOP_TIMEOUT_S)


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed (apt-get install iproute2)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"ip netns does not work here: {probe.stderr.strip()}"
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


def existing_namespaces() -> list[str]:
    """Names of the network namespaces that exist now."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listing.splitlines() if line.strip()]


def delete_namespace(name: str) -> None:
    """Delete namespace ``name`` (its veth end goes with it, and so does the peer); no error if absent."""
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_namespaces() -> list[str]:
    """Delete namespaces left by an earlier run here that was killed before its clean-up; returns them."""
    removed = []
    for name in existing_namespaces():
        parts = name.removeprefix(PREFIX).split("-")
        if name.startswith(PREFIX) and len(parts) == 2 and parts[0].isdigit() and not _pid_alive(int(parts[0])):
            delete_namespace(name)
            removed.append(name)
    return removed


def create_pair() -> NamespacePair:
    """Two fresh namespaces joined by a veth pair; :meth:`NamespacePair.close` removes them.

    Raises:
        NetnsUnavailable: not root, no ``ip netns``, or setting up the pair failed (what was made is removed).
    """
    reason = unavailable_reason()
    if reason is not None:
        raise NetnsUnavailable(reason)
    remove_stale_namespaces()
    pid = os.getpid()
    third = pid % 256
    pair = NamespacePair(
        Namespace(f"{PREFIX}{pid}-a", f"ct{pid}a", f"{SUBNET}.{third}.1"),
        Namespace(f"{PREFIX}{pid}-b", f"ct{pid}b", f"{SUBNET}.{third}.2"),
    )
    first, second = pair.first, pair.second
    try:
        for side in (first, second):
            _ip("netns", "add", side.name)
        _ip("link", "add", first.device, "netns", first.name, "type", "veth", "peer", "name", second.device,
            "netns", second.name)
        for side in (first, second):
            _ip("-n", side.name, "addr", "add", f"{side.address}/30", "dev", side.device)
            _ip("-n", side.name, "link", "set", side.device, "up")
            _ip("-n", side.name, "link", "set", "lo", "up")
    except BaseException:
        pair.close()
        raise
    return pair


@contextmanager
def namespace_pair() -> Iterator[NamespacePair]:
    """:func:`create_pair` as a context manager: the pair and its processes are removed on exit."""
    pair = create_pair()
    try:
        yield pair
    finally:
        pair.close()


def wait_for_line(log: Path, text: str, process: subprocess.Popen, timeout_s: float) -> None:
    """Wait until ``text`` appears in ``log``; raise with the log's tail if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace") if log.exists() else ""
        if text in content:
            return
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode} before {text!r}:\n{content[-3000:]}")
        time.sleep(0.2)
    content = log.read_text(errors="replace") if log.exists() else ""
    raise RuntimeError(f"{text!r} not in {log} after {timeout_s:.0f} s:\n{content[-3000:]}")
