"""How every `intentstream` subcommand ends: one error type, and the exit statuses the shell sees.

A subcommand that cannot do what was asked raises CommandError with a message that says what to
fix; `stream.cli.main` prints it as `intentstream COMMAND: MESSAGE` and exits with its status.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # what the command needs is not usable: an unreachable broker, a missing topic, a bad model
EXIT_USAGE = 2  # a bad option, file or model on the command line (argparse's own errors exit 2 too)
EXIT_OFFSET_GAP = 65  # (EX_DATAERR) input the broker deleted before it was read, and --on-offset-gap fail
EXIT_DISK_FULL = 74  # (EX_IOERR) the recovery directory's volume is full: free space, restart, nothing is lost
EXIT_KAFKA_UNAVAILABLE = 75  # (EX_TEMPFAIL) the brokers were lost or refused output: restart, from the recovery dir
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it
EXIT_TERMINATED = 143  # SIGTERM, as shells report it


class CommandError(Exception):
    """Stops a subcommand: the message says what went wrong and what to fix; `status` is the exit
    status (EXIT_USAGE unless the command line was fine and something it names is not)."""

    def __init__(self, message: str, status: int = EXIT_USAGE):
        super().__init__(message)
        self.status = status
