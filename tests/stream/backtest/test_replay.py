"""`intentstream backtest`: a log or a topic range replayed through the live dataflow, each update
judged against the user's next event.

The model is conftest's `tiny_model_dir` (a real IntentRec); the logs are small synthetic worlds.
"""
from __future__ import annotations

import gzip
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import orjson
import pytest
from tests.model.serving.test_new_titles import scorer_that_saw
from tests.model.test_intentrec import HOUR, random_model, tiny_config, tiny_vocab

from model.checkpoint import save_checkpoint
from model.features import slot_history
from model.training.evaluate import intent_hits, ranking_metrics, target_ranks
from model.playlogs.files import write_log
from model.serving.scorer import Scorer
from model.playlogs.synth import generate_world
from schemas import PlayEvent, decode_play_event, encode_play_event
from stream.backtest.judging import new_title_column, target_column
from stream.backtest.replay import run_backtest
from stream.backtest.sources import LogReplay, LogSource, TopicReplay
from stream.kafka.broker import produce_messages
from stream.cli import main
from stream.backtest.report import REPORT_FILES, day_of, summarize

K = 10


@pytest.fixture(scope="module")
def scorer(tiny_model_dir) -> Scorer:
    return Scorer.load(tiny_model_dir)


@pytest.fixture(scope="module")
def world() -> list[PlayEvent]:
    """A world the tiny model was not trained on (another seed), sorted by time."""
    return generate_world(seed=3, n_users=16, n_titles=60, days=8)


