"""The HTTP stack of `intentstream serve` without the service: uvicorn + Starlette, configured as
serve configures them, answering one fixed intent update (the size serve answers) from memory.
bench/lookup.py measures it beside serve as the ceiling of the stack.

    python bench/peers/bare_http.py PORT
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path[:] = [str(Path(__file__).resolve().parents[2])] + sys.path[1:]

import uvicorn  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from bench.lookup import sample_update  # noqa: E402
from schemas import encode_intent_update  # noqa: E402

ANSWER = encode_intent_update(sample_update("user-0000000", 0, random.Random(0)), "json")


async def intent(_request) -> Response:
    return Response(ANSWER, media_type="application/json")


app = Starlette(routes=[Route("/users/{user_id:path}/intent", intent), Route("/healthz", intent)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False, lifespan="off")
