"""A real browser (Playwright driving Debian's chromium, headless) against `rlhfkit label serve` on loopback:
log in, label 10 pairs and one ranking with the keyboard, one ranking by drag and drop (some with a rationale), undo one and relabel it, export,
and check the export holds exactly the labels given. Prompts, responses and rationales carry XSS payloads, which
must stay inert text. Screenshots go to test-artifacts/label/.

Skips (with the reason) when the playwright package or /usr/bin/chromium is missing; scripts/setup_browser.sh
installs both. RLHFKIT_REQUIRE_BROWSER=1 turns the skip into a failure (for CI, so the test cannot silently skip).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from rlhfkit.app.loadgen import Server, add_users

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "label"
CHROMIUM = os.environ.get("RLHFKIT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

XSS = [
    '<img src=x onerror="window.__xss=1">',
    "<script>window.__xss=1</script>",
    '"><svg onload="window.__xss=1">',
    "</textarea><script>window.__xss=1</script>",
    "javascript:window.__xss=1",
    "{{constructor.constructor('window.__xss=1')()}}",
    "<iframe srcdoc=\"<script>parent.__xss=1</script>\"></iframe>",
]

pytestmark = pytest.mark.browser


def _need_browser():
    reason = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "playwright python package not installed (scripts/setup_browser.sh installs it)"
    if reason is None and not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        reason = f"{CHROMIUM} not found (scripts/setup_browser.sh: apt-get install chromium)"
    if reason:
        if os.environ.get("RLHFKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " and RLHFKIT_REQUIRE_BROWSER=1")
        pytest.skip(reason)


def _items(path: Path) -> Path:
    rows = []
    for i in range(10):
        x = XSS[i % len(XSS)]
        rows.append({"id": f"b{i}", "prompt": [{"role": "user", "content": f"Q{i}: {x}"}],
                     "responses": [f"answer A{i} {x}", f"answer B{i} " + XSS[(i + 1) % len(XSS)]]})
    rows.append({"id": "rank", "prompt": "Rank: " + XSS[0], "responses": ["one " + XSS[1], "two", "three " + XSS[2]]})
    rows.append({"id": "drag", "prompt": "Rank by dragging", "responses": ["red", "green", "blue"]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_browser_label_undo_export_xss(tmp_path):
    _need_browser()
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    db = tmp_path / "labels.sqlite"
    token = add_users(db, ["alice"], admin=True)["alice"]
    with Server(db, items=_items(tmp_path / "items.jsonl"), retrain_every=3, log=tmp_path / "server.log") as srv, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            ctx = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
            page = ctx.new_page()
            dialogs, csp_errors, page_errors = [], [], []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on("console", lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None)
            page.on("pageerror", lambda e: page_errors.append(str(e)))

            page.goto(srv.url + "/")
            page.wait_for_selector("body[data-state=login]", state="attached")
            page.screenshot(path=str(ARTIFACTS / "01-login.png"))
            page.fill("#login-name", "alice")
            page.fill("#login-token", "wrong-token")
            page.click("#login-submit")
            page.wait_for_selector("#login-error:not(:empty)")
            page.fill("#login-token", token)
            page.click("#login-submit")
            page.wait_for_selector("body[data-state=ready]", state="attached")

            # Waits use selectors: the page's CSP (no 'unsafe-eval') also blocks Playwright's wait_for_function.
            def wait_next(prev: str) -> str:
                page.wait_for_selector(
                    f'body:is([data-state=ready], [data-state=done]):not([data-item-id="{prev}"])', state="attached")
                return page.evaluate("document.body.dataset.itemId")

            def shown() -> tuple[str, str]:
                return page.inner_text("#resp-0-text"), page.inner_text("#resp-1-text")

            given: dict[str, tuple] = {}  # item id -> (prompt text, chosen, rejected, rationale)
            order: list[str] = []
            item = page.evaluate("document.body.dataset.itemId")
            for i in range(10):
                left, right = shown()
                # Model output is text: the payload is shown verbatim, no element was created from it.
                assert "answer" in left and ("<" in left or "{{" in left or "javascript:" in left)
                prompt = page.inner_text("#prompt .msg .text")
                rationale = ""
                if i % 3 == 0:
                    rationale = f"r{i} " + XSS[i % len(XSS)]
                    page.fill("#rationale", rationale)
                    page.press("#rationale", "Escape")  # leave the box; keys go to the page again
                if i == 1:
                    page.screenshot(path=str(ARTIFACTS / "02-pair.png"), full_page=True)
                key = "1" if i % 2 == 0 else "2"
                page.keyboard.press(key)
                chosen, rejected = (left, right) if key == "1" else (right, left)
                given[item] = (prompt, chosen, rejected, rationale)
                order.append(item)
                item = wait_next(item)

            # Undo the last label: the same item comes back; relabel it the other way.
            last = order[-1]
            page.keyboard.press("u")
            assert wait_next(item) == last
            left, right = shown()
            p_, c_, r_, rat = given[last]
            assert {left, right} == {c_, r_}
            page.keyboard.press("1" if left == r_ else "2")  # now prefer the previously rejected one
            given[last] = (p_, r_, c_, rat)
            item = wait_next(last)

            # The ranked item: keys 3, 1, 2 then Enter (best first).
            assert page.is_visible("#rank") and not page.is_visible("#pair")
            cards = page.locator("#rank-list li .text").all_inner_texts()
            for k in ("3", "1", "2"):
                page.keyboard.press(k)
            assert page.inner_text("#rank-summary") == "3 > 1 > 2"
            page.screenshot(path=str(ARTIFACTS / "03-rank.png"), full_page=True)
            page.keyboard.press("Enter")
            ranked = [cards[2], cards[0], cards[1]]
            item = wait_next(item)

            # The second ranked item by drag and drop: drop the last card on the first, then Enter.
            before = page.locator("#rank-list li .text").all_inner_texts()
            page.locator("#rank-list li").nth(2).drag_to(page.locator("#rank-list li").nth(0))
            dragged = page.locator("#rank-list li .text").all_inner_texts()
            assert dragged == [before[2], before[0], before[1]], (before, dragged)
            page.keyboard.press("Enter")
            page.wait_for_selector("body[data-state=done]", state="attached")

            # Nothing from the payloads ran or became markup.
            assert page.evaluate("window.__xss") is None and not dialogs and not page_errors, (dialogs, page_errors)
            assert page.locator("#work img, #work script, #work svg, #work iframe").count() == 0
            assert not csp_errors, csp_errors  # and nothing even tried to run inline

            page.click("#stats-refresh")
            page.wait_for_selector("#stats-table tbody tr")
            for _ in range(150):  # the model panel refreshes after each label; wait until it shows them
                if page.inner_text("#m-comparisons") not in ("0", ""):
                    break
                page.wait_for_timeout(100)
            assert int(page.inner_text("#m-comparisons")) == 12
            page.screenshot(path=str(ARTIFACTS / "04-done-stats.png"), full_page=True)

            with page.expect_download() as dl:
                page.click("#export-link")
            out = ARTIFACTS / "export.jsonl"
            dl.value.save_as(str(out))
        finally:
            browser.close()

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    pair_rows = [r for r in rows if r["item_id"] not in ("rank", "drag")]
    got = {(r["prompt"][0]["content"], r["chosen"][0]["content"], r["rejected"][0]["content"], r["rationale"])
           for r in pair_rows}
    assert len(pair_rows) == 10 and got == set(given.values())
    assert all(r["annotator"] == "alice" and r["outcome"] == "preference" for r in rows)
    for item_id, rk in (("rank", ranked), ("drag", dragged)):
        got_pairs = {(r["chosen"], r["rejected"]) for r in rows if r["item_id"] == item_id}
        assert got_pairs == {(rk[0], rk[1]), (rk[0], rk[2]), (rk[1], rk[2])}, item_id
    assert len(rows) == 16
