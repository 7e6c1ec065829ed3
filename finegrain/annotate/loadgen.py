"""A bounded load loop against a real server on loopback: the reliability test and the benchmark.

N annotators (threads, one httpx client each) log in and submit their assigned tasks, one request
at a time each, every request with its own idempotency key. A client whose request fails at the
transport level (the server was killed) retries the same body with the same key until it is
answered, so a submission that was stored but never acknowledged is answered from the store rather
than stored twice. `kill_after` kills the server (SIGKILL) once that many submissions have been
acknowledged, and starts it again on the same port.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from finegrain.annotate import auth, db, store
from finegrain.data.records import Example, Response


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`finegrain annotate serve` in a subprocess (uvicorn, one process)."""

    def __init__(self, db_url: str, port: int, log: Path | None = None):
        self.db_url, self.port, self.log = db_url, port, log
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        cmd = [sys.executable, "-c", "import sys; from finegrain.cli import main; sys.exit(main())",
               "annotate", "serve", "--db", self.db_url, "--port", str(self.port)]
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} (log: {self.log})")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not answer on {self.base_url} within {timeout} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def setup(db_url: str, annotators: int, per_annotator: int) -> dict[str, str]:
    """A fresh database: `annotators` users, `per_annotator` one-response tasks assigned to each.
    Returns name -> token."""
    engine = db.make_engine(db_url)
    tokens = {f"load{i:02d}": auth.create_token(engine, f"load{i:02d}") for i in range(annotators)}
    examples = [Example(f"load-{j}", f"Question {j}?", (Response(f"Answer {j} is right. It is wrong."),)) for j in range(per_annotator)]
    store.import_examples(engine, examples, annotate="first", compare=False)
    store.assign(engine)
    engine.dispose()
    return tokens


@dataclass
class LoadResult:
    acknowledged: dict[tuple[str, str], int] = field(default_factory=dict)  # (user, key) -> record_id
    latencies: list[float] = field(default_factory=list)  # seconds, acknowledged requests only
    retries: int = 0
    duplicates_answered: int = 0  # deliberate repeats that got the first answer back
    errors: list[str] = field(default_factory=list)
    wall: float = 0.0

    @property
    def throughput(self) -> float:
        return len(self.acknowledged) / self.wall if self.wall else 0.0

    def percentile(self, q: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def _login(client: httpx.Client, token: str) -> str:
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = client.post("/login", data={"token": token, "csrf": csrf})
    if r.status_code != 303:
        raise RuntimeError(f"login failed: {r.status_code} {r.text[:200]}")
    return client.get("/api/queue").json()["csrf_token"]


def run_load(server: ServerProcess, tokens: dict[str, str], *, kill_after: int | None = None, repeat_every: int = 10,
             deadline_s: float = 300.0) -> LoadResult:
    result = LoadResult()
    lock = threading.Lock()
    killed = threading.Event()
    deadline = time.monotonic() + deadline_s

    def send(client: httpx.Client, url: str, body: dict | None = None, csrf: str = "") -> dict:
        """POST `body` (GET when None) until answered: the server may be down for a moment."""
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: no answer before the deadline")
            try:
                if body is None:
                    r = client.get(url)
                else:
                    r = client.post(url, json=body, headers={"X-CSRF-Token": csrf})
            except httpx.TransportError:
                with lock:
                    result.retries += 1
                time.sleep(0.05)
                continue
            if r.status_code != 200:
                raise RuntimeError(f"{url}: {r.status_code} {r.text[:200]}")
            return r.json()

    def annotator(name: str, token: str) -> None:
        try:
            with httpx.Client(base_url=server.base_url, headers={"Origin": server.base_url}, timeout=30.0) as client:
                csrf = _login(client, token)
                tasks = send(client, "/api/queue")["tasks"]
                for n, t in enumerate(tasks):
                    task = send(client, f"/api/tasks/{t['id']}")
                    text = task["responses"][0]["text"]
                    cut = text.index("It is")
                    body = {"response_index": task["responses"][0]["index"], "no_error": False, "corrected": None,
                            "spans": [{"start": cut, "end": len(text), "category": "Wrong-Grounding", "text": text[cut:]}],
                            "missing": [], "idempotency_key": f"{name}-{t['id']}", "base_version": task["version"]}
                    t0 = time.perf_counter()
                    answer = send(client, f"/api/tasks/{t['id']}/submit", body, csrf)
                    elapsed = time.perf_counter() - t0
                    if repeat_every and n % repeat_every == 0:  # a client that never saw the answer resends
                        again = send(client, f"/api/tasks/{t['id']}/submit", body, csrf)
                        if again != answer:
                            raise RuntimeError(f"repeat of {body['idempotency_key']} answered {again}, first {answer}")
                        with lock:
                            result.duplicates_answered += 1
                    with lock:
                        result.acknowledged[(name, body["idempotency_key"])] = answer["record_id"]
                        result.latencies.append(elapsed)
                        if kill_after is not None and len(result.acknowledged) >= kill_after and not killed.is_set():
                            killed.set()
                            threading.Thread(target=_crash_and_restart, daemon=True).start()
        except Exception as err:  # noqa: BLE001 - reported to the caller, who fails on any
            with lock:
                result.errors.append(f"{name}: {type(err).__name__}: {err}")

    def _crash_and_restart() -> None:
        server.kill()
        server.start()

    threads = [threading.Thread(target=annotator, args=(n, t)) for n, t in tokens.items()]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    result.wall = time.perf_counter() - t0
    return result


def stored(db_url: str) -> dict[tuple[str, str], int]:
    """(user, idempotency key) -> record id of every stored submission."""
    from sqlalchemy import select

    engine = db.make_engine(db_url)
    with db.read_tx(engine) as conn:
        rows = conn.execute(
            select(db.users.c.name, db.submissions.c.idempotency_key, db.submissions.c.id).join(
                db.users, db.users.c.id == db.submissions.c.user_id
            )
        ).all()
    engine.dispose()
    out: dict[tuple[str, str], int] = {}
    for name, key, rid in rows:
        if (name, key) in out:
            raise AssertionError(f"submission {key} of {name} stored twice")
        out[(name, key)] = rid
    return out
