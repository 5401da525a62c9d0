"""`synthstream ui` in a real browser: headless Chromium driven by Playwright against the console
of a live pipeline (embedded broker, simulator over HTTP, real worker processes).

Screenshots of every page go to tests/artifacts/ui/ (or $SYNTHSTREAM_UI_SCREENSHOTS).
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import orjson
import pytest
from helpers import (
    dead_letters_at_instruction,
    make_texts,
    stop_process,
    stored_rows,
    wait_for,
    write_jsonl,
    write_seeds,
)

from streamer.processes import free_port, port_open
from streamer.records import content_id

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("SYNTHSTREAM_UI_SCREENSHOTS") or Path(__file__).parent / "artifacts" / "ui")
CHAIN_PARTS = ("document", "seeds", "situation", "instruction", "judge", "dedup", "answer")


def browser_or_skip():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's `chromium` (.ci/run does) to run the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the `test` extra")
    return sync_api


@pytest.fixture
def page(tmp_path):
    sync_api = browser_or_skip()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-background-networking"])
        tab = browser.new_page(viewport={"width": 1500, "height": 1000})
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        yield tab
        browser.close()
        assert not errors, errors  # no script error on any page


def start_ui(pipeline, *args: str) -> tuple[subprocess.Popen, str]:
    """`synthstream ui` on a free port; returns the process and the URL it printed."""
    port = free_port()
    proc = pipeline.start("ui", "--port", str(port), *args, name="ui")
    wait_for(lambda: port_open("127.0.0.1", port) or proc.poll() is not None, 60, what="synthstream ui")
    assert proc.poll() is None, pipeline.log_of(proc)
    url = wait_for(lambda: re.search(r"^(http://\S+)$", pipeline.log_of(proc), re.MULTILINE), 10, what="the URL").group(1)
    return proc, url


# The console's Content-Security-Policy forbids eval, so page conditions are polled from here
# (page.evaluate) rather than with page.wait_for_function.
def shot(tab, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    print(f"screenshot: {SHOTS / name}.png")


def stored_envelopes(pipeline, topic: str) -> list[dict]:
    return [orjson.loads(r["envelope"]) for r in stored_rows(pipeline.data_dir, pipeline.prefix + topic)]


def counter(tab, selector: str) -> int:
    """The first number of a figure on the graph (`in 12 (3.0/s)` → 12)."""
    return int(re.search(r"\d+", tab.locator(selector).text_content()).group())


# The pipeline page, the topic browser, the sample viewer, the report -----------------------------
def test_console_follows_a_live_pipeline_and_shows_each_samples_whole_chain(pipeline, start_simulator, page, tmp_path):
    sim = start_simulator("--latency", "0.3")
    pipeline.env["SYNTHSTREAM_LLM__BASE_URL"] = sim.url
    texts = make_texts(10)
    pipeline.cli("feed", "seeds", str(write_seeds(tmp_path / "seeds.jsonl", 3)))
    pipeline.cli("feed", "docs", str(write_jsonl(tmp_path / "first.jsonl", texts[:5])))
    ui, url = start_ui(pipeline)
    pipeline.start("run", "--metrics-port", "0", "--no-progress")

    # The graph's figures move without reloading: the second batch shows up in the answer stage's count.
    page.goto(url + "#/graph")
    wait_for(lambda: counter(page, "#fig-answer-in") >= 5, 120, what="the first five answers on the graph")
    first = counter(page, "#fig-answer-in")
    pipeline.cli("feed", "docs", str(write_jsonl(tmp_path / "second.jsonl", texts[5:])))
    wait_for(lambda: counter(page, "#fig-answer-in") > first, 120, interval=0.5, what="the graph to move")
    wait_for(lambda: len({e["id"] for e in stored_envelopes(pipeline, "samples")}) == 10, 120, what="10 samples stored")
    # Counted once each, however many samples the page has seen (10 instructions made, 3 seeds attributed).
    wait_for(lambda: counter(page, "#fig-instruction-out") == 10 and counter(page, "#fig-attribution-out") == 3,
             30, what=lambda: f"the instruction and attribution output counts on the graph "
                              f"({counter(page, '#fig-instruction-out')}, {counter(page, '#fig-attribution-out')})")
    wait_for(lambda: page.locator("#simulated-banner").is_visible(), 30, what="the simulated-data banner")
    # Drawn from the stage declarations: a card for every stage, the feed and the sink, a pill per topic.
    from consumers import PIPELINE, TOPICS
    from consumers.topology import MACHINERY_TOPICS

    drawn = lambda test: {g.get_attribute("data-name") for g in page.locator(f"#graph g[data-test={test}]").all()}
    assert drawn("stage") == {stage.name for stage in PIPELINE}
    assert drawn("feed") == {"feed"} and drawn("sink") == {"sink"} and drawn("topic") == set(TOPICS) - set(MACHINERY_TOPICS)
    page.set_viewport_size({"width": 1400, "height": 1000})  # every card whole in a 1400 px window
    outside = page.evaluate("""(() => { const wrap = document.querySelector(".graph-wrap").getBoundingClientRect();
        return [...document.querySelectorAll("#graph g:not([data-test=topic])")].filter((g) => {
          const box = g.querySelector("rect").getBoundingClientRect();
          return box.left < wrap.left || box.right > wrap.right; }).map((g) => g.dataset.name); })()""")
    assert outside == []  # the graph is redrawn every sample: measured in one go
    shot(page, "1-pipeline-graph")

    # The topic browser finds one record by a --where field filter.
    samples = {e["root_id"]: e for e in stored_envelopes(pipeline, "samples")}
    wanted = samples[content_id(texts[7])]
    page.goto(url + "#/topics/samples")
    page.fill("#where-filter", f"root_id={wanted['root_id']} kind=sample")
    page.click("#search")
    rows = page.locator("[data-test=record-row]")
    wait_for(lambda: page.locator("#result-count").text_content().startswith("1 records"), 30, what="one match")
    assert rows.count() == 1 and rows.first.get_attribute("data-id") == wanted["id"]
    rows.first.locator("td").nth(3).click()
    assert orjson.loads(page.locator("#detail pre").text_content())["data"] == wanted["data"]
    shot(page, "2-topic-browser")

    # The sample viewer, reached from an id link: seven parts, each as the store has it.
    page.locator("#results a.id").first.click()
    page.wait_for_selector("#chain")
    check_chain(page, wanted, stored_envelopes(pipeline, "seeds.attributed"))
    shot(page, "3-sample-viewer")
    page.locator("[data-part=document] a.id").click()  # any id opens its record: the document, on its topic
    wait_for(lambda: page.locator("main pre.json").count(), 60,
             what=lambda: f"the document's record view; the page shows {page.locator('main').text_content()[:300]!r}")
    assert "document found in topic docs" in page.locator("main").text_content()
    assert orjson.loads(page.locator("main pre.json").text_content())["id"] == wanted["root_id"]

    # From a position instead of newest first: partition 0 from offset 1 holds what the store has there.
    on_p0 = sorted(r["offset"] for r in stored_rows(pipeline.data_dir, pipeline.prefix + "samples") if r["partition"] == 0)
    page_p0 = get(url + "api/topics/samples?start=offset&offset=0:1&limit=100")["rows"]
    assert [(r["partition"], r["offset"]) for r in page_p0] == [(0, o) for o in sorted(set(on_p0)) if o >= 1]
    # A value with spaces is one condition; a new search clears the last one's record from the pane.
    page.goto(url + "#/topics/samples")
    page.wait_for_selector("[data-test=record-row]")
    rows.first.locator("td").nth(3).click()
    page.wait_for_selector("#detail pre")
    other = next(e for e in samples.values() if e["id"] != wanted["id"] and " " in e["data"]["instruction"].strip()
                 and "=" not in e["data"]["instruction"] and e["data"]["instruction"] == e["data"]["instruction"].strip())
    page.fill("#where-filter", f"data.instruction={other['data']['instruction']} kind=sample")
    page.click("#search")
    wait_for(lambda: page.locator("#result-count").count() and page.locator("[data-test=record-row]").count() == 1
             and rows.first.get_attribute("data-id") == other["id"], 30, what="the sample found by its instruction")
    assert page.locator("#detail pre").count() == 0

    page.goto(url + "#/samples")
    page.wait_for_selector("[data-test=sample-row]")
    assert page.locator("[data-test=sample-row]").count() == 10
    page.goto(url + "#/report")
    page.wait_for_selector("#report-tables", timeout=120_000)
    wait_for(lambda: page.evaluate("[...document.images].length >= 5 && [...document.images].every(i => i.complete && i.naturalWidth > 0)"),
             60, what="the report's charts")
    assert "10 samples (10 simulated)" in page.locator("main").text_content()
    shot(page, "5-report")
    page.reload()  # the old page's event stream closes; the server notices at its next sample
    page.wait_for_selector("#report-tables", timeout=60_000)
    time.sleep(5)
    assert "Traceback" not in pipeline.log_of(ui)


def check_chain(page, sample: dict, attributed: list[dict]) -> None:
    details = sample["lineage"]["details"]
    part = lambda name: page.locator(f"[data-part={name}]")
    for name in CHAIN_PARTS:
        assert part(name).count() == 1 and "missing" not in part(name).get_attribute("class"), name
    text = lambda name, key: part(name).locator(f"[data-key={key}]").first.text_content().strip()
    assert text("document", "url") == details["document"]["url"]
    seeds = [li.get_attribute("data-seed") for li in part("seeds").locator("li").all()]
    assert seeds == sample["lineage"]["seed_ids"] and len(seeds) >= 1
    by_seed = {e["root_id"]: e for e in attributed}
    for li, seed_id in zip(part("seeds").locator("li").all(), seeds):
        assert by_seed[seed_id]["data"]["instruction"] in li.text_content()
    assert text("situation", "situation") == details["situation"]["situation"].strip()
    assert text("instruction", "instruction") == sample["data"]["instruction"].strip()
    for key, value in sample["data"]["meta"]["compositions"].items():
        assert text("instruction", key) == str(value).strip()
    scores = {row.locator("td").first.text_content(): int(row.locator("td").nth(1).text_content())
              for row in part("judge").locator("[data-criterion]").all()}
    assert scores == details["judge"]["scores"] and text("judge", "total") == str(details["judge"]["total"])
    assert text("dedup", "decision") == details["dedup"]["decision"]
    assert text("answer", "answer") == sample["data"]["response"].strip()


# Dead letters --------------------------------------------------------------------------------------
def test_a_dead_letter_is_redriven_from_the_page_and_then_stored_once(pipeline, start_simulator, page, tmp_path):
    dead_letters_at_instruction(pipeline, start_simulator, tmp_path, documents=2)
    _, url = start_ui(pipeline)

    page.goto(url + "#/dlq")
    page.wait_for_selector("[data-test=letter-row]")
    letters = page.locator("[data-test=letter-row]")
    assert letters.count() == 2
    assert [s.text_content() for s in page.locator("[data-test=letter-status]").all()] == ["pending", "pending"]
    chosen = letters.first.get_attribute("data-id")
    shot(page, "4-dead-letters-pending")

    # Another site's page (here: another loopback origin) tries the redrive as a text/plain form POST
    # and as a no-cors fetch, both with the victim's cookies: refused, nothing sent.
    with foreign_site(cross_site_redrive_page(url, chosen)) as foreign:
        page.goto(foreign)
        page.wait_for_function("window.fetchDone === true")
        page.wait_for_url(url + "api/dlq/redrive")  # the form landed on the console's answer
        assert "refused" in page.locator("body").text_content()
    assert get(url + "api/dlq")["pending"] == 2  # no redrive marker on dlq.redriven
    page.goto(url + "#/dlq")
    page.wait_for_selector("[data-test=letter-row]")
    letters.first.locator("[data-test=redrive]").click()
    assert page.locator("#confirm").is_visible() and chosen in page.locator("#confirm-text").text_content()
    shot(page, "4-dead-letters-confirm")
    page.click("#confirm-ok")
    page.wait_for_selector("[data-test=notice]")
    assert f"redriven {chosen}" in page.locator("[data-test=notice]").text_content()
    status = page.locator(f"[data-test=letter-row][data-id='{chosen}'] [data-test=letter-status]")
    wait_for(lambda: status.text_content() == "redriven", 20, what="the letter marked redriven")
    assert page.locator("[data-test=redrive]").count() == 1  # only the other letter can still be redriven
    shot(page, "4-dead-letters-redriven")

    # The fault is fixed; the redriven input becomes exactly one stored sample, the other none.
    pipeline.env["SYNTHSTREAM_STAGES__INSTRUCTION__LLM__BASE_URL"] = pipeline.env["SYNTHSTREAM_LLM__BASE_URL"]
    pipeline.cli("run", "--until-idle", "--no-progress", timeout=180)
    letter = next(e for e in stored_envelopes(pipeline, "dlq") if e["id"] == chosen)
    rows = stored_rows(pipeline.data_dir, pipeline.prefix + "samples")
    assert Counter(orjson.loads(r["envelope"])["root_id"] for r in rows) == Counter({letter["root_id"]: 1})
    again = post(url + "api/dlq/redrive", {"id": chosen})
    assert again["sent"] == [] and again["already"] == 1


def cross_site_redrive_page(console: str, letter_id: str) -> str:
    """A page of another site that tries to redrive a dead letter the two ways a cross-site page can
    without CORS: a no-cors fetch, then a text/plain form whose body reads as the JSON the API wants."""
    target = console + "api/dlq/redrive"
    body = orjson.dumps({"id": letter_id}).decode()
    name, value = body[:-2] + ', "x": "', '"}'  # the form sends name=value: {"id": "…", "x": "="}
    return f"""<!doctype html><html><body>
