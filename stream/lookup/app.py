"""The HTTP API of `intentstream serve` (Starlette), over the table the follower keeps:

    GET  /users/{user_id}/intent    the user's latest IntentUpdate (schemas/intent_update.schema.json)
    GET  /users/{user_id}/history   the user's last updates, summarised (what the page draws)
    POST /users:batchGet            {"user_ids": [...]} -> {"updates": [...], "missing": [...]}
    GET  /users?limit=N             the users updated most recently (the page's picker)
    GET  /healthz                   200 once the topic was read to its end at start, 503 before
    GET  /metrics                   Prometheus
    GET  /                          the page (page.html)

Until the topic has been read to its end at start, lookups answer 503: a user not read yet would
otherwise look unknown. Errors are JSON: {"error": "...what happened and what to do..."}.
"""
from __future__ import annotations

import time
from importlib import resources
from typing import Awaitable, Callable

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from stream.lookup.follower import TopicFollower
from stream.lookup.metrics import LookupMetrics
from stream.lookup.table import LatestTable

JSON = "application/json"
MAX_PICKER_USERS = 100

Endpoint = Callable[[Request], Awaitable[Response]]


def lookup_app(table: LatestTable, follower: TopicFollower, metrics: LookupMetrics, max_batch_get: int) -> Starlette:
    page = resources.files("stream.lookup").joinpath("page.html").read_bytes()

    def error(status: int, message: str, **details) -> Response:
        return Response(orjson.dumps({"error": message, **details}), status, media_type=JSON)

    def not_ready() -> Response | None:
        if follower.failure is not None:
            return error(503, f"stopped following the topic: {follower.failure}")
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

    async def batch_get(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as problem:
            return error(400, f"the body is not JSON ({problem}); send {{\"user_ids\": [\"...\", ...]}}")
        user_ids = body.get("user_ids") if isinstance(body, dict) else None
        if not isinstance(user_ids, list) or not all(isinstance(user_id, str) for user_id in user_ids):
            return error(400, "send {\"user_ids\": [\"...\", ...]}: a list of user id strings")
        if len(user_ids) > max_batch_get:
            return error(413, f"{len(user_ids)} user ids asked at once; at most {max_batch_get} (--max-batch-get)")
        found, missing = table.many_json(user_ids)
        return not_ready() or Response(orjson.dumps({"updates": [orjson.Fragment(update) for update in found],
                                                     "missing": missing}), media_type=JSON)  # fmt: skip

    async def users(request: Request) -> Response:
        try:
            limit = min(int(request.query_params.get("limit", "20")), MAX_PICKER_USERS)
        except ValueError:
            return error(400, "limit must be a whole number")
        return Response(orjson.dumps({"user_ids": table.user_ids(limit)}), media_type=JSON)

    async def healthz(_request: Request) -> Response:
        return not_ready() or Response(orjson.dumps({"status": "ready", "users": len(table)}), media_type=JSON)

    async def prometheus(_request: Request) -> Response:
        metrics.users.set(len(table))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def index(_request: Request) -> Response:
        return HTMLResponse(page)

    def measured(route: str, endpoint: Endpoint) -> Endpoint:
        latency = metrics.request_seconds.labels(route)

        async def answer(request: Request) -> Response:
            started = time.perf_counter()
            response = await endpoint(request)
            latency.observe(time.perf_counter() - started)
            metrics.requests.labels(route, str(response.status_code)).inc()
            return response

        return answer

    routes = [
        ("/users/{user_id:path}/intent", intent, ["GET"]),
        ("/users/{user_id:path}/history", history, ["GET"]),
        ("/users:batchGet", batch_get, ["POST"]),
        ("/users", users, ["GET"]),
        ("/healthz", healthz, ["GET"]),
        ("/metrics", prometheus, ["GET"]),
        ("/", index, ["GET"]),
    ]
    async def no_such_route(request: Request, problem: HTTPException) -> Response:
        return error(problem.status_code, f"{problem.detail}: {request.method} {request.url.path}; see GET / for the "
                     "page, GET /users/{user_id}/intent for a user's intent")  # fmt: skip

    return Starlette(
        routes=[Route(path, measured(path.replace(":path", ""), endpoint), methods=methods)
                for path, endpoint, methods in routes],
        exception_handlers={404: no_such_route, 405: no_such_route},
    )  # fmt: skip
