"""The annotation app in a real headless Chromium (Debian's `chromium`, driven by Playwright).

The server is the real one: `finegrain annotate serve` in a subprocess on a free port with a
temporary SQLite database, tasks imported and tokens created through the CLI. The tests log in
with a token, mark spans with the mouse and the keyboard, submit, and read the result back from
`finegrain annotate export`.

`FINEGRAIN_SCREENSHOTS=docs/screenshots pytest tests/test_browser.py` also saves a screenshot of
every page (the README shows them).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

# The arguments the project uses for the system Chromium: no network of its own, no updates.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Emoji before and inside the spans: UTF-16 offsets and code-point offsets differ here.
EMOJI_RESPONSE = (
    "The capital of France 🇫🇷 is Rome, and the Eiffel Tower 🗼 was built from 1887 to 1889. "
    "Many tourists 😍 love taking photos there."
)
XSS = "<script>alert(1)</script><img src=x onerror=alert(2)>"
XSS_RESPONSE = XSS + " Tom & Jerry &amp; friends."

QA_EXAMPLE = {
    "schema": "finegrain.feedback",
    "version": 1,
    "id": "qa-eiffel",
    "prompt": "What is the capital of France, and when was the Eiffel Tower built?",
    "passages": [
        {
            "title": "Paris",
            "sentences": [
                "Paris is the capital and most populous city of France.",
                "It has been a centre of finance, diplomacy, commerce and the arts since the 17th century.",
            ],
        },
        {
            "title": "Eiffel Tower",
            "sentences": [
                "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris.",
                "It was constructed from 1887 to 1889 as the centrepiece of the 1889 World's Fair.",
                "It is named after the engineer Gustave Eiffel, whose company designed and built it.",
            ],
        },
    ],
    "responses": [
        {"text": EMOJI_RESPONSE, "annotation": None},
        {"text": "The capital of France is Paris. The Eiffel Tower was built from 1887 to 1889.", "annotation": None},
        {
            "text": "Paris is the capital of France; the Eiffel Tower was finished in 1889 for the World's Fair.",
            "annotation": None,
        },
    ],
}
XSS_EXAMPLE = {
    "schema": "finegrain.feedback",
    "version": 1,
    "id": "qa-xss",
    "prompt": "Is <b>this</b> bold? " + XSS,
    "passages": [{"title": "<i>Markup</i>", "sentences": ["A sentence with " + XSS + " inside."]}],
    "responses": [
        {"text": XSS_RESPONSE, "annotation": None},
        {"text": "</script><script>alert(3)</script> plain text", "annotation": None},
    ],
}


# Right to left: a Hebrew question, passage and four responses (numbers and Latin inside).
RTL_RESPONSE = "הבירה של צרפת היא רומא. מגדל אייפל נבנה בשנת 1889 (Eiffel)."
RTL_EXAMPLE = {
    "schema": "finegrain.feedback",
    "version": 1,
    "id": "qa-rtl",
    "prompt": "מהי בירת צרפת?",
    "passages": [{"title": "פריז", "sentences": ["פריז היא בירת צרפת.", "מגדל אייפל נבנה בשנים 1887 עד 1889."]}],
    "responses": [
        {"text": RTL_RESPONSE, "annotation": None},
        {"text": "פריז.", "annotation": None},
        {"text": "הבירה היא פריז, ומגדל אייפל נמצא בה.", "annotation": None},
        {"text": "אני לא יודע.", "annotation": None},
    ],
}


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "no system Chromium: the browser tests need Debian's `chromium` package "
        "(`make test` installs it with apt-get when it runs as root; otherwise `apt-get install chromium`)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "finegrain.cli", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"finegrain {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


class App:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.db = f"sqlite:///{tmp / 'app.db'}"
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"

    def export(self) -> list[dict]:
        out = self.tmp / "export.jsonl"
        _cli("annotate", "export", "--db", self.db, "--out", str(out), "--force")
        return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    chromium = _chromium()
    tmp = tmp_path_factory.mktemp("annotate-browser")
    a = App(tmp)
    a.chromium = chromium
    tasks = tmp / "tasks.jsonl"
    examples = (QA_EXAMPLE, XSS_EXAMPLE, RTL_EXAMPLE)
    tasks.write_text("".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples), "utf-8")
    a.token = _cli("annotate", "token", "create", "alice", "--db", a.db, "--create").strip()
    a.admin_token = _cli("annotate", "token", "create", "boss", "--role", "admin", "--db", a.db).strip()
    a.reviewer_token = _cli("annotate", "token", "create", "rita", "--role", "reviewer", "--db", a.db).strip()
    _cli("annotate", "import", str(tasks), "--db", a.db)
    _cli("annotate", "assign", "--db", a.db, "--annotators", "alice")
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "finegrain.cli", "annotate", "serve", "--db", a.db, "--port", str(a.port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120  # a loaded machine takes a while to import the app
        while True:
            try:
                with urllib.request.urlopen(a.base + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the server did not start:\n{(tmp / 'server.log').read_text()}")
                time.sleep(0.2)
        yield a
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def browser(app):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=app.chromium, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page:
    """A logged-in tab that fails the test on any script error or dialog."""

    def __init__(self, browser, app, token: str):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))

        def on_dialog(d):
            self.dialogs.append(d.message)
            d.dismiss()

        self.page.on("dialog", on_dialog)
        self.app = app
        self.page.goto(app.base + "/login")
        if token == app.token:
            shoot(self.page, "login")
        self.page.fill("#token", token)
        self.page.click("form button[type=submit]")
        self.page.wait_for_url(lambda url: "/login" not in url)  # the queue, or /admin, /review for staff

    def task_url(self, example_title_part: str, kind: str) -> str:
        queue = self.page.request.get(self.app.base + "/api/queue").json()
        (task,) = [t for t in queue["tasks"] if t["kind"] == kind and example_title_part in t["title"]]
        return self.app.base + task["url"]

    def close(self):
        assert not self.errors, f"script errors in the page: {self.errors}"
        assert not self.dialogs, f"dialogs opened: {self.dialogs}"
        self.context.close()


def shoot(page, name: str) -> None:
    folder = os.environ.get("FINEGRAIN_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


# Screen coordinates of the characters [start, end) (UTF-16 indices) of an element's text.
_RECT_JS = """([selector, start, end]) => {
  const box = document.querySelector(selector);
  const walker = document.createTreeWalker(box, NodeFilter.SHOW_TEXT);
  const locate = (i) => {
    let node;
    while ((node = walker.nextNode())) {
      if (i < node.length) return [node, i];
      i -= node.length;
    }
    throw new Error('offset outside the text');
  };
  const rect = (i) => {
    walker.currentNode = box;
    const [node, off] = locate(i);
    const r = document.createRange();
    r.setStart(node, off);
    r.setEnd(node, off + 1);
    const b = r.getClientRects()[0];
    return {left: b.left, right: b.right, mid: (b.left + b.right) / 2, y: (b.top + b.bottom) / 2};
  };
  return {first: rect(start), last: rect(end - 1)};
}"""


def utf16(text: str, cp: int) -> int:
    return len(text[:cp].encode("utf-16-le")) // 2


def drag(page, selector: str, text: str, quote: str, *, from_middle: bool = False, shift: bool = False) -> None:
    """Select `quote` in the element with a mouse drag: press on its first character (near its left
    edge, or its middle to start inside the word) and release near the right edge of its last one."""
    start = text.index(quote)
    rects = page.evaluate(_RECT_JS, [selector, utf16(text, start), utf16(text, start + len(quote))])
    first, last = rects["first"], rects["last"]
    # Whole pixels, as a real mouse reports: this Chromium does not extend a selection when a drag
    # starts at a point whose x and y are both fractional.
    x0 = round(first["mid"] if from_middle else first["left"] + 2)
    page.mouse.move(x0, round(first["y"]))
    page.mouse.down()
    page.mouse.move(round(last["right"] - 2), round(last["y"]), steps=8)
    if shift:
        page.keyboard.down("Shift")
    page.mouse.up()
    if shift:
        page.keyboard.up("Shift")


def key_of(page, category: str) -> str:
    return page.text_content(f'button[data-category="{category}"] kbd').strip()


def test_select_span_with_mouse_category_key_submit_and_export(app, browser):
    tab = Page(browser, app, app.token)
    page = tab.page
    page.goto(tab.task_url("Eiffel", "annotate"))
    assert page.text_content("#response") == EMOJI_RESPONSE

    # 1. "Rome": drag from inside the word to just past the comma; snapping gives exactly "Rome".
    drag(page, "#response", EMOJI_RESPONSE, "ome,", from_middle=True)
    assert page.text_content("#response mark.pending") == "Rome"
    page.keyboard.press(key_of(page, "Wrong-Grounding"))
    # 2. A span holding an emoji, its trailing full stop trimmed.
    drag(page, "#response", EMOJI_RESPONSE, "Many tourists 😍 love taking photos there.")
    page.keyboard.press(key_of(page, "Irrelevant"))
    # 3. Undo / redo of the last span.
    drag(page, "#response", EMOJI_RESPONSE, "built")
    page.keyboard.press(key_of(page, "Redundant"))
    assert page.locator("#span-list li").count() == 3
    page.keyboard.press("Control+z")
    assert page.locator("#span-list li").count() == 2
    page.keyboard.press("Control+y")
    assert page.locator("#span-list li").count() == 3
    page.keyboard.press("Control+z")
    marks = page.locator("#response mark.span")
    assert marks.all_text_contents() == ["Rome", "Many tourists 😍 love taking photos there"]
    # Each category looks different: its own class (pattern, underline style) and label.
    assert marks.nth(0).get_attribute("class") != marks.nth(1).get_attribute("class")
    assert marks.nth(0).get_attribute("data-label").endswith("Wrong-Grounding")
    # 4. Missing information: one click on passage 1, sentence 1 makes a note with that evidence.
    page.click('.sent[data-p="1"][data-s="1"]')
    assert "passage 1, sentence 1" in page.text_content("#missing-list")
    # 5. Correct the response; the draft is saved and says so.
    corrected = EMOJI_RESPONSE.replace("Rome", "Paris").replace(" Many tourists 😍 love taking photos there.", "")
    # wait for the draft that holds the correction (an earlier "Draft saved" may still be shown)
    with page.expect_response(lambda r: r.url.endswith("/draft") and "is Paris" in (r.request.post_data or ""), timeout=20_000):
        page.fill("#corrected", corrected)
    page.wait_for_selector("#draft-status.status-ok", timeout=10_000)
    assert "Draft saved" in page.text_content("#draft-status")
    # 6. A reload brings the draft back: spans, the note and the correction.
    page.reload()
    assert page.locator("#response mark.span").all_text_contents() == ["Rome", "Many tourists 😍 love taking photos there"]
    assert "passage 1, sentence 1" in page.text_content("#missing-list")
    assert page.locator("#corrected").input_value() == corrected
    assert page.locator(".sent.attached").all_text_contents() == ["1.1Paris is the capital and most populous city of France."]
    shoot(page, "annotate")
    # 7. Submit with Ctrl+Enter.
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#submit-status.status-ok", timeout=10_000)
    assert "Submitted (version 1)" in page.text_content("#submit-status")
    page.wait_for_url(app.base + "/", timeout=10_000)  # back to the queue
    tab.close()

    (record,) = [r for r in app.export() if r["meta"]["example_id"] == "qa-eiffel"]
    annotation = record["responses"][0]["annotation"]
    rome = EMOJI_RESPONSE.index("Rome")
    assert utf16(EMOJI_RESPONSE, rome) != rome  # the emoji make the two kinds of offsets differ
    tourists = EMOJI_RESPONSE.index("Many tourists")
    assert [(s["start"], s["end"], s["category"], s["text"]) for s in annotation["spans"]] == [
        (rome, rome + 4, "Wrong-Grounding", "Rome"),
        (tourists, EMOJI_RESPONSE.index(" there.") + 6, "Irrelevant", "Many tourists 😍 love taking photos there"),
    ]
    assert [(m["passage"], m["sentences"]) for m in annotation["missing"]] == [(1, [1])]
    assert annotation["corrected"] == corrected
    assert record["meta"]["annotator"] == "alice"


def test_compare_pairs_keys_transitivity_and_submit(app, browser):
    tab = Page(browser, app, app.token)
    page = tab.page
    page.goto(tab.task_url("Eiffel", "compare"))
    pairs = json.loads(page.text_content("#page-data"))["pairs"]
    assert len(pairs) == 3

    def key_for(pair: dict, winner: int | None) -> str:
        if winner is None:
            return "2"
        return "1" if pair["left"] == winner else "3"

    # A cycle 0 > 1, 1 > 2, 2 > 0 cannot come from one ranking: the page warns.
    cycle = {(0, 1): 0, (1, 2): 1, (0, 2): 2}
    for pair in pairs:  # the keys judge the highlighted pair and move on to the next
        page.keyboard.press(key_for(pair, cycle[(pair["a"], pair["b"])]))
    assert page.is_visible("#transitivity")
    shoot(page, "compare")
    # Re-judge (0, 2) as "0 better": consistent again, ranking 0 > 1 > 2.
    i = next(k for k, p in enumerate(pairs) if (p["a"], p["b"]) == (0, 2))
    # wait for the draft that holds the new judgement (an earlier "Draft saved" may still be shown)
    with page.expect_response(lambda r: r.url.endswith("/draft") and '"a":0,"b":2,"outcome":1' in (r.request.post_data or ""),
                              timeout=20_000):
        page.click(f'.pair[data-pair="{i}"] button[data-choice="{"left" if pairs[i]["left"] == 0 else "right"}"]')
    assert page.is_hidden("#transitivity")
    assert page.text_content("#ranking").endswith("Response 1  >  Response 2  >  Response 3")
    page.wait_for_selector("#draft-status.status-ok", timeout=10_000)
    page.goto(app.base + "/")
    assert "draft" in page.text_content("#task-rows")
    shoot(page, "queue")
    page.goto(tab.task_url("Eiffel", "compare"))  # the draft comes back
    assert page.locator("button.choice.chosen").count() == 3
    page.click("#submit")
    page.wait_for_selector("#submit-status.status-ok", timeout=10_000)
    tab.close()

    (record,) = [r for r in app.export() if r["meta"]["example_id"] == "qa-eiffel"]
    prefs = {(p["a"], p["b"]): p["outcome"] for p in record["preferences"]}
    assert prefs == {(0, 1): 1, (1, 2): 1, (0, 2): 1}


def test_script_in_model_output_is_shown_as_text(app, browser):
    tab = Page(browser, app, app.token)
    page = tab.page
    page.goto(tab.task_url("bold", "annotate"))
    page.wait_for_timeout(300)  # time for an injected onerror handler to fire, if there were one
    assert page.text_content("#response") == XSS_RESPONSE
    assert page.text_content("#prompt") == XSS_EXAMPLE["prompt"]
    assert XSS in page.text_content("#passages")
    assert page.locator("main img, main script, main b, main i").count() == 0
    assert page.locator("#corrected").input_value() == XSS_RESPONSE
    # Shift keeps a selection exactly as made: the quote, with its < and >, is stored as shown.
    drag(page, "#response", XSS_RESPONSE, "<img src=x onerror=alert(2)>", shift=True)
    page.keyboard.press(key_of(page, "Incoherent"))
    drag(page, "#response", XSS_RESPONSE, "& Jerry &amp;")  # snaps to "Jerry &amp"
    page.keyboard.press(key_of(page, "Redundant"))
    page.click("#submit")
    page.wait_for_selector("#submit-status.status-ok", timeout=10_000)

    page.goto(tab.task_url("bold", "compare"))
    page.wait_for_timeout(300)
    assert [t.strip() for t in page.locator(".response-card p").all_text_contents()] == [
        r["text"] for r in XSS_EXAMPLE["responses"]
    ]
    assert page.locator("main img, main script").count() == 0
    tab.close()

    (record,) = [r for r in app.export() if r["meta"]["example_id"] == "qa-xss"]
    spans = [(s["start"], s["end"], s["text"]) for s in record["responses"][0]["annotation"]["spans"]]
    img = XSS_RESPONSE.index("<img")
    jerry = XSS_RESPONSE.index("Jerry")
    assert spans == [(img, img + len("<img src=x onerror=alert(2)>"), "<img src=x onerror=alert(2)>"),
                     (jerry, jerry + len("Jerry &amp"), "Jerry &amp")]


def test_lost_answer_is_retried_with_the_same_key_and_a_stale_tab_gets_409(app, browser):
    first, second = Page(browser, app, app.token), Page(browser, app, app.token)
    url = first.task_url("bold", "compare")
    first.page.goto(url)
    second.page.goto(url)  # a second tab on the same task, opened before the submission
    sent = []

    def lose_first_answer(route):
        sent.append(json.loads(route.request.post_data))
        if len(sent) == 1:
            route.fetch()  # the server stores it, but the answer never reaches the page
            route.abort("connectionreset")
        else:
            route.continue_()

    first.page.route("**/api/tasks/*/submit", lose_first_answer)
    first.page.keyboard.press("1")
    first.page.keyboard.press("Control+Enter")
    first.page.wait_for_selector("#submit-status.status-ok", timeout=15_000)
    assert len(sent) == 2 and sent[0] == sent[1]  # retried with the same body and idempotency key
    first.errors.clear()  # the aborted request is logged as a console error, on purpose

    second.page.keyboard.press("3")
    second.page.keyboard.press("Control+Enter")
    second.page.wait_for_selector("#submit-status.status-error", timeout=10_000)
    assert "newer version" in second.page.text_content("#submit-status")
    assert second.page.is_visible("#submit-status button")  # Reload
    second.errors.clear()  # the 409 response is logged as a failed resource
    first.close()
    second.close()

    (record,) = [r for r in app.export() if r["meta"]["example_id"] == "qa-xss"]
    assert [s["kind"] for s in record["meta"]["submissions"]].count("compare") == 1
    (pref,) = record["preferences"]
    pair = sent[0]["judgements"][0]
    assert (pref["a"], pref["b"], pref["outcome"]) == (pair["a"], pair["b"], pair["outcome"])


def test_admin_sees_progress(app, browser):
    tab = Page(browser, app, app.admin_token)
    page = tab.page
    page.goto(app.base + "/admin")
    rows = page.locator("#annotator-rows tr")
    alice = rows.filter(has_text="alice")
    done = {s["task"] for r in app.export() if r["meta"]["annotator"] == "alice" for s in r["meta"]["submissions"]}
    assert alice.locator("td").nth(1).text_content() == f"{len(done)} / 6"
    shoot(page, "admin")
    tab.close()


# The page's pure text functions, run in the browser that uses them (no JavaScript toolchain needed).
_PURE_JS = """async () => {
  const t = await import('/static/text.js');
  const r = await import('/static/rank.js');
  const snap = (text, s, e, precise) => {
    const cps = t.codePoints(text);
    const got = t.snapToWords(cps, s, e, precise);
    return got && cps.slice(got.start, got.end).join('');
  };
  const s = '👍🏽 ok 🇫🇷 x';
  const diff = t.wordDiff('the cat sat  on the mat', 'the dog sat on a mat');
  return {
    cp: [0, 2, 4, 5, 6, 7, 8, 12, s.length].map((i) => t.toCodePointOffset(s, i)),
    cpInsidePair: t.toCodePointOffset('a😀b', 2),
    badOffset: (() => { try { t.toCodePointOffset('ab', 3); return 'no error'; } catch (e) { return e.name; } })(),
    nfc: t.normalise('e\\u0301') === '\\u00e9',
    snaps: [
      snap('The quick brown fox.', 5, 12),       // "uick br" -> whole words
      snap('The quick brown fox.', 3, 20),       // " quick brown fox." -> spaces and full stop trimmed
      snap('The quick brown fox.', 5, 12, true), // Shift: exactly as selected
      snap('I don\\'t know.', 3, 4),             // inside "don't": the apostrophe joins the word
      snap('Hi 👍🏽 there', 3, 4),                // half an emoji with its skin tone -> the whole emoji
      snap('... , ;', 0, 7),                     // punctuation only -> nothing
    ],
    diffLeft: diff.left.map((p) => p.text).join(''),
    diffRight: diff.right.map((p) => p.text).join(''),
    diffKinds: diff.left.map((p) => [p.kind, p.text.trim()]),
    cycle: r.intransitiveTriples([{a: 0, b: 1, outcome: 1}, {a: 1, b: 2, outcome: 1}, {a: 0, b: 2, outcome: 2}], [0, 1, 2]).length,
    tieCycle: r.intransitiveTriples([{a: 0, b: 1, outcome: 0}, {a: 1, b: 2, outcome: 0}, {a: 0, b: 2, outcome: 1}], [0, 1, 2]).length,
    consistent: r.intransitiveTriples([{a: 0, b: 1, outcome: 0}, {a: 1, b: 2, outcome: 1}, {a: 0, b: 2, outcome: 1}], [0, 1, 2]).length,
    ranking: r.derivedRanking([{a: 0, b: 1, outcome: 2}, {a: 1, b: 2, outcome: 0}, {a: 0, b: 2, outcome: 2}], [0, 1, 2]),
    outcomes: [r.outcomeFor({a: 0, b: 1, left: 1, right: 0}, 'left'), r.outcomeFor({a: 0, b: 1, left: 1, right: 0}, 'right'),
               r.outcomeFor({a: 0, b: 1, left: 0, right: 1}, 'equal'), r.choiceFor({a: 0, b: 1, left: 1, right: 0}, 2)],
  };
}"""


def test_text_offsets_snapping_diff_and_transitivity_functions(app, browser):
    page = browser.new_page()
    page.goto(app.base + "/login")
    got = page.evaluate(_PURE_JS)
    page.close()
    # '👍🏽 ok 🇫🇷 x': 👍 and 🏽 are 2 UTF-16 units each, each flag letter too.
    assert got["cp"] == [0, 1, 2, 3, 4, 5, 6, 8, 10]
    assert got["cpInsidePair"] == 2  # an offset inside a surrogate pair counts the whole character
    assert got["badOffset"] == "RangeError"
    assert got["nfc"] is True
    assert got["snaps"] == ["quick brown", "quick brown fox", "uick br", "don't", "👍🏽", None]
    assert got["diffLeft"] == "the cat sat  on the mat"
    assert got["diffRight"] == "the dog sat on a mat"
    assert got["diffKinds"] == [["same", "the"], ["del", "cat"], ["same", "sat  on"], ["del", "the"], ["same", "mat"]]
    assert (got["cycle"], got["tieCycle"], got["consistent"]) == (1, 1, 0)
    assert got["ranking"] == [[1, 2], [0]]  # 1 and 2 each beat 0 and tie each other
    assert got["outcomes"] == [2, 1, 0, "left"]


def test_explanation_and_note_boxes_survive_reload_and_resubmission(app, browser):
    tab = Page(browser, app, app.token)
    page = tab.page
    page.goto(tab.task_url("Eiffel", "annotate"))  # submitted by the first test: version 1 is loaded
    assert page.locator("#span-list li").count() == 2
    page.fill('#span-list li[data-index="0"] input.explanation', "the passage says Paris")
    page.click('.sent[data-p="2"][data-s="2"]')  # a second note, with evidence
    notes = page.locator("#missing-list input.note")
    assert notes.count() == 2
    with page.expect_response(lambda r: r.url.endswith("/draft") and "when it was built" in (r.request.post_data or ""), timeout=20_000):
        notes.nth(1).fill("when it was built")
    page.reload()  # the draft keeps both boxes
    assert page.locator('#span-list li[data-index="0"] input.explanation').input_value() == "the passage says Paris"
    assert page.locator("#missing-list input.note").nth(1).input_value() == "when it was built"
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#submit-status.status-ok", timeout=10_000)
    page.wait_for_url(app.base + "/", timeout=10_000)
    # resubmitting from the page (version 3) keeps what version 2 said
    page.goto(tab.task_url("Eiffel", "annotate"))
    page.fill("#corrected", page.locator("#corrected").input_value() + " ")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#submit-status.status-ok", timeout=10_000)
    tab.close()
    (record,) = [r for r in app.export() if r["meta"]["example_id"] == "qa-eiffel"]
    ann = record["responses"][0]["annotation"]
    assert [s["explanation"] for s in ann["spans"]] == ["the passage says Paris", ""]
    assert [(m["passage"], m["sentences"], m["note"]) for m in ann["missing"]] == [(1, [1], ""), (2, [2], "when it was built")]
    assert max(s["version"] for s in record["meta"]["submissions"] if s["kind"] == "annotate") == 3


def test_right_to_left_response_is_isolated_and_annotated(app, browser):
    tab = Page(browser, app, app.token)
    page = tab.page
    page.goto(tab.task_url("צרפת", "annotate"))
    assert page.text_content("#response") == RTL_RESPONSE
    assert page.evaluate("getComputedStyle(document.querySelector('#response')).direction") == "rtl"
    assert page.evaluate("getComputedStyle(document.querySelector('#prompt')).direction") == "rtl"
    # select "רומא" (Rome) through the DOM and let the page take the selection as a mouse-up would
    start = RTL_RESPONSE.index("רומא")
    page.evaluate("""([s, e]) => {
      const node = document.querySelector('#response').firstChild;
      const r = document.createRange(); r.setStart(node, s); r.setEnd(node, e);
      const sel = getSelection(); sel.removeAllRanges(); sel.addRange(r);
      document.dispatchEvent(new MouseEvent('mouseup', {button: 0, bubbles: true}));
    }""", [utf16(RTL_RESPONSE, start), utf16(RTL_RESPONSE, start + 4)])
    page.keyboard.press(key_of(page, "Wrong-Grounding"))
    item = page.locator("#span-list li").first
    assert item.locator("q bdi").text_content() == "רומא"  # the quote is isolated from the label and offsets
    assert f"[{start}, {start + 4})" in item.text_content()
    assert page.locator(".sent[data-p='1'][data-s='1'] bdi").text_content() == "פריז היא בירת צרפת."
    assert page.locator(".sent[data-p='1'][data-s='1'] .sent-no").text_content() == "1.1"
    shoot(page, "annotate-rtl")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#submit-status.status-ok", timeout=10_000)
    tab.close()
    (record,) = [r for r in app.export() if r["meta"]["example_id"] == "qa-rtl"]
    (span,) = record["responses"][0]["annotation"]["spans"]
    assert (span["start"], span["end"], span["text"]) == (start, start + 4, "רומא")


def test_compare_four_responses_is_compact(app, browser):
    tab = Page(browser, app, app.token)
    page = tab.page
    page.goto(tab.task_url("צרפת", "compare"))
    pairs = json.loads(page.text_content("#page-data"))["pairs"]
    assert len(pairs) == 6
    assert page.locator(".pair-sides:visible").count() == 1  # only the pair being judged shows its texts
    height = page.evaluate("document.documentElement.scrollHeight")
    assert height < 1800, height  # was 3,100 px with both texts repeated for every pair
    assert page.evaluate("getComputedStyle(document.querySelector('.pair.current .side-left .response-text')).direction") == "rtl"
    shoot(page, "compare-k4")
    for _ in pairs:
        page.keyboard.press("2")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#submit-status.status-ok", timeout=10_000)
    tab.close()
    (record,) = [r for r in app.export() if r["meta"]["example_id"] == "qa-rtl"]
    assert sorted((p["a"], p["b"], p["outcome"]) for p in record["preferences"]) == [
        (a, b, 0) for a in range(4) for b in range(a + 1, 4)]


def test_reviewer_merges_two_annotators_in_the_merge_view(app, browser):
    from sqlalchemy import select

    from finegrain.annotate import db, store

    _cli("annotate", "token", "create", "bob", "--db", app.db)
    _cli("annotate", "assign", "--db", app.db, "--annotators", "bob")
    engine = db.make_engine(app.db, create=False)
    with db.read_tx(engine) as conn:
        bob = conn.execute(select(db.users.c.id).where(db.users.c.name == "bob")).scalar_one()
    task = next(t for t in store.queue(engine, bob) if t["kind"] == "annotate" and "bold" in t["title"])
    text = XSS_RESPONSE
    jerry = text.index("Jerry")
    store.submit(engine, task["id"], bob, "bob", {
        "response_index": 0, "spans": [{"start": jerry, "end": jerry + 5, "category": "Irrelevant", "text": "Jerry", "explanation": "bob's"}],
        "missing": [], "corrected": None, "no_error": False, "idempotency_key": "bob-1", "base_version": 0})
    engine.dispose()

    tab = Page(browser, app, app.reviewer_token)
    page = tab.page
    assert page.url == app.base + "/review"
    page.click(f'a[href="/review/{task["id"]}"]')
    page.wait_for_selector(".annotator-card", timeout=20_000)  # the page's script has run
    cards = page.locator(".annotator-card")
    assert cards.count() == 2  # alice (from the XSS test) and bob
    alice, bob_card = page.locator('.annotator-card[data-annotator="alice"]'), page.locator('.annotator-card[data-annotator="bob"]')
    alice.locator('li[data-key="alice#0"] button[data-decision="accept"]').click()
    alice.locator('li[data-key="alice#1"] button[data-decision="reject"]').click()
    assert "Decide every span" in page.text_content("#problems")
    bob_card.locator('button[data-decision="edit"]').click()
    edit = bob_card.locator(".edit-box")
    edit.locator("select.edit-category").select_option("Redundant")
    edit.locator("input.edit-end").fill(str(jerry + len("Jerry &amp")))
    assert edit.locator("q bdi").text_content() == "Jerry &amp"
    assert page.is_hidden("#problems")
    assert page.locator("#result li").count() == 2
    shoot(page, "merge")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#submit-status.status-ok", timeout=10_000)
    assert "version 1" in page.text_content("#submit-status")
    tab.close()
    (record,) = [r for r in app.export() if r["id"] == "qa-xss#adjudicated"]
    assert record["meta"]["adjudicated"] is True and record["meta"]["adjudications"][0]["reviewer"] == "rita"
    spans = record["responses"][0]["annotation"]["spans"]
    img = text.index("<img")
    assert [(s["start"], s["end"], s["category"]) for s in spans] == [
        (img, img + len("<img src=x onerror=alert(2)>"), "Incoherent"), (jerry, jerry + len("Jerry &amp"), "Redundant")]


def test_the_pages_rules_give_the_servers_verdicts(app, browser):
    """rules.js mirrors finegrain.data.annotations: the same cases, the same first refused field."""
    from test_annotate_defects import CASES, PASSAGES, TEXT

    from finegrain.data.annotations import check_annotation
    from finegrain.data.categories import DEFAULT_TAXONOMY
    from finegrain.data.problems import Collector
    from finegrain.data.records import MissingInfo, Span

    page = browser.new_page()
    page.goto(app.base + "/login")
    ctx = {"text": TEXT, "passages": [{"title": p.title, "sentences": list(p.sentences)} for p in PASSAGES],
           "categories": list(DEFAULT_TAXONOMY.span_categories), "missingKinds": list(DEFAULT_TAXONOMY.missing_kinds)}
    got = page.evaluate("""async ([cases, ctx]) => {
      const r = await import('/static/rules.js');
      return cases.map((c) => r.annotationProblems(c, ctx).map((p) => p.field));
    }""", [[c[1] for c in CASES], ctx])
    page.close()
    for (name, ann, field), fields in zip(CASES, got):
        c = Collector("x")
        check_annotation(c, [(Span(s["start"], s["end"], s["category"]), s["text"]) for s in ann["spans"]],
                         [MissingInfo(m["type"], m["passage"], tuple(m["sentences"])) for m in ann["missing"]],
                         ann["no_error"], TEXT, PASSAGES, DEFAULT_TAXONOMY)
        assert [p.field for p in c.problems] == fields, name
        assert (fields[0] if fields else None) == field, name
