"""`intentstream run`, the streaming scorer as a long-running service: `options` resolves its
settings (command line, environment, defaults), `recovery` checks and binds the recovery
directory, `signals` turns SIGTERM into a stop like Ctrl-C, and `runner` checks the brokers,
topics and model before it runs the dataflow.

Scoring is incremental: each user's new event is scored from the rows cached for the user's earlier
ones (model.serving.incremental; `--kv-cache-mb` of memory for them, 0 to recompute every event from
the history), run by `--backend`: by default (auto) the artifact `intentstream compile MODEL_DIR`
wrote beside the model where it fits this model and torch, else eager PyTorch on the CPU; or
eager:cuda, or an artifact named by its path (aoti:PATH, tensorrt:PATH).

Monitoring: `--metrics-port PORT` serves Prometheus metrics at http://0.0.0.0:PORT/metrics (see
stream/metrics.py). SIGTERM (docker stop, Kubernetes) stops the run like Ctrl-C: the dataflow stops,
the counters are logged, and a restart with the same --recovery-dir resumes from the last snapshot.
"""
