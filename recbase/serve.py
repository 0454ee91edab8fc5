"""The recommender over HTTP (FastAPI + uvicorn): the model and the catalog are loaded once, then

- ``POST /recommend`` ``{"history": [item ids, oldest first], "k": 10, "exclude_history": true}``
- ``POST /score`` ``{"history": [...], "candidates": [item ids]}``
- ``GET /health``

answer JSON. A request that does not fit (wrong types, unknown fields, ``k`` out of range, an item id the catalog
does not have) gets a 4xx with ``{"error": one line naming the field, ...}``. Every request's latency is logged
(logger ``recbase.serve``) and returned in ``took_ms``. Model calls hold one lock: PyTorch already spreads one
forward over the CPU's cores, and interleaved forwards would only contend for them.
"""
from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Iterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from recbase.errors import UserError
from recbase.recommend import Catalog, Recommender, UnknownItems

log = logging.getLogger("recbase.serve")

MAX_HISTORY_ITEMS = 10_000
MAX_CANDIDATES = 10_000
MAX_K = 1_000


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: list[str] = Field(max_length=MAX_HISTORY_ITEMS, description="the user's item ids, oldest first")
    k: int = Field(10, ge=1, le=MAX_K, description="how many items to return")
    exclude_history: bool = Field(True, description="leave out items already in the history")


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: list[str] = Field(max_length=MAX_HISTORY_ITEMS, description="the user's item ids, oldest first")
    candidates: list[str] = Field(min_length=1, max_length=MAX_CANDIDATES, description="item ids to rank")


def _validation_message(error: dict) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
    return f"{where}: {error.get('msg', 'invalid')}"


def create_app(rec: Recommender, catalog: Catalog) -> FastAPI:
    app = FastAPI(title="recbase", description="Recommendations from a pretrained generative recommender")
    lock = threading.Lock()

    @app.middleware("http")
    async def log_latency(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        ms = (time.perf_counter() - start) * 1000
        log.info("%s %s %d %.1f ms", request.method, request.url.path, response.status_code, ms)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        return JSONResponse(status_code=422, content={"error": "; ".join(_validation_message(e) for e in errors),
                                                      "detail": [_validation_message(e) for e in errors]})

    @app.exception_handler(UnknownItems)
    async def unknown_items(request: Request, exc: UnknownItems):
        return JSONResponse(status_code=422, content={"error": str(exc), "field": exc.field, "unknown": exc.items})

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        return JSONResponse(status_code=422, content={"error": " ".join(str(exc).split())})

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": str(rec.model.path), "tokenizer_hash": rec.tokenizer.hash,
                "catalog": catalog.domain, "items": len(catalog), "device": str(rec.device)}

    @app.post("/recommend")
    def recommend(req: RecommendRequest) -> dict:
        start = time.perf_counter()
        with lock:
            found = rec.recommend(req.history, req.k, req.exclude_history, catalog)
        return {"items": [r.to_dict() for r in found], "took_ms": (time.perf_counter() - start) * 1000}

    @app.post("/score")
    def score(req: ScoreRequest) -> dict:
        start = time.perf_counter()
        with lock:
            found = rec.score(req.history, req.candidates, catalog)
        return {"items": [r.to_dict() for r in found], "took_ms": (time.perf_counter() - start) * 1000}

    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; ``port=0`` takes a free port (read it back with ``getsockname()``).

    It listens at once, so a client that connects before the server loop starts waits in the backlog.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def _server(app: FastAPI, sock: socket.socket, access_log: bool):
    import uvicorn

    host, port = sock.getsockname()[:2]
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, access_log=access_log, log_level="warning"))


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``app`` until interrupted; prints the address first (the bound port when ``port`` is 0)."""
    sock = bind(host, port)
    print(f"serving on http://{host}:{sock.getsockname()[1]} (POST /recommend, POST /score, GET /health)",
          flush=True)
    _server(app, sock, access_log=False).run(sockets=[sock])


@contextlib.contextmanager
def serving_in_thread(app: FastAPI, host: str = "127.0.0.1", startup_timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` on a free local port from a background thread; yields the base URL, stops on exit."""
    sock = bind(host, 0)
    server = _server(app, sock, access_log=False)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start within {startup_timeout:.0f} s")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