@pytest.fixture(scope="module")
def world_log(world, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("backtest") / "world.jsonl"
    write_log(path, world)
    return path


def middle_ts(events: list[PlayEvent]) -> int:
    return events[len(events) // 2].ts  # events sorted by time


def backtest_of(source, tiny_model_dir, scorer, **options):
    return run_backtest(source, {"tiny": (tiny_model_dir, scorer)}, progress=False, **options)


def judgment_rows(backtest) -> list[dict]:
    return [row for system in backtest.systems for row in system.log.rows()]


# ---------------------------------------------------------------------------------------------
# The metrics are the model's, computed directly
# ---------------------------------------------------------------------------------------------


def direct_judgments(scorer: Scorer, events: list[PlayEvent], score_from: int | None):
    """Without the dataflow: every user's events in time order (titles the model lacks in their
    slots, as the stream keeps them); for each one with a next event in the window, Scorer.predict on
    the history up to it, judged against the next one."""
    by_user = defaultdict(list)
    for event in events:
        by_user[event.user_id].append(event)
    scorer = scorer_that_saw(scorer, events)  # a replay registers every new title at its first play
    histories, targets, target_ids, titles_of, keys = [], [], [], [], []
    n_items, slots = scorer.config.n_items, scorer.config.unknown_slots
    for user_events in by_user.values():
        user_events.sort(key=lambda event: event.ts)
        featurized = np.stack([scorer.featurize(event) for event in user_events])
        rows, _ = slot_history(featurized, [e.item_id for e in user_events], n_items, slots, scorer.history_len)
        for i in range(len(user_events) - 1):
            if score_from is None or user_events[i + 1].ts >= score_from:
                _, titles = slot_history(featurized[: i + 1], [e.item_id for e in user_events[: i + 1]], n_items,
                                         slots, scorer.history_len)  # fmt: skip
                histories.append(rows[: i + 1])
                targets.append(featurized[i + 1])
                target_ids.append(user_events[i + 1].item_id)
                titles_of.append(titles)
                keys.append((user_events[i + 1].user_id, user_events[i + 1].event_id))
    predictions = scorer.predict(histories, titles_of)
    targets = np.stack(targets)
    first_new = n_items + slots
    target_items = [target_column(int(target["item"]), item_id, titles, n_items,
                                  new_title_column(predictions, row, item_id, first_new, n_items))
                    for row, (target, item_id, titles) in enumerate(zip(targets, target_ids, titles_of))]  # fmt: skip
    ranks = target_ranks(predictions.item_scores, np.array(target_items, dtype=np.int64))
    return keys, ranks, intent_hits(predictions, targets)


@pytest.mark.parametrize("score_from", [None, "middle"])
def test_backtest_metrics_equal_the_model_computed_directly(
    world, world_log, tiny_model_dir, scorer, score_from
):
    score_from = middle_ts(world) if score_from == "middle" else None
    backtest = backtest_of(LogReplay(world_log), tiny_model_dir, scorer, score_from=score_from, batch_size=7)
    model = backtest.systems[0]
    keys, ranks, hits = direct_judgments(scorer, world, score_from)

    assert dict(zip(zip(model.log.user_id, model.log.event_id), model.log.rank)) == dict(zip(keys, ranks.tolist()))
    overall = summarize(model.log, K)["overall"]
    expected = ranking_metrics(ranks, K)
    for name in (f"HR@{K}", f"NDCG@{K}", f"MRR@{K}"):
        assert overall[name] == pytest.approx(expected[name], abs=1e-12)
    assert overall["judgments"] == len(keys)
    for task, values in hits.items():
        assert overall[f"{task}_accuracy"] == pytest.approx(np.nanmean(values), abs=1e-12)
    if score_from is not None:
        assert min(model.log.ts) >= score_from and len(keys) < len(world) // 2 + 1
    assert model.replay.events_in == len(world) and model.replay.updates_out == len(world)
    assert [system.log.system for system in backtest.systems] == ["tiny", "popularity", "recency", "raw-id recency"]
    assert all(len(system.log) == len(keys) for system in backtest.systems)


def test_an_event_later_than_the_allowed_lateness_gets_no_update_but_is_still_the_truth(
    world, tiny_model_dir, scorer, tmp_path
):
    user = max({e.user_id for e in world}, key=[e.user_id for e in world].count)
    first, moved = [e for e in world if e.user_id == user][:2]
    newest = max(e.ts for e in world if e.user_id == user)
    assert newest - moved.ts > 3_600_000  # older than the user's newest by more than the 1 h allowed
    log = tmp_path / "late.jsonl"
    write_log(log, [e for e in world if e is not moved] + [moved])  # arrives after the user's newer events

    backtest = backtest_of(LogReplay(log), tiny_model_dir, scorer, lateness_s=3600.0)
    model = backtest.systems[0]
    assert model.replay.dead_letters == {"late": 1} and backtest.input["out_of_order"] == 1
    assert moved.event_id not in model.log.scored_event_id  # no update for the late event
    truth_for_first = model.log.event_id[model.log.scored_event_id.index(first.event_id)]
    assert truth_for_first == moved.event_id  # yet it is what the user did after `first`


def test_a_log_source_yields_what_the_kafka_source_would(world, tmp_path):
    path = tmp_path / "world.msgpack.gz"
    write_log(path, world[:25])
    partition = LogSource(path, batch_size=10).build_part("plays", str(path), resume_state=None)
    messages = []
    while True:
        try:
            messages.extend(partition.next_batch())
        except StopIteration:
            break
    partition.close()
    assert [m.offset for m in messages] == list(range(25))
    assert {(m.topic, m.partition) for m in messages} == {(str(path), 0)}
    assert [decode_play_event(m.value, "msgpack") for m in messages] == world[:25]
    assert [m.key for m in messages] == [e.user_id.encode() for e in world[:25]]


# ---------------------------------------------------------------------------------------------
# A topic replays as the file it was loaded from
# ---------------------------------------------------------------------------------------------


def test_replaying_a_topic_equals_replaying_the_file_it_was_loaded_from(
    world, world_log, tiny_model_dir, scorer, kafka_bootstrap, make_topics, tmp_path
):
    topics = make_topics(partitions=2)
    messages = [(e.user_id.encode(), encode_play_event(e, "msgpack")) for e in world]
    messages.insert(40, (b"u-garbage", b"\xc1 not msgpack"))
    produce_messages(kafka_bootstrap, topics.input, messages)

    from_file = backtest_of(LogReplay(world_log), tiny_model_dir, scorer)
    whole_topic = TopicReplay(kafka_bootstrap, topics.input, "msgpack", {}, None, None)
    from_topic = backtest_of(whole_topic, tiny_model_dir, scorer)
    assert sorted(judgment_rows(from_topic), key=repr) == sorted(judgment_rows(from_file), key=repr)
    assert from_topic.systems[0].replay.dead_letters == {"not_decodable": 1}
    assert from_topic.input["unreadable"] == 1 and from_topic.input["messages"] == len(world) + 1

    # A range of event time equals the file cut to that range.
    start, end = world[len(world) // 4].ts, world[3 * len(world) // 4].ts
    cut = tmp_path / "cut.jsonl"
    write_log(cut, [e for e in world if start <= e.ts < end])
    from_cut = backtest_of(LogReplay(cut), tiny_model_dir, scorer)
    topic_range = TopicReplay(kafka_bootstrap, topics.input, "msgpack", {}, start, end)
    from_range = backtest_of(topic_range, tiny_model_dir, scorer)
    assert sorted(judgment_rows(from_range), key=repr) == sorted(judgment_rows(from_cut), key=repr)
    assert len(from_range.systems[0].log) > 0


# ---------------------------------------------------------------------------------------------
# The command: errors, and the report
# ---------------------------------------------------------------------------------------------


def run_cli(capsys, *argv) -> tuple[int, str]:
    status = main(["backtest", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def test_bad_inputs_stop_with_a_clear_message(
    world, world_log, tiny_model_dir, tmp_path, capsys, kafka_bootstrap, topics
):
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_bytes(orjson.dumps(world[0]) + b"\n{\"event_id\": 3}\n")
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(gzip.compress(world_log.read_bytes())[:-40])
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    out = tmp_path / "report"
    model = ["--model", tiny_model_dir, "--out", out]
    cases = [
        ([tmp_path / "missing.jsonl", *model], "no such log file"),
        ([tmp_path / "plays.csv", *model], "unknown log format"),
        ([corrupt, *model], "line 2"),
        ([truncated, *model], "corrupt gzip data"),
        ([empty, *model], "contains no events"),
        ([world_log, "--model", tmp_path, "--out", out], str(tmp_path)),  # not a model directory
        ([world_log, *model, "--score-from", "2030-01-01"], "nothing to judge"),
        ([world_log, *model, "--topic", topics.input, "--brokers", kafka_bootstrap], "not both"),
        ([*model, "--topic", "no-such-topic", "--brokers", kafka_bootstrap], "does not exist"),
        ([*model, "--topic", topics.input, "--brokers", kafka_bootstrap], "holds no messages"),
        ([*model, "--topic", topics.input, "--brokers", kafka_bootstrap, "--from", "2030-01-02", "--to", "2030-01-01"],
         "empty range"),
    ]
    produce_messages(kafka_bootstrap, topics.output, [(e.user_id, encode_play_event(e, "msgpack")) for e in world[:20]])
    cases.append(([*model, "--topic", topics.output, "--brokers", kafka_bootstrap, "--from", "2030-01-01"],
                  "no valid event with event time in"))
    for argv, message in cases:
        status, output = run_cli(capsys, *argv)
        assert (status, message in output) == (2, True), (argv, output)
        assert "Traceback" not in output
    assert not out.exists()


def test_two_models_give_a_report_whose_judgments_reproduce_its_metrics(
    world, world_log, tiny_model_dir, tmp_path, capsys
):
    twin = tmp_path / "twin"
    shutil.copytree(tiny_model_dir, twin)
    out = tmp_path / "report"
    status, output = run_cli(capsys, world_log, "--model", tiny_model_dir, "--model", twin, "--out", out,
                             "--score-from", middle_ts(world))
    assert status == 0, output
    assert "| recency |" in output and "events/s" in output
    assert sorted(path.name for path in out.iterdir()) == sorted(REPORT_FILES)
    for name in REPORT_FILES:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 5000

    report = orjson.loads((out / "report.json").read_bytes())
    assert list(report["systems"]) == [tiny_model_dir.name, "twin", "popularity", "recency", "raw-id recency"]
    rows_by_system = defaultdict(list)
    for line in (out / "judgments.jsonl").read_bytes().splitlines():
        row = orjson.loads(line)
        rows_by_system[row["system"]].append(row)
    for system, entry in report["systems"].items():
        rows = rows_by_system[system]
        assert all(row["ts"] >= report["settings"]["score_from"] for row in rows)
        expected = ranking_metrics(np.array([row["rank"] for row in rows]), K)
        for name in (f"HR@{K}", f"NDCG@{K}", f"MRR@{K}"):
            assert entry["overall"][name] == pytest.approx(expected[name], abs=1e-12)
        assert entry["overall"]["judgments"] == len(rows)
        for task in ("action", "genre", "kind", "release") if entry["kind"] == "model" else ():
            known = [row["hits"][task] for row in rows if row["hits"][task] is not None]
            assert entry["overall"][f"{task}_accuracy"] == pytest.approx(np.mean(known), abs=1e-12)
        day, block = next(iter(entry["by_day"].items()))
        on_day = np.array([row["rank"] for row in rows if day_of(row["ts"]) == day])
        assert block[f"NDCG@{K}"] == pytest.approx(ranking_metrics(on_day, K)[f"NDCG@{K}"], abs=1e-12)

    twin_comparison, *baseline_comparisons = report["comparisons"]
    for metric in twin_comparison["metrics"].values():  # the same model, judged on the same events
        assert metric == {"difference": 0.0, "ci": [0.0, 0.0]}
    for comparison in baseline_comparisons:
        for metric in comparison["metrics"].values():
            low, high = metric["ci"]
            assert low <= metric["difference"] <= high and low < high


def test_a_users_current_title_stays_rankable_however_many_new_titles_the_stream_has_seen(tmp_path):
    """One user starts more new shows than a user has slots, in a stream of more new titles than the
    registry has columns: each play of a show is followed by another of the same show, and the
    replay ranks that show where the pointer and its column put it (a finite rank, not last)."""
    model = random_model(tiny_config(unknown_slots=2, new_title_columns=2, new_title_min_users=1))
    save_checkpoint(tmp_path / "m", model, tiny_vocab(), {"name": "tiny-slots", "version": "1"})
    scorer = Scorer.load(tmp_path / "m")
    start, events = 1_700_000_000_000, []
    for show in range(6):
        for episode in range(3):
            ts = start + (show * 3 + episode) * HOUR
            events.append(PlayEvent(event_id=f"binger-{show}-{episode}", user_id="binger", item_id=f"new-show-{show}",
                                    ts=ts, action="a", genres=("g1",), kind="show", release_ts=None, duration_s=600.0))
            events.append(PlayEvent(event_id=f"other-{show}-{episode}", user_id=f"other-{episode}",
                                    item_id=f"other-new-{show}-{episode}", ts=ts + 1, action="a", genres=("g2",),
                                    kind="movie", release_ts=None, duration_s=600.0))  # fmt: skip
    log = tmp_path / "binge.jsonl"
    write_log(log, events)
    backtest = run_backtest(LogReplay(log), {"tiny": (tmp_path / "m", scorer)}, progress=False)
    model_log, title_of = backtest.systems[0].log, {event.event_id: event.item_id for event in events}
    continued = [rank for user, scored, judged, rank in zip(model_log.user_id, model_log.scored_event_id,
                                                            model_log.event_id, model_log.rank)
                 if user == "binger" and title_of[scored] == title_of[judged]]  # fmt: skip
    assert len(continued) == 12  # two continuations of each of six shows
    n_outputs = scorer.config.n_items + scorer.config.unknown_slots
    assert all(rank < n_outputs - 2 for rank in continued)  # never the unknown item's last place


def test_raw_id_recency_ranks_the_users_titles_by_last_play_whatever_the_vocabulary(tmp_path, tiny_model_dir, scorer):
    plays = [("known", scorer.vocab.items.token(2)), ("new", "never-trained-on"), ("known", scorer.vocab.items.token(3)),
             ("new", "never-trained-on"), ("new", "another-new-one"), ("known", scorer.vocab.items.token(2))]
    events = [PlayEvent(event_id=f"e{n}", user_id="u", item_id=title, ts=1_700_000_000_000 + n * 60_000, action="a",
                        genres=(), kind="movie", release_ts=None, duration_s=60.0) for n, (_, title) in enumerate(plays)]
    log = tmp_path / "raw.jsonl"
    write_log(log, events)
    backtest = backtest_of(LogReplay(log), tiny_model_dir, scorer)
    raw = next(system.log for system in backtest.systems if system.log.system == "raw-id recency")
    # Each event judged against the next: e2 -> e3 ("never-trained-on", played before e2: second);
    # e4 -> e5 (the first title, behind another-new-one, never-trained-on and the second title).
    last = len(scorer.vocab.items)
    assert raw.rank == [last, last, 2, last, 4] and raw.rank_unseen == [last, last, 0, last, 0]


def test_a_backtest_from_retrieved_candidates_that_hold_the_catalogue_judges_as_the_exact_one(
    world_log, tiny_model_dir, scorer
):
    exact = backtest_of(LogReplay(world_log), tiny_model_dir, scorer, catalogue="exact")
    approximate = backtest_of(LogReplay(world_log), tiny_model_dir, Scorer.load(tiny_model_dir), catalogue="approximate")
    assert scorer.config.n_items < 512  # the retriever's candidates hold the whole tiny catalogue
    ranked = [rank if rank < scorer.config.n_items else "last" for rank in exact.systems[0].log.rank]
    assert [rank if rank < scorer.config.n_items else "last" for rank in approximate.systems[0].log.rank] == ranked
    assert ranked.count("last") < len(ranked) // 2
    assert approximate.settings["catalogue"] == "approximate"
