"""Screenshots of each tab of `sftune webui` (docs/images/webui-*.png) with the same playwright + Debian
chromium-headless-shell as the browser test: a few LoRA steps of the embedded SmolLM2 on the demo data,
then its evaluation, a chat beside the base model, and an export.

    PYTHONPATH=src python scripts/webui_screenshots.py [--steps 12] [--out docs/images]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

CHROMIUM = next((p for p in ("/usr/bin/chromium-headless-shell", "/usr/bin/chromium") if Path(p).exists()),
                shutil.which("chromium-headless-shell") or shutil.which("chromium"))
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
TIMEOUT_MS = 900_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", default="docs/images")
    args = parser.parse_args()
    if CHROMIUM is None:
        raise SystemExit("no Chromium: apt-get install chromium-headless-shell")
    from sftune.demo import EN_ASK, write_dataset
    from sftune.webui import launch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sftune-screens-"))
    train_file, _ = write_dataset(work / "data", n_train=64, n_eval=8)
    with train_file.open("a", encoding="utf-8") as f:  # two bad records, to show the rejections
        f.write(json.dumps({"messages": [{"role": "user", "content": "no answer here"}]}) + "\n")
        f.write('{"messages": [{"role": "user", "content": "cut off\n')
    app, url = launch(work / "runs", block=False)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            expect.set_options(timeout=TIMEOUT_MS)
            page.goto(url)
            page.locator("#data-paths textarea").fill(str(train_file))
            page.locator("#data-validate").click()
            expect(page.locator("#data-summary")).to_contain_text("rejected")
            page.get_by_role("button", name="Statistics").click()
            expect(page.get_by_text("valid conversations")).to_be_visible()
            page.get_by_role("button", name="Inspect: records in a template, trained tokens coloured").click()
            page.get_by_role("button", name="Inspect", exact=True).click()
            expect(page.locator("pre.sftune-tokens").first).to_be_visible()
            page.screenshot(path=str(out / "webui-data.png"), full_page=True)

            page.get_by_role("button", name="Use for training →").click()
            page.locator("#train-on-error input").click()
            page.get_by_role("option", name="skip them (counted in the log)").click()
            for field, value in (("train-max-steps", args.steps), ("train-max-len", 128), ("train-batch-size", 2)):
                page.locator(f"#{field} input, #{field} textarea").first.fill(str(value))
            page.locator("#train-max-steps textarea, #train-max-steps input").first.press("Tab")
            expect(page.locator("#train-yaml")).to_contain_text(f"max_steps: {args.steps}")
            page.locator("#train-start").click()
            expect(page.locator("#train-status")).to_contain_text(re.compile("left|failed"))
            if "failed" in page.locator("#train-status").inner_text():
                raise SystemExit("the run failed:\n" + (work / "runs" / "run-1" / "train.log").read_text())
            expect(page.locator("#train-status")).to_contain_text(f"step {args.steps // 2} /")
            page.screenshot(path=str(out / "webui-train.png"), full_page=True)
            expect(page.locator("#train-status")).to_contain_text("finished")

            page.get_by_role("tab", name="Evaluate").click()
            page.locator("#tab-evaluate").get_by_role("button", name="↻ Runs").click()
            page.locator("#eval-max-new-tokens input").fill("40")
            page.locator("#eval-start").click()
            expect(page.locator("#eval-scores")).to_contain_text("heldout")
            page.screenshot(path=str(out / "webui-evaluate.png"), full_page=True)

            page.get_by_role("tab", name="Chat").click()
            page.locator("#tab-chat").get_by_role("button", name="↻ Runs").click()
            page.locator("#chat-message textarea").fill(EN_ASK + "Meet Alice, a 34-year-old from Lisbon.")
            page.locator("#chat-send").click()
            for chat in ("#chat-tuned", "#chat-base"):  # both answers complete (the JSON closed)
                expect(page.locator(f"{chat} .bot").last).to_contain_text("}")
            page.screenshot(path=str(out / "webui-chat.png"), full_page=True)

            page.get_by_role("tab", name="Export").click()
            page.locator("#tab-export").get_by_role("button", name="↻ Runs").click()
            page.locator("#export-start").click()
            expect(page.locator("#export-result")).to_contain_text("Output folder")
            page.screenshot(path=str(out / "webui-export.png"), full_page=True)
            browser.close()
    finally:
        app.close()
    print(f"screenshots in {out}; work folder {work}")


if __name__ == "__main__":
    main()
