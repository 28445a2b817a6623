"""`intentstream backtest`: its options, and the command around stream.backtest.replay.run_backtest."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from schemas import FORMATS
from stream.backtest.sources import LogReplay, TopicReplay
from stream.cli.arguments import duration, positive_int, timestamp_ms
from stream.errors import EXIT_OK, CommandError
from stream.kafka.config import KafkaConfigError, kafka_client
from stream.parsing import format_duration
from stream.settings import CATALOGUES, StreamSettings

BACKTEST_HELP = "replay a play log or topic through the dataflow and judge it"




def add_backtest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("log", nargs="?", type=Path, default=None,
                        help="play log to replay: .jsonl or .msgpack, optionally .gz (or use --topic)")
    parser.add_argument("--model", dest="models", action="append", type=Path, required=True, metavar="DIR",
                        help="model directory made by `intentstream train`; repeat to compare models (the first "
                             "is the reference)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="report directory: report.json, report.md, PNG plots, judgments.jsonl")
    parser.add_argument("--score-from", type=timestamp_ms, default=None, metavar="TS",
                        help="replay every event but judge only updates whose next event is at or after TS "
                             "(epoch ms or ISO date, UTC)")
    parser.add_argument("--top-k", type=positive_int, default=StreamSettings.top_k, metavar="K",
                        help="K of HR@K, NDCG@K, MRR@K")

    kafka = parser.add_argument_group("replaying a Kafka topic instead of a log")
    kafka.add_argument("--topic", default=None, help="topic of play events")
    kafka.add_argument("--from", dest="from_ts", type=timestamp_ms, default=None, metavar="TS",
                       help="first event time to replay (epoch ms or ISO date; inclusive)")
    kafka.add_argument("--to", dest="to_ts", type=timestamp_ms, default=None, metavar="TS",
                       help="event time to stop at (exclusive)")
    kafka.add_argument("--brokers", default=None, metavar="HOST:PORT",
                       help="Kafka bootstrap servers [env: INTENTSTREAM_BROKERS]")
    kafka.add_argument("--kafka-config", type=Path, default=None, metavar="FILE",
                       help="properties file of Kafka client settings (INTENTSTREAM_KAFKA_* override it)")
    kafka.add_argument("--format", choices=FORMATS, default=StreamSettings.format,
                       help=f"encoding of the topic (default: {StreamSettings.format})")

    stream = parser.add_argument_group("the dataflow's settings (as `intentstream run`)")
    stream.add_argument("--batch-size", type=positive_int, default=StreamSettings.batch_size, metavar="N",
                        help=f"most users scored together (default: {StreamSettings.batch_size})")
    stream.add_argument("--lateness", type=duration, default=StreamSettings.lateness_s, metavar="DURATION",
                        help="an event older than its user's newest by more than this is a dead letter (default: "
                             f"{format_duration(StreamSettings.lateness_s)})")
    stream.add_argument("--ttl", type=duration, default=StreamSettings.ttl_s, metavar="DURATION",
                        help="forget users idle longer than this, in event time (default: "
                             f"{format_duration(StreamSettings.ttl_s)})")
    stream.add_argument("--catalogue", choices=CATALOGUES, default=StreamSettings.catalogue,
                        help="score the whole catalogue, or each event's retrieved candidates (approximate: a target "
                             "not among them ranks last); auto: approximate beyond 20,000 items (default: "
                             f"{StreamSettings.catalogue})")


def _replay_source(args: argparse.Namespace) -> LogReplay | TopicReplay:
    if (args.log is None) == (args.topic is None):
        raise CommandError("give either a log file or --topic TOPIC, not both" if args.log else
                           "nothing to replay: give a log file or --topic TOPIC")
    if args.topic is None:
        if args.from_ts is not None or args.to_ts is not None:
            raise CommandError("--from and --to select a range of a topic; cut a log file with --score-from instead")
        return LogReplay(args.log)
    if args.from_ts is not None and args.to_ts is not None and args.from_ts >= args.to_ts:
        raise CommandError(f"empty range: --from {args.from_ts} is not before --to {args.to_ts}")
    try:
        brokers, kafka_config = kafka_client(args.brokers or os.environ.get("INTENTSTREAM_BROKERS") or None,
                                             args.kafka_config, os.environ)
    except KafkaConfigError as error:
        raise CommandError(str(error)) from None
    if not brokers:
        raise CommandError("--topic needs --brokers HOST:PORT (or INTENTSTREAM_BROKERS)")
    return TopicReplay(brokers, args.topic, args.format, kafka_config, args.from_ts, args.to_ts)


def model_names(directories: Sequence[Path]) -> list[str]:
    """Short names for the report: the directories' names, or their paths where names repeat."""
    names = [directory.name or str(directory) for directory in directories]
    if len(set(names)) < len(names):
        names = [str(directory) for directory in directories]
    if len(set(names)) < len(names):
        raise CommandError("the same --model directory is given twice")
    return names


def backtest_command(args: argparse.Namespace) -> int:
    # The model and its dataflow are imported here, so that other subcommands (serve) start without torch.
    from model.serving.scorer import Scorer
    from stream.backtest.replay import run_backtest
    from stream.backtest.report import summary, write_report

    replay_source = _replay_source(args)
    if args.lateness < 0 or args.ttl <= 0 or args.ttl < args.lateness:
        raise CommandError("--ttl must be positive and at least --lateness, which must not be negative")
    if args.out.exists() and not args.out.is_dir():
        raise CommandError(f"--out {args.out} is a file; give a directory")
    models = {name: (directory, Scorer.load(directory))
              for name, directory in zip(model_names(args.models), args.models)}
    result = run_backtest(replay_source, models, score_from=args.score_from, top_k=args.top_k,
                          batch_size=args.batch_size, lateness_s=args.lateness, ttl_s=args.ttl,
                          catalogue=args.catalogue)
    data = write_report(result, args.out)
    print(summary(data, result.top_k))
    print(f"report written to {args.out}")
    return EXIT_OK
