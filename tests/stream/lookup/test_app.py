"""The lookup service's HTTP API on a real server: answers valid against the IntentUpdate schema,
JSON errors, readiness, batch bounds and metrics."""
from __future__ import annotations

import json

import jsonschema

from schemas import SCHEMA_FILES
from tests.stream.lookup.updates import get, post, update


def update_schema() -> dict:
    return json.loads(SCHEMA_FILES["intent_update"].read_text())


def test_lookups_answer_503_until_the_topic_was_read_to_its_end(served):
    served.table.apply(update("u1", ts=1_000))
    assert get(f"{served.url}/healthz")[0] == 503
    status, body = get(f"{served.url}/users/u1/intent")
    assert status == 503 and "retry when /healthz is ready" in body["error"]
    served.follower.ready.set()
    assert get(f"{served.url}/healthz") == (200, {"status": "ready", "users": 1})


def test_a_user_s_latest_update_is_valid_against_the_schema(served):
    served.follower.ready.set()
    served.table.apply(update("user/with space", ts=1_000))
    served.table.apply(update("user/with space", ts=2_000, label="comedy"))
    status, body = get(f"{served.url}/users/user%2Fwith%20space/intent")
    assert status == 200
    jsonschema.validate(body, update_schema())
    assert body["ts"] == 2_000 and body["intents"]["genre"][0] == {"label": "comedy", "p": 0.75}


def test_an_unknown_user_is_a_json_404(served):
    served.follower.ready.set()
    assert get(f"{served.url}/users/nobody/intent") == (404, {"error": "no update for this user on the topic",
                                                              "user_id": "nobody"})


def test_batch_get_answers_the_known_users_and_names_the_others(served):
    served.follower.ready.set()
    for user_id in ("u1", "u2"):
        served.table.apply(update(user_id, ts=1_000))
    status, body = post(f"{served.url}/users:batchGet", {"user_ids": ["u2", "nobody", "u1"]})
    assert status == 200 and body["missing"] == ["nobody"]
    assert [one["user_id"] for one in body["updates"]] == ["u2", "u1"]
    for one in body["updates"]:
        jsonschema.validate(one, update_schema())


def test_batch_get_refuses_bad_and_oversized_requests(served):
    served.follower.ready.set()
    status, body = post(f"{served.url}/users:batchGet", {"user_ids": [f"u{i}" for i in range(6)]})
    assert status == 413 and "at most 5 (--max-batch-get)" in body["error"]
    for bad in ({"user_ids": "u1"}, {"user_ids": [1, 2]}, ["u1"], {}):
        status, body = post(f"{served.url}/users:batchGet", bad)
        assert status == 400 and "a list of user id strings" in body["error"], bad


def test_history_lists_the_last_updates_oldest_first(served):
    served.follower.ready.set()
    for ts in (1_000, 2_000, 3_000):
        served.table.apply(update("u1", ts=ts, label=f"g{ts}"))
    status, body = get(f"{served.url}/users/u1/history")
    assert status == 200 and [moment["ts"] for moment in body["updates"]] == [1_000, 2_000, 3_000]
    assert body["updates"][-1]["top_labels"]["genre"] == "g3000"


def test_metrics_count_requests_by_route_and_status(served):
    served.follower.ready.set()
    served.table.apply(update("u1", ts=1_000))
    get(f"{served.url}/users/u1/intent")
    get(f"{served.url}/users/nobody/intent")
    status, text = get(f"{served.url}/metrics")
    assert status == 200
    assert 'intentstream_lookup_requests_total{route="/users/{user_id}/intent",status="200"} 1.0' in text
    assert 'intentstream_lookup_requests_total{route="/users/{user_id}/intent",status="404"} 1.0' in text
    assert "intentstream_lookup_users 1.0" in text


def test_the_page_is_served(served):
    status, text = get(f"{served.url}/")
    assert status == 200 and "<svg id=\"history\"" in text


def test_a_wrong_path_or_method_is_a_json_error(served):
    status, body = get(f"{served.url}/user/u1")
    assert status == 404 and "GET /user/u1" in body["error"]
    status, body = post(f"{served.url}/users/u1/intent", {})
    assert status == 405 and "Method Not Allowed: POST" in body["error"]
