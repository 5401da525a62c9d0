"""`synthstream ui` in a real browser: headless Chromium driven by Playwright against the console
of a live pipeline (embedded broker, simulator over HTTP, real worker processes).

Screenshots of every page go to tests/artifacts/ui/ (or $SYNTHSTREAM_UI_SCREENSHOTS).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.error
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

from streamer.kafka.broker import free_port, port_open
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
             30, what="the instruction and attribution output counts on the graph")
    wait_for(lambda: page.locator("#simulated-banner").is_visible(), 30, what="the simulated-data banner")
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
    page.wait_for_selector("main pre.json")
    assert "document found in topic docs" in page.locator("main").text_content()
    assert orjson.loads(page.locator("main pre.json").text_content())["id"] == wanted["root_id"]

    # From a position instead of newest first: partition 0 from offset 1 holds what the store has there.
    on_p0 = sorted(r["offset"] for r in stored_rows(pipeline.data_dir, pipeline.prefix + "samples") if r["partition"] == 0)
    page_p0 = get(url + "api/topics/samples?start=offset&offset=0:1&limit=100")["rows"]
    assert [(r["partition"], r["offset"]) for r in page_p0] == [(0, o) for o in sorted(set(on_p0)) if o >= 1]

    page.goto(url + "#/samples")
    page.wait_for_selector("[data-test=sample-row]")
    assert page.locator("[data-test=sample-row]").count() == 10
    page.goto(url + "#/report")
    page.wait_for_selector("#report-tables", timeout=120_000)
    page.wait_for_function("[...document.images].length >= 5 && [...document.images].every(i => i.complete && i.naturalWidth > 0)")
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


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as response:
        return orjson.loads(response.read())


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=orjson.dumps(body), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return orjson.loads(response.read())


# Access token --------------------------------------------------------------------------------------
def status_of(url: str, cookie: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
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
