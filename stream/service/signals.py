"""Stopping the service: Ctrl-C and SIGTERM (what docker stop and Kubernetes send) stop the dataflow
the same way, and the exit status says which it was (stream.errors)."""
from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so that Bytewax stops the same way."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM (what docker stop and Kubernetes send) raises Terminated in the main
    thread. Python runs signal handlers there; Bytewax lets them run while the dataflow goes."""

    def terminate(_signum, _frame):
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupt_behind(error: BaseException | None) -> KeyboardInterrupt | None:
    """The Ctrl-C (KeyboardInterrupt) or SIGTERM (Terminated) behind `error`, if any. With one worker,
    Bytewax runs the dataflow on the main thread, where Python delivers them: it is usually raised
    inside a step's code (the Kafka source's polling) and reaches us as a BytewaxRuntimeError caused
    by it."""
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return error
        error = error.__cause__ or error.__context__
    return None
