from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter(include_in_schema=False)

STATIC_DIR = Path(str(resources.files("priority_queue_api") / "static"))


@router.get("/")
async def index() -> FileResponse:
    # The page holds no data: it signs in with a token typed by the user and calls the API with it.
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})
