"""`intentstream demo`: its options, and the command around stream.demo.run_demo."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from schemas import FORMATS
from stream.cli.arguments import non_negative_int, positive_float, positive_int
from stream.demo import DemoOptions, default_cache_dir, run_demo
from stream.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, CommandError
from stream.kafka.config import KafkaConfigError, kafka_client

DEMO_HELP = "everything on this machine: broker, synthetic world, model, live updates"


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Start the embedded Kafka broker (or use --brokers), train a small model on a synthetic world "
        "(once; it is cached), stream other users' play events through the real dataflow and show the "
        "intent updates live, then a summary: events/s and event-to-update latency."
    )
    kafka = parser.add_argument_group("Kafka")
    kafka.add_argument("--brokers", metavar="HOST:PORT", default=None,
                       help="use this Kafka cluster instead of starting the embedded broker; the demo "
                       "creates uniquely named topics there and deletes them at the end")
    kafka.add_argument("--kafka-config", metavar="FILE", type=Path, default=None,
                       help="Kafka client settings for --brokers, as for `intentstream run` "
                       "(INTENTSTREAM_KAFKA_<SETTING> variables override it)")
    kafka.add_argument("--fetch-wait-ms", type=non_negative_int, default=DemoOptions.fetch_wait_ms, metavar="MS",
                       help="consumers' fetch.wait.max.ms: the embedded broker holds every fetch this long "
                       f"(default: {DemoOptions.fetch_wait_ms})")
    kafka.add_argument("--format", choices=FORMATS, default=DemoOptions.format,
                       help=f"encoding of the topics (default: {DemoOptions.format})")

    world = parser.add_argument_group("World and model")
    world.add_argument("--seed", type=int, default=DemoOptions.seed,
                       help=f"synthetic world seed (default: {DemoOptions.seed})")
    world.add_argument("--train-users", type=positive_int, default=DemoOptions.train_users, metavar="N",
                       help=f"users the model learns from (default: {DemoOptions.train_users})")
    world.add_argument("--stream-users", type=positive_int, default=DemoOptions.stream_users, metavar="N",
                       help=f"other users, whose events are streamed (default: {DemoOptions.stream_users})")
    world.add_argument("--titles", type=positive_int, default=DemoOptions.titles, metavar="N",
                       help=f"catalogue size (default: {DemoOptions.titles})")
    world.add_argument("--days", type=positive_int, default=DemoOptions.days, metavar="N",
                       help=f"simulated days (default: {DemoOptions.days})")
    world.add_argument("--epochs", type=positive_int, default=DemoOptions.epochs, metavar="N",
                       help=f"training epochs (default: {DemoOptions.epochs})")
    world.add_argument("--model", type=Path, default=None, metavar="DIR",
                       help="use this model directory instead of training (or reusing) the demo's model")
    world.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                       help=f"where trained demo models are kept (default: {default_cache_dir()})")
    world.add_argument("--torch-threads", type=positive_int, default=DemoOptions.torch_threads, metavar="N",
                       help=f"threads torch uses for training and scoring (default: {DemoOptions.torch_threads})")

    streaming = parser.add_argument_group("Streaming")
    streaming.add_argument("--events", type=positive_int, default=DemoOptions.events, metavar="N",
                           help=f"play events to stream (default: {DemoOptions.events})")
    streaming.add_argument("--rate", type=positive_float, default=DemoOptions.rate, metavar="EVENTS_PER_S",
                           help=f"offered rate (default: {DemoOptions.rate:g} events/s)")
    streaming.add_argument("--malformed", type=non_negative_int, default=DemoOptions.malformed, metavar="N",
                           help="malformed messages mixed into the stream, to show dead letters (default: "
                           f"{DemoOptions.malformed})")
    streaming.add_argument("--batch-size", type=positive_int, default=DemoOptions.batch_size, metavar="N",
                           help=f"most users scored together (default: {DemoOptions.batch_size})")
    streaming.add_argument("--live", action=argparse.BooleanOptionalAction, default=None,
                           help="redraw a live panel (default: when the output is a terminal); "
                           "otherwise print plain lines")


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    try:
        brokers, kafka_config = kafka_client(args.brokers or None, args.kafka_config, os.environ)
    except KafkaConfigError as error:
        raise CommandError(str(error)) from None
    return DemoOptions(
        brokers=brokers, kafka_config=kafka_config, fetch_wait_ms=args.fetch_wait_ms, format=args.format,
        seed=args.seed, train_users=args.train_users, stream_users=args.stream_users, titles=args.titles,
        days=args.days, epochs=args.epochs, model_dir=args.model, cache_dir=args.cache_dir,
        torch_threads=args.torch_threads, events=args.events, rate=args.rate, malformed=args.malformed,
        batch_size=args.batch_size, live=args.live,
    )  # fmt: skip


def demo_command(args: argparse.Namespace) -> int:
    # A script's background job starts with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: Ctrl-C (kill -INT) must stop the demo however it was started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    summary = run_demo(options_from_args(args), sys.stdout)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if summary.updates_out == summary.play_events else EXIT_FAILED
