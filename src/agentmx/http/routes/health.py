from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from agentmx.http.deps import RuntimeDep

router = APIRouter()


@router.get("/health", include_in_schema=False)
async def health(rt: RuntimeDep) -> JSONResponse:
    try:
        await rt.db.ping()
    except Exception as exc:  # any database failure means "not healthy"
        return JSONResponse({"status": "unavailable", "error": type(exc).__name__}, status_code=503)
    return JSONResponse({"status": "ok"})
