"""The review page's web app (FastAPI, served by uvicorn): the page, the listed photos, the decisions, the exports.

Safe by default: it serves only the photos the folder lists (review_store.ReviewStore.photo_file); the page builds
every text with textContent and the one server-side value, the title, is escaped; a Content-Security-Policy lets
only the app's own script run; a decision is JSON (a form on another site cannot post one) of at most 64 KiB;
bound to a loopback address it answers only requests addressed to one (no DNS rebinding), and with a token (needed
on any other address) every request must carry it: in the address once (the page then keeps it in a cookie), or
as `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import html
import ipaddress
import secrets
import socket
import threading
from pathlib import Path
from string import Template
from typing import Literal
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.outputs.review_exports import captions_csv, preference_pairs, review_summary, write_summary
from alt_text_recipes.outputs.review_store import PhotoNotListed, PhotoRefused, ReviewConflict, ReviewStore

PAGE_FILES = Path(__file__).with_name("review_page")
MAX_BODY = 64 * 1024
TOKEN_COOKIE = "review_token"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class DecisionIn(BaseModel):
    name: str
    sha256: str
    decision: Literal["accepted", "edited", "rejected"]
    text: str | None = None


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_for(host: str, token: str | None) -> str | None:
    """The token requests must carry: the one given, or on a non-loopback address a new one."""
    return token if token or is_loopback(host) else secrets.token_urlsafe(24)


def create_app(
    store: ReviewStore, token: str | None = None, title: str = "Alt text review", local: bool = True
) -> FastAPI:
    """The app for `store`'s folder. `local`: bound to a loopback address (requests must be addressed to one)."""
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    summary_lock = threading.Lock()  # one summary written at a time (the file is replaced through a fixed name)

    @app.middleware("http")
    async def guard(request: Request, call_next) -> Response:
        if local and not is_loopback(urlsplit(f"//{request.headers.get('host', '')}").hostname or ""):
            return PlainTextResponse("this page answers only on the loopback address it was started on", 403)
        if token is not None and not carries_token(request, token):
            return PlainTextResponse("a token is needed: open the address review.py printed, with its ?token=", 401)
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        if token is not None and secrets.compare_digest(
            request.query_params.get("token", "").encode(), token.encode()
        ):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.get("/")
    def page() -> Response:
        text = Template((PAGE_FILES / "page.html").read_text(encoding="utf-8"))
        return Response(text.substitute(title=html.escape(title)), media_type="text/html; charset=utf-8")

    @app.get("/api/photos")
    def photos() -> dict:
        return {"title": title, "photos": store.state(), "summary": review_summary(store)}

    @app.post("/api/decisions")
    async def decide(request: Request) -> dict:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise HTTPException(415, "a decision is sent as application/json")
        try:
            decision = DecisionIn.model_validate_json(await capped_body(request))
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors())
            raise HTTPException(422, problems) from None
        return await run_in_threadpool(save, decision)  # it waits on locks and the disk: not in the event loop

    def save(decision: DecisionIn) -> dict:
        try:
            photo = store.record(decision.name, decision.sha256, decision.decision, decision.text)
        except ReviewConflict as error:
            raise HTTPException(409, str(error)) from None
        except RecipeError as error:
            raise HTTPException(422, str(error)) from None
        with summary_lock:
            summary = write_summary(store)
        return {"photo": photo, "summary": summary}

    @app.get("/photos/{name:path}")
    def photo(name: str) -> FileResponse:
        try:
            return FileResponse(store.photo_file(name))
        except PhotoRefused as error:
            raise HTTPException(404 if isinstance(error, PhotoNotListed) else 403, str(error)) from None

    @app.get("/export/captions.csv")
    def captions() -> Response:
        return download(captions_csv(store)[0], "reviewed-captions.csv", "text/csv")

    @app.get("/export/preferences.jsonl")
    def preferences() -> Response:
        return download(preference_pairs(store)[0], "preference-pairs.jsonl", "application/jsonl")

    @app.get("/review_summary.json")
    def summary() -> JSONResponse:
        return JSONResponse(review_summary(store))

    app.mount("/static", StaticFiles(directory=PAGE_FILES), name="static")
    return app


def carries_token(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    given = [
        request.query_params.get("token"),
        request.cookies.get(TOKEN_COOKIE),
        header.removeprefix("Bearer ") if header.startswith("Bearer ") else None,
    ]
    return any(value and secrets.compare_digest(value.encode(), token.encode()) for value in given)


async def capped_body(request: Request) -> bytes:
    """The request's body, refused past MAX_BODY whether it says its length or not (chunked)."""
    if int(request.headers.get("content-length") or 0) > MAX_BODY:
        raise HTTPException(413, f"a decision is at most {MAX_BODY // 1024} KiB")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise HTTPException(413, f"a decision is at most {MAX_BODY // 1024} KiB")
    return bytes(body)


def download(text: str, filename: str, media_type: str) -> Response:
    return Response(text, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def bound_socket(host: str, port: int) -> socket.socket:
    """A listening socket on `host`:`port` (0: a free port), bound before the server starts so that the address
    to open is known (and printed) first."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as error:
        sock.close()
        raise RecipeError(f"cannot serve on {host}:{port} ({error.strerror}); --port 0 takes a free port.") from None
    return sock


def make_server(app: FastAPI, log_level: str = "info") -> uvicorn.Server:
    """A uvicorn server for `app`; run it with `server.run(sockets=[bound_socket(...)])`, stop it with
    `server.should_exit = True`."""
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off"))


def address(sock: socket.socket, token: str | None) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/" + (f"?token={token}" if token else "")
