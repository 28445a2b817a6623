"""Intent updates for the lookup tests, and the HTTP client they read the service with."""
from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request

from schemas import IntentUpdate, ItemScore, LabelScore, ModelRef

TASKS = ("action", "genre", "kind", "release")


def update(user_id: str, ts: int, label: str = "drama", *, scored_at: int | None = None, event_id: str | None = None,
           weight_of_genre: float = 0.25) -> IntentUpdate:  # fmt: skip
    other = (1.0 - weight_of_genre) / 3
    return IntentUpdate(
        user_id=user_id,
        event_id=event_id or f"{user_id}-{ts}",
        ts=ts,
        model=ModelRef("intentrec-V3", "test"),
        scored_at=scored_at if scored_at is not None else ts + 5,
        intent_embedding=(0.5, -0.25, 0.125, 1.0),
        intents={task: (LabelScore(label if task == "genre" else f"{task}-top", 0.75), LabelScore("other", 0.125))
                 for task in TASKS},  # fmt: skip
        intent_weights={task: weight_of_genre if task == "genre" else other for task in TASKS},
        next_items=(ItemScore(f"item-{ts}", 0.5), ItemScore("item-0", 0.25)),
    )


def get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, dict | str]:
    """(status, body as JSON, or text when it is not JSON); `context`: the client's TLS settings."""
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as response:
            status, body, kind = response.status, response.read(), response.headers.get_content_type()
    except urllib.error.HTTPError as error:
        status, body, kind = error.code, error.read(), error.headers.get_content_type()
    return status, json.loads(body) if kind == "application/json" else body.decode()


def post(url: str, body: object) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
