"""Backtests: replay history through the live dataflow and judge every update (`intentstream
backtest`, whose options are in stream.cli.backtest).

Where things are: `timeline` (every user's events in event-time order, read before the replay),
`sources` (a log file or a bounded range of a topic as the dataflow's input), `judging` (each
update against the user's next event; the popularity and recency floors), `replay` (one pass per
model through `stream.dataflow.build_flow`, and `run_backtest`, the whole backtest), `report`
(metrics, paired comparisons, report.json / report.md / plots).

A backtest is the live path fed from the past: the events of a log file, or of a bounded range of a
Kafka topic, go through `stream.dataflow.build_flow` unchanged (decode, per-user state, micro-batched
scoring); only the source and the sink differ. Each update, made for an event e of user u, is
judged prequentially against u's next event n: the rank of n's item in the whole catalogue, and per
intent task whether the top label is n's. An update carries only its top-k, so the judge sits in
the dataflow's score step (`build_flow(observe_scores=...)`) and sees the model's full predictions.

Two passes over the input:

1. Before the replay, one streaming pass builds the `Timeline`: every user's events in event-time
   order, so that when an update is made the judge already knows the user's next event. It also
   counts the messages (the progress bar's total) and checks the input: a corrupt log or an empty
   range stops the backtest before anything is replayed.
2. The replay, once per model (each model has its own vocabulary, so its own featurized state).

Definitions:

- The *judged event* is n. `--score-from TS` judges only updates whose n is at or after TS: every
  event is replayed, so the history before TS builds the state, and a model trained with
  `intentstream train --until TS` is tested on what came after. Per-day and per-action breakdowns
  use n's UTC day and n's action (as `intentstream evaluate` slices by the target's action).
- Order: a user's events must reach the state in event-time order, as live. A log sorted by time is
  the normal case. Otherwise the state's rules apply: an event at most `--lateness` older than the
  user's newest is put in its place; an older one is a dead letter (no update), though it is still
  the truth for the update before it. Ties in time keep arrival order, as in the state. The report
  counts out-of-order events and dead letters.
- Topic ranges: `--from`/`--to` select events by event time, [from, to), not by Kafka timestamps,
  because a topic loaded from a file carries the time of loading. So the whole topic is read, up
  to the end of each partition as the timeline pass finds it (later messages are left out), once
  for the timeline and once by the replay. A message that cannot be decoded has no event time: it goes to
  the replay, which dead-letters it, as live.
- Baselines, the floors every model must beat, rank the first model's catalogue: *popularity*
  counts every play of the input at or before e's event time; *recency* puts the user's last items
  (as many as the model reads) first, most recent first, then the rest by that popularity
  (`model.training.baselines`). They are computed from the timeline in one sweep, not in the dataflow:
  they have no model to serve.

One worker replays (the run is deterministic); the scorer is the bottleneck, not Bytewax. The
timeline holds every replayed event in memory, about 1 KB each: a million events need about 1 GB.
"""
