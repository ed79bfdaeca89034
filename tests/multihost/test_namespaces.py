"""The namespace pair itself: addresses reachable across the veth only, and always cleaned up."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from benchmarks.multihost import existing_namespaces, namespace_pair, unavailable_reason, wait_for_line

from .conftest import skip_without_namespaces

PROBE = "import socket, sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3); print('ok')"
LISTEN = (
    "import socket, sys; s = socket.create_server((sys.argv[1], int(sys.argv[2]))); print('listening', flush=True); "
    "s.accept()[0].close()"
)


@pytest.fixture(autouse=True)
def _namespaces_available() -> None:
    skip_without_namespaces(unavailable_reason())


def test_hosts_reach_each_other_only_over_the_veth_and_are_removed_on_failure(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="on purpose"), namespace_pair() as pair:
        names = {pair.first.name, pair.second.name}
        assert names <= set(existing_namespaces())
        log = tmp_path / "listen.log"
        server = pair.start(pair.second, [sys.executable, "-c", LISTEN, pair.second.address, "40123"], log)
        wait_for_line(log, "listening", server, 30)
        across = pair.run(pair.first, [sys.executable, "-c", PROBE, pair.second.address, "40123"], timeout_s=30)
        assert across.stdout.strip() == "ok", across.stderr
        here = pair.run(pair.first, [sys.executable, "-c", PROBE, pair.first.address.rsplit(".", 1)[0] + ".9", "1"],
                        timeout_s=30)
        assert here.returncode != 0  # nothing else is on that network
        sleeper = pair.start(pair.first, [sys.executable, "-c", "import time; time.sleep(600)"], tmp_path / "s.log")
        raise RuntimeError("on purpose")
    assert sleeper.poll() is not None and server.poll() is not None
    assert not names & set(existing_namespaces())
