from __future__ import annotations

import threading
import time
import types
from typing import Iterator

import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from stream.lookup.app import lookup_app
from stream.lookup.metrics import LookupMetrics
from stream.lookup.table import LatestTable


class ServedTable:
    """The lookup app over a table the test fills, on a real uvicorn server in a thread (no Kafka)."""

    def __init__(self, max_batch_get: int = 5, token: str | None = None):
        self.table = LatestTable(max_users=1000, history=4)
        self.follower = types.SimpleNamespace(ready=threading.Event(), failure=None)  # what the app reads of one
        self.metrics = LookupMetrics(CollectorRegistry())
        app = lookup_app(self.table, self.follower, self.metrics, max_batch_get, token)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ServedTable":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def served() -> Iterator[ServedTable]:
    with ServedTable() as served:
        yield served
