"""`intentstream`, the command line: one module per subcommand (training: data, train and evaluate;
compile; run; serve; demo; backtest), each declaring its options and handing the parsed arguments to the
code below it (stream.service, stream.lookup, stream.demo, stream.backtest, model). Nothing below imports this
package. A handler returns the exit status or raises stream.errors.CommandError, which `main`
prints as `intentstream COMMAND: MESSAGE`."""
from __future__ import annotations

import argparse
import sys

from model.errors import CheckpointError
from model.playlogs.files import LogError
from stream.cli.backtest import BACKTEST_HELP, add_backtest_arguments, backtest_command
from stream.cli.compile import COMPILE_HELP, add_compile_arguments, compile_command
from stream.cli.demo import DEMO_HELP, add_demo_arguments, demo_command
from stream.cli.run import RUN_HELP, add_run_arguments, run_command
from stream.cli.serve import SERVE_HELP, add_serve_arguments, serve_command
from stream.cli.training import add_training_commands
from stream.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CommandError

DESCRIPTION = ("`intentstream`: the command line. Each subcommand checks its inputs before doing any work and "
               "exits with status 2 and a message that says what to fix.")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or EXIT_OK
    except CommandError as error:
        print(f"intentstream {args.command}: {error}", file=sys.stderr)
        return error.status
    except (LogError, CheckpointError) as error:  # a log or model named on the command line
        print(f"intentstream {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intentstream", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_training_commands(commands)
    for name, help, add_arguments, handler in (
        ("run", RUN_HELP, add_run_arguments, run_command),
        ("serve", SERVE_HELP, add_serve_arguments, serve_command),
        ("compile", COMPILE_HELP, add_compile_arguments, compile_command),
        ("demo", DEMO_HELP, add_demo_arguments, demo_command),
        ("backtest", BACKTEST_HELP, add_backtest_arguments, backtest_command),
    ):
        command = commands.add_parser(name, help=help)
        add_arguments(command)
        command.set_defaults(handler=handler)
    return parser
