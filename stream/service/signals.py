"""Stopping the service: Ctrl-C and SIGTERM (what docker stop and Kubernetes send) stop the dataflow
the same way, and the exit status says which it was (stream.errors).

A signal does not raise into the dataflow (Bytewax would print a Rust panic for the exception that
crossed its input, and the flow would end mid-batch): it sets a `Stop`, which the Kafka source's
partitions read as the end of their input (stream.stop), so the flow finishes as a replay does, its last
messages delivered. Whatever the process is doing when the signal comes (a step's code, waiting
for brokers, the model), it ends within a bounded time: if the dataflow has not stopped `timeout_s`
after the signal, the process exits at once with the same status (a restart resumes from the last
snapshot, as after a crash)."""
from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from stream.errors import EXIT_INTERRUPTED, EXIT_TERMINATED
from stream.stop import Stop

log = logging.getLogger(__name__)


@contextmanager
def stop_on_signals(timeout_s: float) -> Iterator[Stop]:
    """While inside, SIGTERM and Ctrl-C request the Stop given back, and start the deadline."""
    stop, deadline = Stop(), []

    def handle(signum, _frame):
        status = EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED
        log.info("%s: stopping; exiting within %g s", signal.Signals(signum).name, timeout_s)
        stop.request(status)
        if not deadline:
            deadline.append(threading.Timer(timeout_s, _exit_now, (status, timeout_s)))
            deadline[0].daemon = True
            deadline[0].start()

    previous = signal.signal(signal.SIGTERM, handle), signal.signal(signal.SIGINT, handle)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
        for timer in deadline:
            timer.cancel()


def _exit_now(status: int, timeout_s: float) -> None:
    log.error("the dataflow did not stop within %g s of the signal: exiting now; a restart resumes from the "
              "last snapshot", timeout_s)
    logging.shutdown()
    os._exit(status)


def cause_of(error: BaseException | None, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of `kinds` in `error`'s chain of causes (Bytewax wraps what a step raised)."""
    while error is not None:
        if isinstance(error, kinds):
            return error
        error = error.__cause__ or error.__context__
    return None
