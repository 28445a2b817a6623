"""The HTTP API of `intentstream serve` (Starlette), over the table the follower keeps:

    GET  /users/{user_id}/intent    the user's latest IntentUpdate (schemas/intent_update.schema.json)
    GET  /users/{user_id}/history   the user's last updates, summarised (what the page draws)
    POST /users:batchGet            {"user_ids": [...]} -> {"updates": [...], "missing": [...]}
    GET  /users?limit=N             the users updated most recently (the page's picker)
    GET  /healthz                   200 once the topic was read to its end at start, 503 before
    GET  /metrics                   Prometheus
    GET  /                          the page (page.html)

Until the topic has been read to its end at start, lookups answer 503: a user not read yet would
otherwise look unknown. Errors are JSON: {"error": "...what happened and what to do..."}; a 503 names
no broker and no Kafka error (the service logs those).

What a request can make the service hold is bounded: a batchGet body is refused beyond the largest
valid request (`batch_get_body_limit`) before it is read whole, and ids longer than the contract's
are refused, so a client cannot grow the service's memory or echo megabytes back; the picker's
`limit` is 1..MAX_PICKER_USERS. With a token (`token`), every route that answers users' intents
needs `Authorization: Bearer <token>`; /healthz, /metrics and the page answer without it (probes,
Prometheus; they hold no user's data, the page asks with the user's own requests).
"""
from __future__ import annotations

import hmac
import time
from importlib import resources
from typing import Awaitable, Callable

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from schemas import MAX_ID_CHARS
from stream.lookup.follower import TopicFollower
from stream.lookup.metrics import LookupMetrics
from stream.lookup.table import LatestTable

JSON = "application/json"
MAX_PICKER_USERS = 100
# The longest a user id can be in a batchGet body: every one of its characters outside the Basic
# Multilingual Plane and written as an escaped surrogate pair (\uXXXX\uXXXX, 12 bytes); and its
# quotes, a comma and a space.
MOST_BYTES_PER_ID = 12 * MAX_ID_CHARS + 4
BODY_ENVELOPE_BYTES = 1024  # {"user_ids": [...]} and whitespace around it

Endpoint = Callable[[Request], Awaitable[Response]]


def batch_get_body_limit(max_batch_get: int) -> int:
    """The most bytes a valid POST /users:batchGet body can have: `max_batch_get` ids, each as long
    as the contract allows and written as long as JSON can write it."""
    return BODY_ENVELOPE_BYTES + max_batch_get * MOST_BYTES_PER_ID


