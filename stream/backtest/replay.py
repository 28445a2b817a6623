"""Replaying: the whole input through the live dataflow once per model, judged as it goes, and
`run_backtest`, the whole backtest from a replay source to its results."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Mapping

from tqdm import tqdm

from model.serving.incremental import load_serving_scorer
from model.serving.scorer import Scorer
from stream.backtest.judging import ModelJudge, judge_baselines
from stream.backtest.report import Backtest, ReplayStats, SystemResult
from stream.backtest.sources import DiscardSink, LogReplay, TopicReplay
from stream.backtest.timeline import Timeline
from stream.dataflow import StreamCounters, build_flow
from stream.errors import CommandError
from stream.settings import StreamSettings




class ProgressCounters(StreamCounters):
    """The stream's counters, also moving a progress bar by every message read."""

    def __init__(self, bar: tqdm):
        super().__init__(log_every_s=3600.0)
        self.bar = bar

    def count_event(self, step_id: str, message) -> None:
        super().count_event(step_id, message)
        self.bar.update(1)


def replay(replay_source, timeline: Timeline, scorer: Scorer, judge: ModelJudge, settings: StreamSettings,
           progress: bool) -> ReplayStats:
    """One pass of the whole input through the live dataflow, judged as it goes. The flow scores
    incrementally, as live (eager, on the CPU, a fresh cache), with `scorer`'s model, the catalogue as
    settings.catalogue says."""
    from bytewax.run import cli_main

    with tqdm(total=timeline.messages, desc=judge.log.system, unit="ev", disable=None if progress else True,
              dynamic_ncols=True) as bar:
        counters = ProgressCounters(bar)
        serving = load_serving_scorer(scorer, catalogue=settings.catalogue, index_dir=settings.model_dir)
        register_new_titles(serving, timeline)
        flow = build_flow(settings, serving, source=replay_source.source(), sink=DiscardSink(), counters=counters,
                          observe_scores=judge)  # fmt: skip
        started = time.perf_counter()
        cli_main(flow, workers_per_process=1)
        wall_s = time.perf_counter() - started
    if counters.events_in != timeline.messages:
        print(f"intentstream backtest: warning: the replay read {counters.events_in} messages, the pass before it "
              f"{timeline.messages}: did the input change meanwhile?", file=sys.stderr)
    return ReplayStats(counters.events_in, counters.updates_out, counters.duplicates, dict(counters.dead_letters),
                       wall_s)


def register_new_titles(serving: Scorer, timeline: Timeline) -> None:
    """A replay knows its whole input, so its plays are registered before it starts: an update then
    counts the plays up to its event's time whatever order the topic's partitions are read in, and
    ranks the titles played in the week before it. (Live, a title is ranked once plays of it have
    been read.)"""
    in_time_order = sorted(timeline.events, key=lambda event: event.ts)
    serving.new_titles.preload(in_time_order, [serving.featurize(event) for event in in_time_order])


def run_backtest(
    replay_source: LogReplay | TopicReplay,
    models: Mapping[str, tuple[Path, Scorer]],
    *,
    score_from: int | None = None,
    top_k: int = StreamSettings.top_k,
    batch_size: int = StreamSettings.batch_size,
    lateness_s: float = StreamSettings.lateness_s,
    ttl_s: float = StreamSettings.ttl_s,
    catalogue: str = StreamSettings.catalogue,
    progress: bool = True,
) -> Backtest:
    """Replay `replay_source` once per model (name -> (directory, loaded scorer)) and judge every
    update; the first model is the reference and its catalogue is the baselines'."""
    timeline = replay_source.timeline()
    counts = timeline.summary()
    if not any(
        (score_from is None or timeline.events[index].ts >= score_from) for index in timeline.successor.values()
    ):
        where = "" if score_from is None else f" at or after --score-from {score_from}"
        raise CommandError(f"nothing to judge: no user has an event{where} that follows an earlier one of theirs "
                           f"(the input spans {counts['first_ts']}..{counts['last_ts']} ms)")
    backtest = Backtest(
        source=replay_source.describe(),
        input=counts,
        settings={"score_from": score_from, "top_k": top_k, "batch_size": batch_size, "lateness_s": lateness_s,
                  "ttl_s": ttl_s, "catalogue": catalogue, "workers": 1},
    )
    for name, (directory, scorer) in models.items():
        settings = StreamSettings(brokers="", model_dir=directory, format=replay_source.wire_format,
                                  latest_topic=None, batch_size=batch_size, top_k=top_k, ttl_s=ttl_s,
                                  lateness_s=lateness_s, catalogue=catalogue, stop_at_end=True)
        judge = ModelJudge(name, scorer, timeline, score_from, top_k)
        stats = replay(replay_source, timeline, scorer, judge, settings, progress)
        model = {"name": scorer.model_ref.name, "version": scorer.model_ref.version, "directory": str(directory)}
        backtest.systems.append(SystemResult(judge.log, model, stats, judge.intents if judge.intents.seen else None))
    _, reference = next(iter(models.values()))
    for log in judge_baselines(timeline, reference.vocab, reference.history_len, score_from, top_k,
                               reference.config.unknown_slots):
        backtest.systems.append(SystemResult(log))
    return backtest
