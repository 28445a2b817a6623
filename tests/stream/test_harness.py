"""The harness' DataflowProcess as one process of a Bytewax cluster (what bench/scale_out.py runs)."""
from __future__ import annotations


from model.playlogs.synth import generate_world
from schemas import decode_intent_update, encode_play_event
from stream.harness import DataflowProcess
from stream.kafka.broker import free_loopback_ports, produce_messages, read_topic
from stream.settings import StreamSettings



def test_two_dataflow_processes_form_a_cluster_that_splits_the_partitions_and_the_users(
    kafka_bootstrap, make_topics, tiny_model_dir
):
    topics = make_topics(partitions=2)
    events = generate_world(seed=1, n_users=20, n_titles=60, days=20)[:200]
    messages = [(event.user_id.encode(), encode_play_event(event, "msgpack")) for event in events]
    produce_messages(kafka_bootstrap, topics.input, messages)
    addresses = tuple(f"127.0.0.1:{port}" for port in free_loopback_ports(2))
    flows = [
        DataflowProcess(StreamSettings(
            brokers=kafka_bootstrap, model_dir=tiny_model_dir, input_topic=topics.input, output_topic=topics.output,
            dlq_topic=topics.dlq, latest_topic=topics.latest, stop_at_end=True, process_id=process_id,
            addresses=addresses,
        ))  # fmt: skip
        for process_id in range(2)
    ]
    try:
        for flow in flows:
            flow.start()
        counts = [flow.wait_finished(timeout=120) for flow in flows]
    finally:
        for flow in flows:
            flow.stop()

    assert all(c is not None for c in counts), counts
    assert all(c.events_in > 0 and c.updates_out > 0 for c in counts), counts  # each read a partition and scored users
    assert sum(c.events_in for c in counts) == sum(c.updates_out for c in counts) == len(events)
    assert all(c.first_read_at is not None for c in counts)
    records = read_topic(kafka_bootstrap, topics.output, count=len(events))
    updates = [decode_intent_update(record.value, "msgpack") for record in records]
    assert sorted((u.user_id, u.event_id) for u in updates) == sorted((e.user_id, e.event_id) for e in events)
