"""Baseline: a bare Starlette JSON endpoint under uvicorn, serving a fixed JSON document.

The document is the exact body agentmx returned for the same request, so both sides move the same bytes.
Usage: starlette_json.py PORT JSON_FILE
"""

from __future__ import annotations

import json
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def build(doc: object) -> Starlette:
    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse(doc)

    return Starlette(routes=[Route("/{path:path}", endpoint)])


if __name__ == "__main__":
    port, path = int(sys.argv[1]), sys.argv[2]
    with open(path) as fh:
        app = build(json.load(fh))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
