"""Stopping the service: Ctrl-C and SIGTERM (what docker stop and Kubernetes send) stop the dataflow
the same way, and the exit status says which it was (stream.errors). Whatever the process is doing
when the signal comes (a step's code, librdkafka, the model), it ends within a bounded time: if the
dataflow has not stopped `timeout_s` after the signal, the process exits at once with the same
status (a restart resumes from the last snapshot, as after a crash)."""
from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from stream.errors import EXIT_INTERRUPTED, EXIT_TERMINATED

log = logging.getLogger(__name__)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so that Bytewax stops the same way."""


@contextmanager
def sigterm_as_interrupt(timeout_s: float) -> Iterator[None]:
    """While inside, SIGTERM (what docker stop and Kubernetes send) raises Terminated in the main
    thread, and Ctrl-C KeyboardInterrupt, as usual; Python runs signal handlers there and Bytewax
    lets them run while the dataflow goes. Either starts the deadline of `timeout_s`."""
    deadline: list[threading.Timer] = []

    def start_deadline(status: int) -> None:
        if not deadline:
            deadline.append(threading.Timer(timeout_s, _exit_now, (status, timeout_s)))
            deadline[0].daemon = True
            deadline[0].start()

    def terminate(_signum, _frame):
        start_deadline(EXIT_TERMINATED)
        raise Terminated("SIGTERM")

    def interrupt(_signum, _frame):
        start_deadline(EXIT_INTERRUPTED)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate), signal.signal(signal.SIGINT, interrupt)
    try:
        yield
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


def interrupt_behind(error: BaseException | None) -> KeyboardInterrupt | None:
    """The Ctrl-C (KeyboardInterrupt) or SIGTERM (Terminated) behind `error`, if any. With one worker,
    Bytewax runs the dataflow on the main thread, where Python delivers them: it is usually raised
    inside a step's code (the Kafka source's polling) and reaches us as a BytewaxRuntimeError caused
    by it."""
    return cause_of(error, (KeyboardInterrupt,))


def cause_of(error: BaseException | None, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of `kinds` in `error`'s chain of causes (Bytewax wraps what a step raised)."""
    while error is not None:
        if isinstance(error, kinds):
            return error
        error = error.__cause__ or error.__context__
    return None
