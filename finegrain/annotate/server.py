"""The web app: pages rendered from Jinja templates (autoescape on) and a small JSON API.

Pages get their data only through one `<script type="application/json" id="page-data">` block; the
JSON in it has `<`, `>` and `&` written as \\u003c, \\u003e, \\u0026, so no model output can close
the script element or start markup, whatever the text. The frontend renders every model text as
text nodes; the Content-Security-Policy below forbids inline scripts and anything from elsewhere.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import parse_qs
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from finegrain.annotate import auth, review, store
from finegrain.annotate.db import make_engine
from finegrain.annotate.validate import MAX_BODY_BYTES, Invalid
from finegrain.data.categories import DEFAULT_TAXONOMY, Taxonomy

HERE = Path(__file__).parent
log = logging.getLogger("finegrain.annotate")
MAX_FORM_BYTES = 4096  # /login and /logout: a token and a CSRF value
MAX_ID = 2**62  # ids and versions beyond this are answered 404/422 before they reach the database
LOGIN_FAILURES = 10  # bad logins allowed per client address ...
LOGIN_WINDOW_S = 60.0  # ... in this many seconds; more are answered 429 without a database lookup
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


@dataclass
class ServerConfig:
    db_url: str = "sqlite:///annotations.db"
    trusted_origins: tuple[str, ...] = ()  # extra origins a POST may come from (a proxy's public origin)
    secure_cookies: bool = False  # set the cookies' Secure flag (serve over HTTPS, or behind a TLS proxy)
    templates_dir: Path = field(default_factory=lambda: HERE / "templates")
    static_dir: Path = field(default_factory=lambda: HERE / "static")
    taxonomy: Taxonomy = DEFAULT_TAXONOMY
    login_failures: int = LOGIN_FAILURES
    login_window_s: float = LOGIN_WINDOW_S


class LoginLimiter:
    """Bad logins per client address in a sliding window; over the limit, logins are refused (429)
    until the oldest failure leaves the window. Tokens are 256-bit, so this is not about guessing
    them: it keeps a burst of bad requests from costing the annotators anything, and logs it."""

    def __init__(self, limit: int, window_s: float):
        self.limit, self.window_s = limit, window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        q = self._failures.setdefault(client, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def retry_after(self, client: str) -> float:
        """Seconds until this client may try again; 0 when it may now."""
        now = time.monotonic()
        with self._lock:
            q = self._recent(client, now)
            return 0.0 if len(q) < self.limit else q[0] + self.window_s - now

    def failed(self, client: str) -> int:
        now = time.monotonic()
        with self._lock:
            q = self._recent(client, now)
            q.append(now)
            if len(self._failures) > 10_000:  # forget idle clients
                for k in [k for k, v in self._failures.items() if not v]:
                    del self._failures[k]
            return len(q)


def page_json(data: Any) -> Markup:
    """JSON safe to place inside a <script> element: no `<`, `>` or `&` survives, so neither
    `</script>` nor `<!--` can appear, and HTML-escaping it would only corrupt the JSON."""
    text = json.dumps(data, ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return Markup(text)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Refused(Exception):
    def __init__(self, response: Response):
        self.response = response


def create_app(config: ServerConfig, engine: Engine | None = None) -> FastAPI:
    engine = engine if engine is not None else make_engine(config.db_url)
    trusted = frozenset(auth.normalise_origin(o) for o in config.trusted_origins)
    templates = Environment(loader=FileSystemLoader(str(config.templates_dir)), autoescape=True)
    app = FastAPI(title="finegrain annotate", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    limiter = LoginLimiter(config.login_failures, config.login_window_s)
    app.mount("/static", StaticFiles(directory=str(config.static_dir), check_dir=False), name="static")

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        path = request.url.path
        if path.startswith(("/api/", "/task/", "/review")) or path in ("/", "/admin"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(_Refused)
    async def _refused(_request: Request, exc: _Refused):
        return exc.response

    def render(name: str, data: dict, status: int = 200, **context: Any) -> HTMLResponse:
        html = templates.get_template(name).render(data_json=page_json(data), **context)
        return HTMLResponse(html, status_code=status)

    def set_cookie(response: Response, name: str, value: str, *, max_age: int | None, path: str = "/") -> None:
        response.set_cookie(
            name, value, max_age=max_age, path=path, httponly=True, samesite="strict", secure=config.secure_cookies
        )

    def own_origin(request: Request) -> str:
        host = request.headers.get("host", "")
        try:
            return auth.normalise_origin(f"{request.url.scheme}://{host}")
        except Exception:
            return ""

    def check_origin(request: Request, api: bool) -> None:
        if not auth.origin_allowed(request.headers.get("origin"), request.headers.get("referer"), own_origin(request), trusted):
            msg = "origin: this POST does not come from this server's origin (behind a proxy, start the server with --trusted-origin)"
            raise _Refused(_error(403, msg) if api else HTMLResponse(msg, status_code=403))

    async def session(request: Request, *, page: bool) -> auth.Session:
        found = await run_in_threadpool(auth.lookup_session, engine, request.cookies.get(auth.SESSION_COOKIE))
        if found is None:
            if page:
                raise _Refused(RedirectResponse("/login", status_code=303))
            raise _Refused(_error(401, "not logged in: exchange your token at /login"))
        return found

    async def post_session(request: Request, csrf_form: str | None = None) -> auth.Session:
        check_origin(request, api=True)
        s = await session(request, page=False)
        given = request.headers.get("x-csrf-token") or csrf_form
        if not auth.same_secret(given, s.csrf_token):
            raise _Refused(_error(403, "X-CSRF-Token: missing or not this session's token (reload the page)"))
        return s

    async def read_json(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise _Refused(_error(413, f"body: {declared} bytes is over the limit of {MAX_BODY_BYTES}"))
        raw = await read_body(request, MAX_BODY_BYTES)
        try:
            return json.loads(raw)
        except ValueError as err:  # malformed JSON, bad UTF-8, an integer of more than 4,300 digits
            raise _Refused(_error(400, f"body: not valid JSON ({str(err)[:200]})")) from None
        except RecursionError:
            raise _Refused(_error(400, "body: JSON nested too deeply")) from None

    async def read_body(request: Request, limit: int) -> bytes:
        """The body, refused with 413 as soon as it is over `limit` (declared or streamed)."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise _Refused(_error(413, f"body: {declared} bytes is over the limit of {limit}"))
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _Refused(_error(413, f"body: over the limit of {limit} bytes"))
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_form(request: Request) -> dict[str, str]:
        """A small url-encoded form (login, logout), size-checked before it is parsed."""
        raw = await read_body(request, MAX_FORM_BYTES)
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return {}
        try:
            parsed = parse_qs(raw.decode("utf-8"), max_num_fields=8)
        except (UnicodeDecodeError, ValueError):
            raise _Refused(_error(400, "body: not a valid form")) from None
        return {k: v[0] for k, v in parsed.items()}

    def client_of(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def check_id(value: int, what: str = "task") -> None:
        if not 0 < value < MAX_ID:
            raise _Refused(_error(404, f"{what} {value}: no such {what}"))

    # --- login ------------------------------------------------------------------------------

    @app.get("/healthz")
    async def healthz():
        return {"ok": True}

    @app.get("/login")
    async def login_page(request: Request):
        csrf = secrets.token_urlsafe(24)
        response = render("login.html", {"csrf": csrf, "error": None}, csrf=csrf, error=None)
        set_cookie(response, auth.LOGIN_CSRF_COOKIE, csrf, max_age=3600, path="/login")
        return response

    @app.post("/login")
    async def login(request: Request):
        check_origin(request, api=False)
        client = client_of(request)
        wait = limiter.retry_after(client)
        if wait > 0:
            log.warning("login: refused from %s, too many bad logins (retry in %.0f s)", client, wait)
            response = HTMLResponse(f"Too many failed logins from your address; try again in {int(wait) + 1} s.", status_code=429)
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        form = await read_form(request)
        expected = request.cookies.get(auth.LOGIN_CSRF_COOKIE)
        if not auth.same_secret(str(form.get("csrf", "")), expected):
            csrf = secrets.token_urlsafe(24)
            error = "The login form expired; please try again."
            response = render("login.html", {"csrf": csrf, "error": error}, status=403, csrf=csrf, error=error)
            set_cookie(response, auth.LOGIN_CSRF_COOKIE, csrf, max_age=3600, path="/login")
            return response
        result = await run_in_threadpool(auth.login, engine, str(form.get("token", "")).strip())
        if result is None:
            n = limiter.failed(client)
            log.warning("login: bad or revoked token from %s (%d in the last %.0f s)", client, n, config.login_window_s)
            error = "That token is not valid (or was revoked)."
            response = render("login.html", {"csrf": expected, "error": error}, status=401, csrf=expected, error=error)
            return response
        cookie, sess = result
        log.info("login: %s (%s) from %s", sess.user.name, sess.user.role, client)
        response = RedirectResponse({"admin": "/admin", "reviewer": "/review"}.get(sess.user.role, "/"), status_code=303)
        set_cookie(response, auth.SESSION_COOKIE, cookie, max_age=auth.SESSION_SECONDS)
        response.delete_cookie(auth.LOGIN_CSRF_COOKIE, path="/login")
        return response

    @app.post("/logout")
    async def logout(request: Request):
        form = await read_form(request)
        await post_session(request, form.get("csrf"))
        await run_in_threadpool(auth.logout, engine, request.cookies.get(auth.SESSION_COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(auth.SESSION_COOKIE, path="/")
        return response

    # --- pages ------------------------------------------------------------------------------

    def queue_params(request: Request) -> dict:
        """?status=todo|draft|done &kind=annotate|compare &q=text &page=N; refused with 422 when bad."""
        q = request.query_params
        status, kind = q.get("status") or None, q.get("kind") or None
        if status is not None and status not in store.QUEUE_STATUSES:
            raise _Refused(_error(422, f"status: {status[:40]!r} is not one of {', '.join(store.QUEUE_STATUSES)}"))
        if kind is not None and kind not in store.TASK_KINDS:
            raise _Refused(_error(422, f"kind: {kind[:40]!r} is not one of {', '.join(store.TASK_KINDS)}"))
        text = q.get("q", "")
        if len(text) > 200:
            raise _Refused(_error(422, "q: longer than 200 characters"))
        page = q.get("page", "1")
        if not page.isdigit() or not 1 <= int(page) <= 1_000_000:
            raise _Refused(_error(422, f"page: {page[:40]!r} is not a page number"))
        return {"status": status, "kind": kind, "text": text, "page": int(page)}

    def queue_data(s: auth.Session, params: dict | None = None) -> dict:
        found = store.queue_page(engine, s.user.id, **(params or {}))
        return {"user": s.user.name, "role": s.user.role, "csrf_token": s.csrf_token, **found}

    def admin_data(s: auth.Session) -> dict:
        from finegrain.annotate.agreement import agreement_by

        return {"user": s.user.name, "role": s.user.role, "csrf_token": s.csrf_token, **store.progress(engine),
                "agreement": agreement_by(engine, "annotator"), "review_tasks": len(review.review_queue(engine))}

    def need_role(s: auth.Session, roles: tuple[str, ...], api: bool) -> None:
        if s.user.role not in roles:
            msg = f"{' or '.join(roles)} only"
            raise _Refused(_error(403, msg) if api else HTMLResponse(msg, status_code=403))

    @app.get("/")
    async def queue_page(request: Request):
        s = await session(request, page=True)
        data = await run_in_threadpool(queue_data, s, queue_params(request))
        if s.user.role != "annotator" and data["progress"]["total"] == 0:
            return RedirectResponse("/admin" if s.user.is_admin else "/review", status_code=303)
        return render("queue.html", data)

    @app.get("/task/{task_id}")
    async def task_page(request: Request, task_id: int):
        check_id(task_id)
        s = await session(request, page=True)
        try:
            data = await run_in_threadpool(store.task_json, engine, task_id, s.user.id, s.user.name, s.csrf_token, config.taxonomy)
        except store.NotFound as err:
            return HTMLResponse(str(err), status_code=404)
        return render("annotate.html" if data["kind"] == "annotate" else "compare.html", data)

    @app.get("/admin")
    async def admin_page(request: Request):
        s = await session(request, page=True)
        if not s.user.is_admin:
            return HTMLResponse("admins only", status_code=403)
        return render("admin.html", await run_in_threadpool(admin_data, s))

    @app.get("/review")
    async def review_list_page(request: Request):
        s = await session(request, page=True)
        need_role(s, review.REVIEW_ROLES, api=False)
        tasks = await run_in_threadpool(review.review_queue, engine)
        return render("review.html", {"user": s.user.name, "role": s.user.role, "csrf_token": s.csrf_token, "tasks": tasks})

    @app.get("/review/{task_id}")
    async def merge_page(request: Request, task_id: int):
        check_id(task_id)
        s = await session(request, page=True)
        need_role(s, review.REVIEW_ROLES, api=False)
        try:
            data = await run_in_threadpool(review.review_json, engine, task_id, s.csrf_token, config.taxonomy)
        except store.NotFound as err:
            return HTMLResponse(str(err), status_code=404)
        return render("merge.html", {**data, "user": s.user.name, "role": s.user.role})

    # --- API --------------------------------------------------------------------------------

    @app.get("/api/review")
    async def api_review_list(request: Request):
        s = await session(request, page=False)
        need_role(s, review.REVIEW_ROLES, api=True)
        return {"tasks": await run_in_threadpool(review.review_queue, engine), "csrf_token": s.csrf_token}

    @app.get("/api/review/{task_id}")
    async def api_review(request: Request, task_id: int):
        check_id(task_id)
        s = await session(request, page=False)
        need_role(s, review.REVIEW_ROLES, api=True)
        try:
            return await run_in_threadpool(review.review_json, engine, task_id, s.csrf_token, config.taxonomy)
        except store.NotFound as err:
            return _error(404, str(err))

    @app.post("/api/review/{task_id}/adjudicate")
    async def api_adjudicate(request: Request, task_id: int):
        check_id(task_id)
        s = await post_session(request)
        need_role(s, review.REVIEW_ROLES, api=True)
        body = await read_json(request)
        try:
            stored = await run_in_threadpool(review.adjudicate, engine, task_id, s.user.id, body, config.taxonomy)
        except Invalid as err:
            return _error(422, str(err))
        except store.NotFound as err:
            return _error(404, str(err))
        except store.Conflict as err:
            return _error(409, str(err))
        log.info("adjudicated: task %d version %d by %s", task_id, stored.version, s.user.name)
        return {"version": stored.version, "record_id": stored.record_id}

    @app.get("/api/admin/agreement")
    async def api_agreement(request: Request):
        from finegrain.annotate.agreement import agreement, agreement_by

        s = await session(request, page=False)
        need_role(s, ("admin",), api=True)
        by = request.query_params.get("by")
        if by is None:
            return await run_in_threadpool(agreement, engine, config.taxonomy)
        if by not in ("item", "annotator"):
            return _error(422, f"by: {by[:40]!r} is not one of item, annotator")
        return {"by": by, "rows": await run_in_threadpool(agreement_by, engine, by, config.taxonomy)}

    @app.get("/api/admin/export")
    async def api_export(request: Request):
        from finegrain.annotate.export import build_checked
        from finegrain.data.jsonl import to_jsonl_line

        s = await session(request, page=False)
        need_role(s, ("admin",), api=True)
        which = request.query_params.get("adjudicated", "with")
        if which not in ("with", "only", "without"):
            return _error(422, f"adjudicated: {which[:40]!r} is not one of with, only, without")
        examples, skipped = await run_in_threadpool(lambda: build_checked(engine, taxonomy=config.taxonomy, adjudicated=which))
        body = "".join(to_jsonl_line(ex) for ex in examples).encode("utf-8")
        log.info("export: %d records by %s (%d skipped)", len(examples), s.user.name, len(skipped))
        return Response(body, media_type="application/x-ndjson", headers={
            "Content-Disposition": 'attachment; filename="feedback.jsonl"', "X-Records": str(len(examples)),
            "X-Skipped": str(len(skipped))})

    @app.post("/api/admin/tokens")
    async def api_token_create(request: Request):
        """The CLI's `token create`, with the same checks (auth.create_token); the token is shown once."""
        from finegrain.config import ConfigError

        s = await post_session(request)
        need_role(s, ("admin",), api=True)
        body = await read_json(request)
        if not isinstance(body, dict) or set(body) - {"name", "role"} or not isinstance(body.get("name"), str):
            return _error(422, 'body: expected {"name": "...", "role": "annotator|reviewer|admin"}')
        role = body.get("role", "annotator")
        try:
            token = await run_in_threadpool(auth.create_token, engine, body["name"], role if isinstance(role, str) else repr(role))
        except ConfigError as err:
            return _error(422, str(err))
        log.info("token: created for %s (%s) by %s", body["name"], role, s.user.name)
        return {"name": body["name"], "role": role, "token": token}

    @app.post("/api/admin/tokens/revoke")
    async def api_token_revoke(request: Request):
        from finegrain.config import ConfigError

        s = await post_session(request)
        need_role(s, ("admin",), api=True)
        body = await read_json(request)
        if not isinstance(body, dict) or set(body) != {"name"} or not isinstance(body["name"], str):
            return _error(422, 'body: expected {"name": "..."}')
        if body["name"] == s.user.name:
            return _error(422, "name: you cannot revoke your own token here (another admin, or the CLI, can)")
        try:
            await run_in_threadpool(auth.revoke_token, engine, body["name"])
        except ConfigError as err:
            return _error(422, str(err))
        log.info("token: revoked %s by %s", body["name"], s.user.name)
        return {"revoked": body["name"]}

    @app.get("/api/queue")
    async def api_queue(request: Request):
        s = await session(request, page=False)
        return await run_in_threadpool(queue_data, s, queue_params(request))

    @app.get("/api/admin/progress")
    async def api_progress(request: Request):
        s = await session(request, page=False)
        if not s.user.is_admin:
            return _error(403, "admins only")
        return await run_in_threadpool(admin_data, s)

    @app.get("/api/tasks/{task_id}")
    async def api_task(request: Request, task_id: int):
        check_id(task_id)
        s = await session(request, page=False)
        try:
            return await run_in_threadpool(store.task_json, engine, task_id, s.user.id, s.user.name, s.csrf_token, config.taxonomy)
        except store.NotFound as err:
            return _error(404, str(err))

    async def _write(request: Request, task_id: int, action) -> JSONResponse:
        check_id(task_id)
        s = await post_session(request)
        body = await read_json(request)
        try:
            result = await run_in_threadpool(action, engine, task_id, s.user.id, s.user.name, body, config.taxonomy)
        except Invalid as err:
            return _error(422, str(err))
        except store.NotFound as err:
            return _error(404, str(err))
        except store.Conflict as err:
            return _error(409, str(err))
        if isinstance(result, store.Stored):
            return JSONResponse({"version": result.version, "record_id": result.record_id})
        return JSONResponse({"saved": True})

    @app.post("/api/tasks/{task_id}/submit")
    async def api_submit(request: Request, task_id: int):
        return await _write(request, task_id, store.submit)

    @app.post("/api/tasks/{task_id}/draft")
    async def api_draft(request: Request, task_id: int):
        return await _write(request, task_id, store.save_draft)

    return app
