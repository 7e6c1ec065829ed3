"""The web app: pages rendered from Jinja templates (autoescape on) and a small JSON API.

Pages get their data only through one `<script type="application/json" id="page-data">` block; the
JSON in it has `<`, `>` and `&` written as \\u003c, \\u003e, \\u0026, so no model output can close
the script element or start markup, whatever the text. The frontend renders every model text as
text nodes; the Content-Security-Policy below forbids inline scripts and anything from elsewhere.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from finegrain.annotate import auth, store
from finegrain.annotate.db import make_engine
from finegrain.annotate.validate import MAX_BODY_BYTES, Invalid
from finegrain.data.categories import DEFAULT_TAXONOMY, Taxonomy

HERE = Path(__file__).parent
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
    app.mount("/static", StaticFiles(directory=str(config.static_dir), check_dir=False), name="static")

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        if request.url.path.startswith("/api/") or request.url.path in ("/", "/admin") or request.url.path.startswith("/task/"):
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
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _Refused(_error(413, f"body: over the limit of {MAX_BODY_BYTES} bytes"))
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise _Refused(_error(400, f"body: not valid JSON ({err})")) from None

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
        form = await request.form()
        expected = request.cookies.get(auth.LOGIN_CSRF_COOKIE)
        if not auth.same_secret(str(form.get("csrf", "")), expected):
            csrf = secrets.token_urlsafe(24)
            error = "The login form expired; please try again."
            response = render("login.html", {"csrf": csrf, "error": error}, status=403, csrf=csrf, error=error)
            set_cookie(response, auth.LOGIN_CSRF_COOKIE, csrf, max_age=3600, path="/login")
            return response
        result = await run_in_threadpool(auth.login, engine, str(form.get("token", "")).strip())
        if result is None:
            error = "That token is not valid (or was revoked)."
            response = render("login.html", {"csrf": expected, "error": error}, status=401, csrf=expected, error=error)
            return response
        cookie, _ = result
        response = RedirectResponse("/", status_code=303)
        set_cookie(response, auth.SESSION_COOKIE, cookie, max_age=auth.SESSION_SECONDS)
        response.delete_cookie(auth.LOGIN_CSRF_COOKIE, path="/login")
        return response

    @app.post("/logout")
    async def logout(request: Request):
        csrf_form = None
        if request.headers.get("content-type", "").startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            csrf_form = str((await request.form()).get("csrf", ""))
        await post_session(request, csrf_form)
        await run_in_threadpool(auth.logout, engine, request.cookies.get(auth.SESSION_COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(auth.SESSION_COOKIE, path="/")
        return response

    # --- pages ------------------------------------------------------------------------------

    def queue_data(s: auth.Session) -> dict:
        tasks = store.queue(engine, s.user.id)
        done = sum(t["status"] == "done" for t in tasks)
        return {
            "user": s.user.name,
            "role": s.user.role,
            "tasks": tasks,
            "progress": {"done": done, "total": len(tasks)},
            "csrf_token": s.csrf_token,
        }

    def admin_data(s: auth.Session) -> dict:
        return {"user": s.user.name, "role": s.user.role, "csrf_token": s.csrf_token, **store.progress(engine)}

    @app.get("/")
    async def queue_page(request: Request):
        s = await session(request, page=True)
        return render("queue.html", await run_in_threadpool(queue_data, s))

    @app.get("/task/{task_id}")
    async def task_page(request: Request, task_id: int):
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

    # --- API --------------------------------------------------------------------------------

    @app.get("/api/queue")
    async def api_queue(request: Request):
        s = await session(request, page=False)
        return await run_in_threadpool(queue_data, s)

    @app.get("/api/admin/progress")
    async def api_progress(request: Request):
        s = await session(request, page=False)
        if not s.user.is_admin:
            return _error(403, "admins only")
        return await run_in_threadpool(admin_data, s)

    @app.get("/api/tasks/{task_id}")
    async def api_task(request: Request, task_id: int):
        s = await session(request, page=False)
        try:
            return await run_in_threadpool(store.task_json, engine, task_id, s.user.id, s.user.name, s.csrf_token, config.taxonomy)
        except store.NotFound as err:
            return _error(404, str(err))

    async def _write(request: Request, task_id: int, action) -> JSONResponse:
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
