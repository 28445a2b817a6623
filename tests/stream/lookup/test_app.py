"""The lookup service's HTTP API on a real server: answers valid against the IntentUpdate schema,
JSON errors, readiness, bounds on what a request can ask, the token, and metrics."""
from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request

import jsonschema
import pytest

from schemas import SCHEMA_FILES
from stream.kafka.health import BrokerLost
from stream.lookup.app import batch_get_body_limit
from tests.stream.lookup.conftest import ServedTable
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


def raw_request(url: str, head: str, body_parts: tuple[bytes, ...] = ()) -> tuple[int, dict[str, str], dict]:
    """Sends a request's head and body parts as they are (no client that fixes them up), and reads the
    answer: (status, headers, JSON body). Fails if no answer comes within 10 s."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(head.encode())
        for part in body_parts:
            connection.sendall(part)
        reply = http.client.HTTPResponse(connection)
        reply.begin()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, json.loads(reply.read())


def test_a_batch_get_body_over_the_limit_is_refused_before_it_is_read(served):
    served.follower.ready.set()
    limit = batch_get_body_limit(5)
    assert limit == 1024 + 5 * (12 * 128 + 4)  # the largest valid body: 5 ids of 128 escaped astral characters
    longest_valid = json.dumps({"user_ids": ["\U0001F600" * 128] * 5}, indent=40).encode()
    assert len(longest_valid) <= limit and post(f"{served.url}/users:batchGet", json.loads(longest_valid))[0] == 200
    # Declared over the limit: answered at once, without waiting for the 5 GB.
    status, headers, body = raw_request(served.url, "POST /users:batchGet HTTP/1.1\r\nHost: x\r\n"
                                        "Content-Type: application/json\r\nContent-Length: 5000000000\r\n\r\n")  # fmt: skip
    assert status == 413 and headers["connection"] == "close"
    assert f"over {limit:,} bytes" in body["error"] and "(--max-batch-get)" in body["error"]
    # Chunked (no length declared): refused once more than the limit has come, not at the end.
    chunk = b"x" * 4096
    status, _, body = raw_request(served.url, "POST /users:batchGet HTTP/1.1\r\nHost: x\r\n"
                                  "Transfer-Encoding: chunked\r\n\r\n",
                                  tuple(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)))  # fmt: skip
    assert status == 413 and f"over {limit:,} bytes" in body["error"]


def test_a_batch_get_of_an_id_longer_than_the_contract_is_refused(served):
    served.follower.ready.set()
    assert post(f"{served.url}/users:batchGet", {"user_ids": ["u" * 128]}) == (200, {"updates": [],
                                                                                      "missing": ["u" * 128]})
    status, body = post(f"{served.url}/users:batchGet", {"user_ids": ["u1", "u" * 129]})
    assert status == 400 and body == {"error": "user id #1 has 129 characters; user ids have at most 128"}


@pytest.mark.parametrize("limit", ["-1", "0", "101", "abc", "1e3"])
def test_the_picker_refuses_a_limit_out_of_range(served, limit):
    served.follower.ready.set()
    for n in range(120):
        served.table.apply(update(f"u{n}", ts=1_000 + n))
    status, body = get(f"{served.url}/users?limit={limit}")
    assert status == 400 and body["error"].startswith("limit must be a whole number from 1 to 100")
    assert get(f"{served.url}/users?limit=100")[1]["user_ids"][:2] == ["u119", "u118"]
    assert len(get(f"{served.url}/users")[1]["user_ids"]) == 20


def test_a_503_names_no_broker_and_no_kafka_error(served):
    served.follower.failure = BrokerLost("no broker of kafka-0.prod.internal:9092 answered for 60 s "
                                         "(last error: SASL authentication failed for user svc-intent)")  # fmt: skip
    for path in ("/healthz", "/users/u1/intent"):
        status, body = get(f"{served.url}{path}")
        assert status == 503 and body == {"error": "stopped following the topic; the service is exiting (its log "
                                                   "says why)"}  # fmt: skip


def ask(url: str, method: str, body: object, authorization: str | None) -> tuple[int, dict[str, str], dict]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": authorization} if authorization else {})
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, json.loads(error.read())


def test_with_a_token_only_requests_that_carry_it_read_users():
    token = "s3cret-token-0123456789"
    with ServedTable(token=token) as served:
        served.follower.ready.set()
        served.table.apply(update("u1", ts=1_000))
        asks = [("GET", "/users/u1/intent", None), ("GET", "/users/u1/history", None), ("GET", "/users", None),
                ("POST", "/users:batchGet", {"user_ids": ["u1"]})]  # fmt: skip
        for method, path, body in asks:
            for authorization in (None, "Bearer wrong", f"Basic {token}", f"Bearer {token}x"):
                status, headers, answer = ask(served.url + path, method, body, authorization)
                assert status == 401 and headers["www-authenticate"].startswith("Bearer"), (path, authorization)
                assert answer == {"error": "send the service's token: Authorization: Bearer <token>"}
            assert ask(served.url + path, method, body, f"Bearer {token}")[0] == 200, path
        for open_path in ("/healthz", "/metrics", "/"):  # probes, Prometheus and the page (which holds no data)
            assert get(served.url + open_path)[0] == 200, open_path
        _, metrics = get(f"{served.url}/metrics")
        assert 'intentstream_lookup_requests_total{route="/users/{user_id}/intent",status="401"} 4.0' in metrics

