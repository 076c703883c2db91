"""Screenshot of an evaluation report page for the README (headless Chromium through playwright).

    .venv/bin/python scripts/report_screenshot.py runs/demo/eval/report.html docs/images/eval-report.png
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

BROWSER_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-sync"]


def main(page_path: str, png_path: str, height: int = 1300) -> None:
    from playwright.sync_api import sync_playwright

    browser_path = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    if browser_path is None:
        sys.exit("no Chromium: apt-get install chromium-headless-shell")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1150, "height": height})
        page.goto(Path(page_path).resolve().as_uri())
        page.locator("section.task details").first.evaluate("d => d.open = true")  # show the sample answers
        page.screenshot(path=png_path, clip={"x": 0, "y": 0, "width": 1150, "height": height})
        browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