<form id="f" method="POST" enctype="text/plain" action="{target}"><input name='{name}' value='{value}'></form>
<script>
fetch("{target}", {{method: "POST", mode: "no-cors", credentials: "include",
  headers: {{"Content-Type": "application/json"}}, body: {orjson.dumps(body).decode()}}})
  .finally(() => {{ window.fetchDone = true; setTimeout(() => document.getElementById("f").submit(), 300); }});
</script></body></html>"""


@contextlib.contextmanager
def foreign_site(html: str):
    """`html` served at http://localhost:<another port>/: another origin than the console's 127.0.0.1."""
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(html.encode())

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as response:
        return orjson.loads(response.read())


def origin_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def post(url: str, body: dict) -> dict:
    """POST as the console's own page does (JSON, its own Origin)."""
    request = urllib.request.Request(url, data=orjson.dumps(body), headers={"Content-Type": "application/json",
                                                                          "Origin": origin_of(url)})
    with urllib.request.urlopen(request, timeout=30) as response:
        return orjson.loads(response.read())


# Access token --------------------------------------------------------------------------------------
def status_of(url: str, cookie: str | None = None, method: str = "GET", headers: dict | None = None,
              body: bytes | None = None) -> int:
    request = urllib.request.Request(url, method=method, data=body,
                                     headers={**({"Cookie": cookie} if cookie else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_console_bound_beyond_loopback_answers_only_with_the_access_token(pipeline):
    proc, url = start_ui(pipeline, "--host", "0.0.0.0")
    token = re.search(r"\?token=(\S+)", url).group(1)
    assert pipeline.log_of(proc).count(token) == 1  # printed once, in the URL to open
    base = url.split("?")[0].replace("0.0.0.0", "127.0.0.1")
    assert status_of(base) == 401 and status_of(base + "api/topics") == 401
    assert status_of(base + "api/topics?token=wrong") == 401
    assert status_of(base + "api/dlq", cookie="synthstream_ui_token=wrong") == 401
    with urllib.request.urlopen(f"{base}?token={token}", timeout=30) as response:
        assert response.status == 200 and b"synthstream" in response.read()
        cookie = response.headers["Set-Cookie"].split(";")[0]
    assert status_of(base + "api/topics", cookie=cookie) == 200  # the cookie alone from then on

    # Live figures stream as server-sent events; SIGTERM ends the open stream and the server at once.
    live = urllib.request.urlopen(urllib.request.Request(base + "api/live", headers={"Cookie": cookie}), timeout=30)
    assert live.headers["Content-Type"] == "text/event-stream" and live.readline().startswith(b"data: {")
    started = time.monotonic()
    stop_process(proc)
    assert proc.returncode == 0 and "synthstream ui: stopped" in pipeline.log_of(proc)
    assert time.monotonic() - started < 4, "the open event stream held up the stop"
    live.close()

    chosen, url = start_ui(pipeline, "--host", "0.0.0.0", "--token", "s3cret-token")
    base = url.replace("0.0.0.0", "127.0.0.1")
    assert "s3cret-token" not in pipeline.log_of(chosen)  # a token the user chose is never printed
    assert status_of(base + "api/topics") == 401
    assert status_of(base + "api/topics?token=s3cret-token") == 200


# Rejections by reason --------------------------------------------------------------------------------
def test_rejections_are_grouped_by_stage_and_reason_without_their_particulars(tmp_path):
    from streamer.config import load_settings
    from streamer.ui.reports import rejected_groups

    def rejection(rid: str, stage: str, reason: str, **details) -> dict:
        return {"id": rid, "kind": "rejection", "lineage": {"details": details},
                "data": {"stage": stage, "reason": reason, "score": None}}

    on_topic = [rejection("a", "judge", "judge score 2 below threshold 5"),
                rejection("b", "judge", "judge score 3 below threshold 5"),
                rejection("b", "judge", "judge score 3 below threshold 5"),  # redelivered: one record
                rejection("c", "dedup", "near_duplicate of 55eeab12cd34ef56"),
                rejection("d", "feed", "language de not in [en]", filter="languages")]
    settings = load_settings(env={"SYNTHSTREAM_STORAGE__DATA_DIR": str(tmp_path)})
    groups = rejected_groups(settings, on_topic)
    assert groups["total"] == 4
    assert [(g["stage"], g["reason"], g["count"]) for g in groups["groups"]] == [
        ("judge", "judge score below threshold", 2), ("dedup", "near_duplicate of", 1), ("feed", "filter languages", 1)]
    assert [e["id"] for e in groups["groups"][0]["examples"]] == ["a", "b"]


# The guards: no script from data, no other site acting, no rebound host name ------------------------
INJECTED = "window.__injected"  # what every payload below would set
PAYLOAD = ("<script>window.__injected = 'script'</script>"
           "<img src=x onerror=\"window.__injected = 'onerror'\"><svg onload=\"window.__injected = 'svg'\">")
SCRIPT_URL = "javascript:window.__injected='url'"


def test_crawled_markup_and_script_urls_run_no_script_on_any_page(pipeline, start_simulator, page, tmp_path):
    pipeline.env["SYNTHSTREAM_LLM__BASE_URL"] = start_simulator().url
    pipeline.cli("feed", "seeds", str(write_seeds(tmp_path / "seeds.jsonl", 2)))
    hostile = tmp_path / "hostile.jsonl"
    hostile.write_bytes(orjson.dumps({"text": make_texts(1)[0] + " " + PAYLOAD, "url": SCRIPT_URL,
                                      "title": PAYLOAD}) + b"\n")
    pipeline.cli("feed", "docs", str(hostile))
    # Two pages the feed's filters turn away (too short, words too long), one of them hostile too.
    pipeline.env["SYNTHSTREAM_FEED__FILTERS__ENABLED"] = "true"
    turned_away = tmp_path / "turned-away.jsonl"
    turned_away.write_bytes(orjson.dumps({"text": "Too short.", "url": "https://example.org/short",
                                          "title": "A page too short"}) + b"\n" + orjson.dumps(
        {"text": "Supercalifragilisticexpialidocious-antidisestablishmentarianism " * 4 + "end.", "url": SCRIPT_URL,
         "title": PAYLOAD}) + b"\n")
    pipeline.cli("feed", "docs", str(turned_away))
    pipeline.cli("run", "--until-idle", "--no-progress", timeout=240)
    _, url = start_ui(pipeline)

    for path in ("", "static/app.js", "api/topics", "api/nothing-here"):
        headers = response_headers(url + path)
        assert headers["Content-Security-Policy"] == ("default-src 'self'; script-src 'self'; object-src 'none'; "
                                                      "base-uri 'none'; frame-ancestors 'none'"), path
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "no-referrer"
        assert headers["Server"] == "synthstream", path  # no library, no version

    sample = stored_envelopes(pipeline, "samples")[0]
    for hash_ in ("#/graph", "#/topics/docs", "#/samples", f"#/sample/{sample['id']}", f"#/record/{sample['root_id']}",
                  "#/dlq", "#/report"):
        page.goto(url + hash_)
        wait_for(lambda: "loading…" not in page.locator("main").text_content(), 120, what=f"{hash_} loaded")
        for row in page.locator("[data-test=record-row] td:nth-child(4)").all():
            row.click()  # each record's JSON in the detail pane
        assert page.evaluate(INJECTED) is None, hash_
    assert get(url + f"api/samples/{sample['id']}")["view"]["document"]["title"] == PAYLOAD  # the data, whole

    page.goto(url + f"#/sample/{sample['id']}")
    page.wait_for_selector("#chain")
    url_field = page.locator("[data-part=document] [data-key=url]")
    assert url_field.text_content() == SCRIPT_URL and url_field.locator("a").count() == 0  # shown, not a link
    assert page.locator("[data-part=document] [data-key=title]").text_content() == PAYLOAD
    for i in range(page.locator("main a").count()):  # every link on the sample page, clicked
        page.goto(url + f"#/sample/{sample['id']}")
        page.wait_for_selector("#chain")
        page.locator("main a").nth(i).click()
        page.wait_for_timeout(200)
        assert page.evaluate(INJECTED) is None
    # The policy holds even for a script URL the page did make a link of.
    page.goto(url + "#/graph")
    page.evaluate(f"""() => {{ const a = document.createElement("a"); a.href = {orjson.dumps(SCRIPT_URL).decode()};
        a.id = "planted"; a.textContent = "x"; document.body.append(a); }}""")
    page.click("#planted")
    page.wait_for_timeout(300)
    assert page.evaluate(INJECTED) is None
    shot(page, "6-hostile-document")

    # A rejected page says which page it was, on the Topics page and under Dead letters.
    page.goto(url + "#/topics/rejected")
    page.wait_for_selector("[data-test=record-row]")
    row_texts = " ".join(t.text_content() for t in page.locator("[data-test=record-row] td:nth-child(4)").all())
    assert "feed: min_chars: 10 (threshold 200) — A page too short | https://example.org/short" in row_texts
    assert f"feed: min_words: 5 (threshold 50) — {PAYLOAD[:40]}" in row_texts  # shortened, as text
    page.goto(url + "#/dlq")
    page.wait_for_selector("[data-test=rejected-document]")
    shown = {t.text_content().strip() for t in page.locator("[data-test=rejected-document]").all()}
    assert shown == {"A page too short | https://example.org/short", f"{PAYLOAD} | {SCRIPT_URL}"}
    # The report's nested figures (rejected by stage, then reason) stay inside a 1400 px window.
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.goto(url + "#/report")
    page.wait_for_selector("#report-tables", timeout=120_000)
    tables = page.locator("#report-tables").text_content()
    assert "feed › min_chars" in tables and "{" not in tables  # one row per reason, no raw JSON
    assert page.evaluate("document.documentElement.scrollWidth") <= 1400
    shot(page, "5-report-1400")
    assert page.evaluate(INJECTED) is None


def response_headers(url: str):
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.headers
    except urllib.error.HTTPError as exc:
        return exc.headers


def console_routes(pipeline) -> list[tuple[str, str]]:
    """(method, path) of every route the console's app has, parameters filled with a placeholder."""
    from streamer.ui.server import UiOptions, make_app

    app = make_app(pipeline.settings(), UiOptions())
    paths = {(route.method, re.sub(r"\{[^}]+\}", "x", route.resource.canonical)) for route in app.router.routes()}
    return sorted((method, "static/app.js" if path == "/static" else path.lstrip("/")) for method, path in paths)


def test_a_foreign_host_name_is_refused_on_every_route_and_actions_need_the_consoles_origin(pipeline):
    _, url = start_ui(pipeline, "--allowed-host", "console.example.org")
    port = urllib.parse.urlsplit(url).port
    routes = console_routes(pipeline)
    assert ("POST", "api/dlq/redrive") in routes and ("GET", "api/live") in routes and len(routes) >= 12
    json_body = {"Content-Type": "application/json"}
    for method, path in routes:  # a DNS-rebinding page sends its own name
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
            assert status_of(url + path, method=method, headers={"Host": host, "Origin": f"http://{host}", **json_body},
                             body=b'{"id": "x"}' if method == "POST" else None) == 421, (method, path, host)
    # The bound names, the loopback names and the reverse proxy's name are served.
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "console.example.org", f"[::1]:{port}"):
        assert status_of(url + "api/topics", headers={"Host": host}) == 200, host

    redrive, origin = url + "api/dlq/redrive", origin_of(url)
    body = orjson.dumps({"id": "no-such-letter"})
    refused = [({**json_body}, body),  # no proof at all
               ({**json_body, "Origin": f"http://localhost:{port + 1}"}, body),  # another origin
               ({"Content-Type": "text/plain", "Origin": origin}, body),  # not JSON (a form, a no-cors fetch)
               ({"Content-Type": "application/x-www-form-urlencoded", "Origin": origin}, b"id=x"),
               ({**json_body, "X-Synthstream-Csrf": "guessed"}, body)]
    for headers, data in refused:
        assert status_of(redrive, method="POST", headers=headers, body=data) == 403, headers
    # From the console's own origin, or with the token its page carries, the request reaches the endpoint.
    assert status_of(redrive, method="POST", headers={**json_body, "Origin": origin}, body=body) == 404
    with urllib.request.urlopen(url, timeout=30) as response:
        token = re.search(r'name="csrf-token" content="([^"]+)"', response.read().decode()).group(1)
    assert status_of(redrive, method="POST", headers={**json_body, "X-Synthstream-Csrf": token}, body=body) == 404
