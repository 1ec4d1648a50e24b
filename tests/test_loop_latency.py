"""No event-loop callback of dnsd runs longer than 20 ms while it syncs and relists a large cluster.

dnsd runs in this process on a stock asyncio loop in debug mode, whose slow-callback report
(`loop.slow_callback_duration`) is the measure; the fake API server runs in its own process so
its work does not count against dnsd's loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest
from conftest import ZONE, make_config
from fakekube import FakeKubeProcess, pod, service

from dnsd.app import Collector, Server
from dnsd.config import Listen
from dnsd.sources.kubernetes import Credentials, KubernetesSource

SERVICES, PODS_PER_SERVICE = 400, 25  # 10,000 pods, 400 Services, 800 EndpointSlices
SLOW = 0.020


def cluster_file(path: Path) -> Path:
    items = []
    for s in range(SERVICES):
        items.append(service(f"app-{s}", f"ns-{s % 20}", selector={"app": f"app-{s}"}))
        for p in range(PODS_PER_SERVICE):
            items.append(
                pod(
                    f"app-{s}-{p}",
                    f"2001:db8:{s:x}::{p + 1:x}",
                    f"203.0.{s % 256}.{p + 1}",
                    namespace=f"ns-{s % 20}",
                    labels={"app": f"app-{s}"},
                )
            )
    path.write_text(json.dumps({"kind": "List", "items": items}))
    return path


class SlowCallbacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reports: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing"):
            self.reports.append(message)


@pytest.mark.parametrize("streaming", ["true", "false"])
def test_no_callback_over_20ms_during_sync_and_relist(tmp_path: Path, streaming: str) -> None:
    fake = FakeKubeProcess(
        "--load",
        str(cluster_file(tmp_path / "cluster.json")),
        "--auto-endpointslices",
        "--watchlist",
        streaming,
        "--bookmark-interval",
        "0.5",
    )
    fake.start()
    slow = SlowCallbacks()
    logging.getLogger("asyncio").addHandler(slow)
    try:
        asyncio.run(_sync_and_relist(fake), debug=True)
    finally:
        logging.getLogger("asyncio").removeHandler(slow)
        fake.stop()
    assert not slow.reports, "\n".join(slow.reports[:10])


async def _sync_and_relist(fake: FakeKubeProcess) -> None:
    loop = asyncio.get_running_loop()
    loop.slow_callback_duration = SLOW
    config = make_config((ZONE,), listen=(Listen("127.0.0.1", 0),), http=None)
    server = Server(config)
    server.source = KubernetesSource(Credentials(fake.kubeconfig), server.policy)
    await server.listen()
    collector = Collector()
    collector.start()
    feeder = asyncio.create_task(server.feed(server.source, None))
    try:
        await _wait(lambda: server.index.synced, 120)
        pods = len(server.store.pods)
        assert pods == SERVICES * PODS_PER_SERVICE
        # a relist of everything: history compacted, every watch told 410
        relists = sum(r.state.relists for r in server.source.reflectors)
        await asyncio.to_thread(fake.remote.compact)
        await asyncio.to_thread(fake.remote.inject_watch_error, 410)
        await _wait(lambda: sum(r.state.relists for r in server.source.reflectors) >= relists + 3, 60)
        await _wait(lambda: all(r.state.listed for r in server.source.reflectors), 60)
        await asyncio.sleep(1.0)  # the relisted sets are being applied
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        await server.close()
        collector.stop()


async def _wait(predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)