def lookup_app(table: LatestTable, follower: TopicFollower, metrics: LookupMetrics, max_batch_get: int,
               token: str | None = None) -> Starlette:  # fmt: skip
    page = resources.files("stream.lookup").joinpath("page.html").read_bytes()
    body_limit = batch_get_body_limit(max_batch_get)
    expected_authorization = None if token is None else f"Bearer {token}".encode()

    def error(status: int, message: str, headers: dict[str, str] | None = None, **details) -> Response:
        return Response(orjson.dumps({"error": message, **details}), status, headers, media_type=JSON)

    def not_ready() -> Response | None:
        if follower.failure is not None:
            return error(503, "stopped following the topic; the service is exiting (its log says why)")
        if not follower.ready.is_set():
            return error(503, "still reading the topic from the beginning; retry when /healthz is ready")
        return None

    async def intent(request: Request) -> Response:
        user_id = request.path_params["user_id"]
        found = table.latest_json(user_id)
        if found is None:
            return not_ready() or error(404, "no update for this user on the topic", user_id=user_id)
        return not_ready() or Response(found, media_type=JSON)

    async def history(request: Request) -> Response:
        user_id = request.path_params["user_id"]
        moments = table.recent(user_id)
        if moments is None:
            return not_ready() or error(404, "no update for this user on the topic", user_id=user_id)
        return not_ready() or Response(orjson.dumps({"user_id": user_id, "updates": [m.as_dict() for m in moments]}),
                                       media_type=JSON)  # fmt: skip

    def too_large() -> Response:
        # Closing the connection: the rest of the body is not worth reading to keep it open.
        return error(413, f"the body is over {body_limit:,} bytes, the most that {max_batch_get} user ids "
                     f"(--max-batch-get) of at most {MAX_ID_CHARS} characters take", {"Connection": "close"})

    async def batch_get(request: Request) -> Response:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > body_limit:
            return too_large()
        body = bytearray()
        try:
            async for chunk in request.stream():  # a chunked body declares no length: count what comes
                body += chunk
                if len(body) > body_limit:
                    return too_large()
        except ClientDisconnect:
            return error(400, "the client went away before the end of the body")
        try:
            asked = orjson.loads(body)
        except orjson.JSONDecodeError as problem:
            return error(400, f"the body is not JSON ({problem}); send {{\"user_ids\": [\"...\", ...]}}")
        user_ids = asked.get("user_ids") if isinstance(asked, dict) else None
        if not isinstance(user_ids, list) or not all(isinstance(user_id, str) for user_id in user_ids):
            return error(400, "send {\"user_ids\": [\"...\", ...]}: a list of user id strings")
        if len(user_ids) > max_batch_get:
            return error(413, f"{len(user_ids)} user ids asked at once; at most {max_batch_get} (--max-batch-get)")
        too_long = next((n for n, user_id in enumerate(user_ids) if len(user_id) > MAX_ID_CHARS), None)
        if too_long is not None:
            return error(400, f"user id #{too_long} has {len(user_ids[too_long]):,} characters; user ids have at "
                         f"most {MAX_ID_CHARS}")
        found, missing = table.many_json(user_ids)
        return not_ready() or Response(orjson.dumps({"updates": [orjson.Fragment(update) for update in found],
                                                     "missing": missing}), media_type=JSON)  # fmt: skip

    async def users(request: Request) -> Response:
        given = request.query_params.get("limit", "20")
        try:
            limit = int(given)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_PICKER_USERS:
            return error(400, f"limit must be a whole number from 1 to {MAX_PICKER_USERS}, not {given[:20]!r}")
        return Response(orjson.dumps({"user_ids": table.user_ids(limit)}), media_type=JSON)

    async def healthz(_request: Request) -> Response:
        return not_ready() or Response(orjson.dumps({"status": "ready", "users": len(table)}), media_type=JSON)

    async def prometheus(_request: Request) -> Response:
        metrics.users.set(len(table))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def index(_request: Request) -> Response:
        return HTMLResponse(page)

    def guarded(endpoint: Endpoint) -> Endpoint:
        """`endpoint`, answered only to a request with the token (when there is one)."""
        if expected_authorization is None:
            return endpoint

        async def answer(request: Request) -> Response:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected_authorization):
                return error(401, "send the service's token: Authorization: Bearer <token>",
                             {"WWW-Authenticate": 'Bearer realm="intentstream"'})  # fmt: skip
            return await endpoint(request)

        return answer

    def measured(route: str, endpoint: Endpoint) -> Endpoint:
        latency = metrics.request_seconds.labels(route)

        async def answer(request: Request) -> Response:
            started = time.perf_counter()
            response = await endpoint(request)
            latency.observe(time.perf_counter() - started)
            metrics.requests.labels(route, str(response.status_code)).inc()
            return response

        return answer

    routes = [  # path, endpoint, methods, whether it answers users' data (and so needs the token)
        ("/users/{user_id:path}/intent", intent, ["GET"], True),
        ("/users/{user_id:path}/history", history, ["GET"], True),
        ("/users:batchGet", batch_get, ["POST"], True),
        ("/users", users, ["GET"], True),
        ("/healthz", healthz, ["GET"], False),
        ("/metrics", prometheus, ["GET"], False),
        ("/", index, ["GET"], False),
    ]

    async def no_such_route(request: Request, problem: HTTPException) -> Response:
        return error(problem.status_code, f"{problem.detail}: {request.method} {request.url.path}; see GET / for the "
                     "page, GET /users/{user_id}/intent for a user's intent")  # fmt: skip

    return Starlette(
        routes=[Route(path, measured(path.replace(":path", ""), guarded(endpoint) if private else endpoint),
                      methods=methods)
                for path, endpoint, methods, private in routes],
        exception_handlers={404: no_such_route, 405: no_such_route},
    )  # fmt: skip
