"""The playground, the KL explorer and the run dashboard in a real browser (Playwright driving Debian's chromium,
headless) against `rlhfkit label serve --runs-dir` on loopback. Model text and prompts carry XSS payloads that must
stay inert text; no page may log a console error; an annotator reaches only what --runs-public shares. Screenshots
go to test-artifacts/playground/.

Skips (with the reason) when the playwright package or /usr/bin/chromium is missing, like test_label_browser.py;
RLHFKIT_REQUIRE_BROWSER=1 turns the skip into a failure.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rlhfkit.app.loadgen import Server, add_users
from runs_fixtures import XSS, build_runs
from test_label_browser import CHROMIUM, CHROMIUM_ARGS, _need_browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "playground"
INERT = "#view img, #view script, #view iframe, #view svg:not(.plot), #view [onerror], #view [onload]"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def site(toy_dir, tmp_path_factory):
    """One server over the fixture runs (annotators see demo/ only), an admin and an annotator."""
    _need_browser()
    tmp = tmp_path_factory.mktemp("runs-browser")
    runs = build_runs(tmp / "runs", toy_dir)
    db = tmp / "labels.sqlite"
    tokens = add_users(db, ["alice"], admin=True) | add_users(db, ["ann"])
    args = ("--runs-dir", str(runs), "--runs-public", "demo", "--play-max-new-tokens", "6", "--play-timeout", "120")
    with Server(db, log=tmp / "server.log", args=args) as srv:
        yield type("Site", (), {"url": srv.url, "tokens": tokens, "runs": runs, "tmp": tmp})


@pytest.fixture(scope="module")
def browser(site):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class Page:
    """A logged-in page that records console errors, page errors and dialogs."""

    def __init__(self, browser, site, user: str):
        self.ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
        self.page = self.ctx.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.errors.append("dialog " + d.message), d.dismiss()))
        self.refused: list[str] = []  # responses >= 400: what a "Failed to load resource" console error was
        self.page.on("response", lambda r: self.refused.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        self.page.goto(site.url + "/")
        self.page.wait_for_selector("body[data-state=login]", state="attached")
        self.page.fill("#login-name", user)
        self.page.fill("#login-token", site.tokens[user])
        self.page.click("#login-submit")
        self.page.wait_for_selector("body:is([data-state=ready], [data-state=done])", state="attached")
        # the labelling page's own probe before the login (GET /api/me: 401) is not these pages' business
        self.errors.clear()
        self.refused.clear()

    def open(self, url: str, state: str = "ready"):
        self.page.goto(url)
        self.page.wait_for_selector(f"body[data-state={state}]", state="attached", timeout=30000)
        return self.page

    def assert_inert(self):
        p = self.page
        assert p.evaluate("window.__xss") is None
        assert p.locator(INERT).count() == 0
        assert not self.errors, (self.errors, self.refused)

    def close(self):
        self.ctx.close()


def test_playground_streams_answers_and_keeps_model_text_inert(browser, site):
    pg = Page(browser, site, "alice")
    p = pg.open(site.url + "/playground")
    boxes = {b.get_attribute("value") for b in p.locator("#ckpts input").all()}  # the admin sees every checkpoint
    assert boxes == {"demo/sft", "demo/ppo_beta_0.1", "demo/bon_4", "private/sft"}  # not the reward model
    p.select_option("#prompt-pick", index=2)
    assert p.input_value("#prompt") == "What is 3 plus 4?"
    prompt = "What is 3 plus 4? " + XSS[0]
    p.fill("#prompt", prompt)
    for box in p.locator("#ckpts input").all():
        box.set_checked(box.get_attribute("value") in ("demo/sft", "demo/ppo_beta_0.1", "demo/bon_4"))
    p.click("#generate")
    p.wait_for_selector("body[data-play=done]", state="attached", timeout=120000)
    cards = p.locator("#results .resp")
    assert cards.count() == 3 and p.locator("#results .pending, #results .failed").count() == 0
    assert p.inner_text("#shown-prompt-text") == prompt  # the prompt shown back as text
    for i in range(3):
        assert "gold" in cards.nth(i).inner_text() and "proxy" in cards.nth(i).inner_text()
    assert p.locator("#results .gap-max").count() == 1
    p.screenshot(path=str(ARTIFACTS / "01-playground-live.png"), full_page=True)

    # Stop while the worker is starting: the fetch is aborted (the server kills the worker: test_runs_http.py)
    p.click("#generate")
    p.wait_for_selector("#results .resp.pending")
    p.click("#stop")
    p.wait_for_selector("body[data-play=done]", state="attached")
    assert p.inner_text("#play-status") == "stopped" and p.locator("#results .failed").count() == 3
    assert p.is_hidden("#stop")

    # Model text that is markup: the stream is replaced by a canned one, every answer a payload.
    events = [{"event": "start", "checkpoints": ["a", "b", "c"], "max_new_tokens": 6, "timeout_s": 60}]
    for i, (name, proxy, gold) in enumerate((("a", 2.5, -0.5), ("b", 0.2, 0.1), ("c", None, None))):
        events.append({"event": "result", "id": name, "response": XSS[i] + " " + XSS[i + 1], "tokens": 6,
                       "finished": True, "proxy": proxy, "gold": gold, "n": 1, "seconds": 0.1,
                       "components": {"helpful<b>": 0.0, XSS[2]: 1.0} if gold is not None else None})
    events.append({"event": "done", "seconds": 0.3, "timed_out": False})
    body = "".join(json.dumps(e) + "\n" for e in events)
    p.route("**/api/play/generate", lambda route: route.fulfill(status=200, body=body,
                                                                 content_type="application/x-ndjson"))
    p.click("#generate")
    p.wait_for_selector("body[data-play=done]", state="attached")
    p.wait_for_selector("#results .resp[data-id=a]")
    assert p.inner_text("#results .resp[data-id=a] .text") == XSS[0] + " " + XSS[1]
    assert p.get_attribute("#results .gap-max", "data-id") == "a"  # proxy 2.5 vs gold -0.5: the largest gap
    assert p.inner_text("#results .resp[data-id=a] .badges") == "reward model's pick"
    assert p.inner_text("#results .resp[data-id=b] .badges") == "gold's pick"
    p.screenshot(path=str(ARTIFACTS / "02-playground-xss.png"), full_page=True)
    pg.assert_inert()
    pg.close()


def test_explorer_slider_plot_and_side_by_side(browser, site):
    pg = Page(browser, site, "alice")
    p = pg.open(site.url + "/explorer")
    assert p.evaluate("document.body.dataset.selected") == "ppo_beta_0.1"  # the middle coefficient first
    assert p.locator("#frontier circle.mark").count() == 1
    assert "training gold" in p.text_content("#frontier")  # the run's own probes are drawn
    assert p.locator("#samples tbody tr").count() == 6
    assert p.locator("#samples td.gap-cell").count() == 0  # at beta 0.1 no answer fools the reward model
    p.screenshot(path=str(ARTIFACTS / "03-explorer.png"), full_page=True)
    mark = p.locator("#frontier circle.mark").get_attribute("cx")
    p.focus("#beta-slider")
    p.keyboard.press("Home")  # the smallest coefficient: the over-optimised run, with its alarm
    p.wait_for_selector("body[data-selected='ppo_beta_0.01']", state="attached")
    assert p.locator("#frontier circle.mark").get_attribute("cx") != mark
    assert "gold_falling @4" in p.inner_text("#summary tr.selected")
    assert p.inner_text("#col-sel") == "ppo_beta_0.01"
    assert p.locator("#samples td.gap-cell").count() == 6  # every answer: proxy above SFT's, gold below
    cell = p.locator("#samples tbody tr").first.locator("td").nth(2)
    assert cell.locator(".text").inner_text().startswith("ppo_beta_0.01 answer 0 ")
    assert any(x in cell.inner_text() for x in XSS)  # the payload is shown as text
    p.click("#next")
    p.wait_for_selector("#page-label:has-text('prompts 7')")
    assert XSS[0] in p.locator("#samples tbody tr").nth(1).locator("td").first.inner_text()  # a prompt payload too
    p.screenshot(path=str(ARTIFACTS / "04-explorer-small-beta.png"), full_page=True)
    pg.assert_inert()
    pg.close()


def test_dashboard_draws_curves_and_follows_a_live_run(browser, site):
    live = site.runs / "demo" / "live"
    live.mkdir()
    path = live / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "rollout/score": s / 10, "kl/seq": s / 100, "rollout/length": 10 + s,
                                        "train/loss": 1 / s}) + "\n" for s in range(1, 6)))
    pg = Page(browser, site, "alice")
    p = pg.open(site.url + "/dashboard?poll=300&run=demo/live")
    p.wait_for_selector("body[data-rows='5']", state="attached")
    for chart in ("reward", "kl", "length", "loss"):
        assert p.locator(f"#chart-{chart} path").count() >= 1, chart
    with open(path, "a") as f:  # the run trains on: the page picks the new lines up
        for s in range(6, 13):
            f.write(json.dumps({"step": s, "rollout/score": s / 10, "kl/seq": s / 100, "rollout/length": 10 + s,
                                "train/loss": 1 / s}) + "\n")
        f.flush()
    p.wait_for_selector("body[data-rows='12']", state="attached", timeout=10000)
    (live / "alarms.jsonl").write_text(json.dumps({"kind": "length_drift", "step": 9, "message": XSS[3]}) + "\n")
    p.wait_for_selector("#alarms li.alarm", timeout=10000)
    assert XSS[3] in p.inner_text("#alarms")
    p.wait_for_selector("#chart-reward line.alarm-line", state="attached")
    p.screenshot(path=str(ARTIFACTS / "05-dashboard-live.png"), full_page=True)
    p.select_option("#run", "demo/ppo_beta_0.01")
    p.wait_for_selector("body[data-rows='10']", state="attached")
    pg.assert_inert()
    pg.close()


def test_annotator_reaches_only_shared_runs(browser, site):
    pg = Page(browser, site, "ann")
    p = pg.open(site.url + "/dashboard?poll=60000")
    runs = p.locator("#run option").all_inner_texts()
    assert runs and all(r.startswith("demo/") for r in runs) and "private/run" not in runs
    p = pg.open(site.url + "/playground")
    boxes = [b.get_attribute("value") for b in p.locator("#ckpts input").all()]
    assert "private/sft" not in boxes and "demo/sft" in boxes
    status = p.evaluate("""async () => {
        const csrf = (await (await fetch('/api/me')).json()).csrf;
        const m = await fetch('/api/runs/metrics?run=private/run');
        const g = await fetch('/api/play/generate', {method: 'POST', headers: {'Content-Type': 'application/json',
            'X-CSRF-Token': csrf}, body: JSON.stringify({prompt: 'hi', checkpoints: ['private/sft']})});
        return [m.status, g.status];
    }""")
    assert status == [403, 403]
    p.screenshot(path=str(ARTIFACTS / "06-annotator-playground.png"), full_page=True)
    expected = [e for e in pg.errors if "403" in e]  # the two refused fetches above, logged by chromium
    assert len(expected) == len(pg.errors), pg.errors
    pg.close()


def test_annotator_without_shared_runs_is_forbidden(browser, toy_dir, tmp_path):
    """With nothing shared, an annotator's pages say forbidden and show no data (the admin's would)."""
    db = tmp_path / "labels.sqlite"
    tokens = add_users(db, ["ann"])
    runs = build_runs(tmp_path / "runs", toy_dir)
    with Server(db, log=tmp_path / "server.log", args=("--runs-dir", str(runs))) as srv:
        site = type("Site", (), {"url": srv.url, "tokens": tokens})
        pg = Page(browser, site, "ann")
        for i, page in enumerate(("playground", "explorer", "dashboard")):
            p = pg.open(f"{srv.url}/{page}", state="forbidden")
            assert "Forbidden" in p.inner_text("#message")
            assert p.locator("#ckpts input, #demo option, #run option").count() == 0
            if i == 0:
                p.screenshot(path=str(ARTIFACTS / "07-annotator-forbidden.png"), full_page=True)
        assert all("403" in e for e in pg.errors), pg.errors
        pg.close()


def test_explorer_over_a_users_eval_dir(browser, site):
    """The same page over `rlhfkit eval --output-dir` output (runs_fixtures.write_eval): coefficients from the runs'
    configs, the reference policy eval named, the slider, and model text kept inert."""
    pg = Page(browser, site, "alice")
    p = pg.open(site.url + "/explorer")
    assert "user/eval1 (eval)" in p.locator("#demo option").all_inner_texts()
    p.select_option("#demo", "user/eval1")
    p.wait_for_selector("body[data-selected='ppo_mid']", state="attached")  # the middle of four coefficients
    assert p.inner_text("#beta-label").startswith("β = 0.08")
    assert p.inner_text("#col-ref") == "sft" and p.inner_text("#kl-head") == "KL to sft"
    assert "PPO gold" in p.text_content("#frontier") and "training gold" in p.text_content("#frontier")
    assert p.locator("#samples tbody tr").count() == 6 and p.locator("#samples td.gap-cell").count() == 0
    mark = p.locator("#frontier circle.mark").get_attribute("cx")
    p.screenshot(path=str(ARTIFACTS / "08-explorer-eval.png"), full_page=True)
    p.focus("#beta-slider")
    p.keyboard.press("Home")  # 0.02: the run that fools the reward model, with its alarm
    p.wait_for_selector("body[data-selected='ppo_lo']", state="attached")
    assert p.locator("#frontier circle.mark").get_attribute("cx") != mark
    assert "proxy_gold_divergence @6" in p.inner_text("#summary tr.selected")
    assert p.locator("#samples td.gap-cell").count() == 6
    cell = p.locator("#samples tbody tr").first.locator("td").nth(2)
    assert cell.locator(".text").inner_text().startswith("ppo_lo says 0 ")
    assert any(x in cell.inner_text() for x in XSS)
    p.keyboard.press("End")
    p.wait_for_selector("body[data-selected='ppo_hi']", state="attached")
    p.click("#next")
    p.wait_for_selector("#page-label:has-text('prompts 7')")
    assert XSS[1] in p.inner_text("#samples tbody")  # the extra prompt's payload, as text
    p.screenshot(path=str(ARTIFACTS / "09-explorer-eval-page2.png"), full_page=True)
    pg.assert_inert()
    pg.close()
