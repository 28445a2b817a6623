"""The stream half of IntentStream: Kafka play events -> a Bytewax dataflow keyed by user -> the
IntentRec serving scorer -> intent updates on Kafka. From the bottom up (each imports only what
is above it in this list, and model/ and schemas/):

- `settings`, `errors`, `parsing`: the defaults (StreamSettings, ServiceSettings; the demo's are
  DemoOptions, in `demo`), the one error type and the exit statuses, option values from text.
- `state`, `metrics`, `dataflow`: per-user state, Prometheus metrics, and `build_flow`, the
  dataflow with its named steps (decode, key_by_user, remember, score, encode).
- `kafka/`: the broker and topic helpers, the Kafka client settings, the checks before a run.
- `service/`: `intentstream run` as a long-running service.
- `lookup/`: `intentstream serve`, each user's latest intent over HTTP from the compacted topic (the
  table, the topic follower, the Starlette app and its page).
- `harness`: a running stream on this machine (a dataflow process, a paced producer, reading the
  updates back), shared by the demo, bench/stream.py and the tests.
- `demo`: `intentstream demo` on top of the harness. `backtest/`: replays judged against the next
  event, and their reports.
- `cli/`: the `intentstream` command line, at the top: nothing below imports it.
"""
