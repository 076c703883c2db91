"""End to end in a real browser (headless Chromium driven by playwright): open the page, validate a data file,
start a 3-step run of a tiny model, reload the page while it trains, see the loss curve appear, chat with the result
beside its base; validate image-text data and see its gallery, chat with a vision-language run about an image.

SFTUNE_SCREENSHOTS=FOLDER saves the image-data page as FOLDER/webui-data-images.png (docs/images holds one)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.evaluate.test_report import BROWSER_ARGS, CHROMIUM
from tests.vision.conftest import images, vision_run, vlm_folder  # noqa: F401  (the tiny trained LLaVA run)

TIMEOUT_MS = 240_000  # a loaded machine: a run process starts torch, transformers and the model first


def open_page(sync_api, p, url):
    """Headless Chromium on the UI's page, with the loaded-machine timeouts: (browser, page, expect)."""
    browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    expect = sync_api.expect
    expect.set_options(timeout=TIMEOUT_MS)
    page.goto(url)
    return browser, page, expect


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary: install Debian's chromium-headless-shell "
                                              "(apt-get install chromium-headless-shell) for the browser test")
def test_from_a_data_file_to_a_chat_with_the_fine_tuned_model(served, demo_files, tiny_checkpoint):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the `test` extra) is not installed")
    url, runs_root = served
    with sync_api.sync_playwright() as p:
        browser, page, expect = open_page(sync_api, p, url)

        # Data: validate the file
        page.locator("#data-paths textarea").fill(str(demo_files[0]))
        page.locator("#data-validate").click()
        expect(page.locator("#data-summary")).to_contain_text("24 records", timeout=TIMEOUT_MS)
        expect(page.locator("#data-summary")).to_contain_text("24 valid, 0 rejected")

        # Train: the file goes to the form; a 3-step run of the tiny model
        page.get_by_role("button", name="Use for training →").click()
        expect(page.locator("#train-data textarea")).to_have_value(str(demo_files[0]))
        model = page.locator("#train-model input")
        model.fill(str(tiny_checkpoint))
        model.press("Enter")
        expect(page.locator("#train-yaml")).to_contain_text(str(tiny_checkpoint), timeout=TIMEOUT_MS)
        page.locator("#train-max-steps textarea, #train-max-steps input").first.fill("3")
        page.locator("#train-max-steps textarea, #train-max-steps input").first.press("Tab")
        expect(page.locator("#train-yaml")).to_contain_text("max_steps: 3", timeout=TIMEOUT_MS)
        expect(page.locator("#train-yaml")).to_contain_text(str(tiny_checkpoint))
        page.locator("#train-start").click()
        expect(page.locator("#train-run input")).to_have_value(str(runs_root / "run-1"))
        page.reload()  # the run is a process of its own: the reloaded page finds it and follows it
        page.get_by_role("tab", name="Train").click()
        expect(page.locator("#train-run input")).to_have_value(str(runs_root / "run-1"))
        expect(page.locator("#train-status")).to_contain_text("finished")
        expect(page.locator("#train-status")).to_contain_text("step 3 / 3")
        expect(page.locator("#train-loss-plot canvas, #train-loss-plot svg").first).to_be_visible()
        assert (runs_root / "run-1" / "summary.json").is_file()

        # Chat: the new run answers, and its base beside it
        page.get_by_role("tab", name="Chat").click()
        page.locator("#tab-chat").get_by_role("button", name="↻ Runs").click()
        expect(page.locator("#chat-model input")).to_have_value(str(runs_root / "run-1"))
        page.locator("#chat-message textarea").fill("hello")
        page.locator("#chat-send").click()
        expect(page.locator("#chat-tuned")).to_contain_text("hello")
        expect(page.locator("#chat-base")).to_contain_text("hello")
        expect(page.locator("#chat-send")).to_be_enabled()
        expect(page.locator("#chat-tuned .bot").first).to_be_attached()
        expect(page.locator("#chat-base .bot").first).to_be_attached()
        browser.close()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary: install Debian's chromium-headless-shell "
                                              "(apt-get install chromium-headless-shell) for the browser test")
def test_image_data_shows_a_gallery_and_a_vision_run_chats_about_an_image(served, tmp_path, vision_run,
                                                                          images):  # noqa: F811
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the `test` extra) is not installed")
    from sftune.vision import shapes

    url, _ = served
    data = shapes.write(tmp_path / "shapes", 6, seed=3)
    with sync_api.sync_playwright() as p:
        browser, page, expect = open_page(sync_api, p, url)

        # Data: the check counts the images and shows each one in the gallery
        page.locator("#data-paths textarea").fill(str(data))
        page.locator("#data-validate").click()
        expect(page.locator("#data-summary")).to_contain_text("6 images")
        thumbnails = page.locator("#data-gallery img")
        expect(thumbnails).to_have_count(6)
        for k in range(6):
            expect(thumbnails.nth(k)).to_have_js_property("complete", True)
            assert thumbnails.nth(k).evaluate("img => img.naturalWidth") > 0  # decoded, not a broken image
        if os.environ.get("SFTUNE_SCREENSHOTS"):
            folder = Path(os.environ["SFTUNE_SCREENSHOTS"])
            folder.mkdir(parents=True, exist_ok=True)
            top, gallery = page.locator("#tab-data").bounding_box(), page.locator("#data-gallery").bounding_box()
            page.screenshot(path=str(folder / "webui-data-images.png"), full_page=True, clip={
                "x": top["x"], "y": top["y"], "width": top["width"],
                "height": gallery["y"] + gallery["height"] - top["y"] + 8})

        # Chat: an image attached to the message goes to the vision-language run and its base
        page.get_by_role("tab", name="Chat").click()
        model = page.locator("#chat-model input")
        model.fill(str(vision_run))
        model.press("Enter")
        page.locator("#chat-message input[type=file]").set_input_files(images["red"])
        expect(page.locator("#chat-message img").first).to_be_visible()  # uploaded: its preview shows
        page.locator("#chat-message textarea").fill("What colour?")
        page.locator("#chat-send").click()
        expect(page.locator("#chat-tuned")).to_contain_text("What colour?")
        expect(page.locator("#chat-tuned img").first).to_be_visible()
        expect(page.locator("#chat-base img").first).to_be_visible()
        expect(page.locator("#chat-send")).to_be_enabled()
        expect(page.locator("#chat-tuned .bot").first).to_be_attached()
        expect(page.locator("#chat-base .bot").first).to_be_attached()
        browser.close()
