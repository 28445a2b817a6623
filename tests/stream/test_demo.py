"""`intentstream demo` end to end: through the session's broker with a tiny world, and stopped by
Ctrl-C on its own embedded broker."""
from __future__ import annotations

import io
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from model.playlogs.synth import generate_world
from schemas import decode_play_event
from stream.kafka.broker import fetch_metadata
from stream.cli import build_parser
from stream.cli.demo import options_from_args
from stream.demo import PLAIN_WIDTH, run_demo, train_or_reuse
from stream.harness import FlowCounts, outgoing_messages

ROOT = Path(__file__).resolve().parents[2]
TINY_WORLD = ["--train-users", "20", "--stream-users", "10", "--titles", "60", "--days", "10"]


def test_demo_scores_every_play_event_once_and_reports_consistent_numbers(kafka_bootstrap, tmp_path):
    cache = tmp_path / "cache"
    args = build_parser().parse_args(
        ["demo", "--brokers", kafka_bootstrap, "--cache-dir", str(cache), *TINY_WORLD, "--epochs", "1",
         "--events", "100", "--rate", "500", "--malformed", "2", "--no-live"]  # fmt: skip
    )
    options = options_from_args(args)
    out = io.StringIO()

    summary = run_demo(options, out)

    assert (summary.events_in, summary.play_events, summary.malformed) == (102, 100, 2)
    assert summary.updates_out == 100
    assert summary.dead_letters == {"not_decodable": 1, "value_out_of_range": 1}
    counts = summary.flow_counts  # the dataflow's own counters agree
    assert counts == FlowCounts(102, 100, 0, {"not_decodable": 1, "value_out_of_range": 1}, counts.first_read_at,
                                counts.model_calls, counts.scoring_s)  # fmt: skip
    assert 0 < counts.model_calls <= 100 and counts.scoring_s > 0
    assert counts.first_read_at is not None
    assert summary.latency_samples == 99  # every update but the first, which is reported apart
    latency = summary.latency_ms
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"] < 30_000
    assert 0 < summary.first_update_s < 60
    assert 0 < summary.events_per_s <= 500 * 1.1
    assert not summary.interrupted

    text = out.getvalue()
    assert "updates out       100  (one per play event: yes)" in text
    assert "training a small IntentRec" in text and "trained in" in text
    assert max(len(line) for line in text.splitlines() if "/" not in line) <= PLAIN_WIDTH  # paths may not fit
    # Its uniquely named topics are gone from the shared broker.
    assert not [name for name in fetch_metadata(kafka_bootstrap).topics if name.startswith("intentstream-demo-")]
    # The trained model was cached: the next demo with the same world reuses it.
    said = []
    model_dir = train_or_reuse(options, training_events=[], say=said.append)
    assert (model_dir / "config.json").is_file() and model_dir.parent == cache
    assert said == [f"reusing the model in {model_dir}"]


def test_malformed_messages_are_spread_among_the_events_and_never_first():
    events = generate_world(seed=0, n_users=5, n_titles=30, days=5)[:40]
    messages = outgoing_messages(events, "msgpack", malformed=3)

    assert len(messages) == 43
    assert messages[0].event is not None
    assert [m.event for m in messages if m.event is not None] == events  # order kept
    broken = [i for i, m in enumerate(messages) if m.event is None]
    assert len(broken) == 3 and min(broken) > 5 and max(broken) < 40
    for message in messages:
        if message.event is not None:
            assert decode_play_event(message.value, "msgpack") == message.event
            assert message.key == message.event.user_id.encode()


def _lines_until(process: subprocess.Popen, wanted: str, timeout: float) -> list[str]:
    """Lines of the process's output until one contains `wanted`."""
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=0.5):
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if wanted in line:
                return lines
    raise AssertionError(f"no {wanted!r} within {timeout}s; output so far:\n{''.join(lines)}")


def test_ctrl_c_stops_the_stream_the_dataflow_and_the_embedded_broker(tiny_model_dir):
    process = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "demo", "--model", str(tiny_model_dir), *TINY_WORLD,
         "--stream-users", "100", "--events", "5000", "--rate", "100", "--no-live"],  # fmt: skip
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as a script's background job starts
    )  # fmt: skip
    try:
        lines = _lines_until(process, "(embedded)", timeout=30)
        port = int(lines[-1].split()[1].split(":")[1].rstrip(";"))
        lines += _lines_until(process, "ev/s", timeout=60)  # streaming, updates coming back
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    output = "".join(lines) + rest

    assert process.returncode == 130, output
    assert "interrupted: stopping" in output and "summary" in output
    assert "interrupted: the numbers cover what was streamed until then" in output
    assert "Traceback" not in output
    with socket.socket() as probe:  # the embedded broker is stopped
        assert probe.connect_ex(("127.0.0.1", port)) != 0
