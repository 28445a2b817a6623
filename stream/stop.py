"""A request to stop, shared by whoever asks (the service's signal handlers) and the dataflow's ends
that act on it (the Kafka source's partitions end, the sink stops waiting for the brokers)."""
from __future__ import annotations

import threading


class Stop:
    """Set once a stop was asked for; `status` is the exit status of the signal that asked."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.status: int | None = None

    def request(self, status: int) -> None:
        if self.status is None:
            self.status = status
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


class Stopping(Exception):
    """Raised by a step that was waiting (for the brokers) when a stop was asked for."""
