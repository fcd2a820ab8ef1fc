"""Check the web view in a real headless Chromium and save a screenshot.

Starts `specblock serve`, opens http://127.0.0.1:PORT/ in Chromium (driven by Playwright,
with the system browser: no browser download), types a prompt into the chat box, sends it,
waits for the streamed answer and its summary line, checks that the text arrived coloured by
origin (draft / target pieces) and that live tau and tokens/s were shown, then saves the page.

    .venv/bin/pip install playwright          # the driver only; Chromium from apt-get install chromium
    .venv/bin/python benchmarks/webview_screenshot.py --out docs/webview.png
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

PROMPT = "List the planets of the solar system with one fact about each."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/webview.png"))
    ap.add_argument("--method", default="specblock")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--max-tokens", type=int, default=160)
    args = ap.parse_args()
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser_path is None:
        raise SystemExit("no Chromium found: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    url = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen([sys.executable, "-m", "specblock.cli", "serve", "--method", args.method,
                               "--port", str(args.port)])  # fmt: skip
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(url + "/")
            page.fill("#max_tokens", str(args.max_tokens))
            page.fill("#prompt", PROMPT)
            page.click("#send")
            page.wait_for_selector(".assistant .target", timeout=60_000)
            live = page.inner_text("#stats")  # tau and tokens/s while the answer streams
            page.wait_for_selector(".assistant .meta", timeout=300_000)
            drafted, own = page.locator(".assistant .draft").count(), page.locator(".assistant .target").count()
            if not own or "tokens/s" not in live or "tau" not in live:
                raise SystemExit(f"the page did not stream as expected: {own} target pieces, stats {live!r}")
            print(f"streamed: {drafted} draft pieces, {own} target pieces; live stats {live!r}")
            print("summary:", page.inner_text(".assistant .meta"))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
        print(f"saved {args.out}")
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    main()
