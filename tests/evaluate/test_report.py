"""The before/after report: rows and verdicts, the forgetting flags, a self-contained page that a browser
shows with its tables (headless Chromium), escaped model output."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from sftune.evaluate import bootstrap, report
from sftune.evaluate.results import Sample, TaskResult

CHROMIUM = next((p for p in ("/usr/bin/chromium-headless-shell", "/usr/bin/chromium") if Path(p).exists()),
                shutil.which("chromium-headless-shell") or shutil.which("chromium"))
BROWSER_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-sync"]


def result(task: str, items, *, general=False, metric="accuracy", higher=True, samples=(), extra=None) -> TaskResult:
    items = [float(x) for x in items]
    return TaskResult(task=task, metric=metric, score=sum(items) / len(items), item_scores=items,
                      samples=list(samples), higher_is_better=higher, general=general,
                      details={"metrics": extra} if extra else {})


def pairs():
    """heldout gains a lot; mmlu loses 15 points on 200 items (beyond noise); gsm8k moves by noise only."""
    rng = np.random.default_rng(0)
    mmlu = rng.integers(0, 2, 200)
    mmlu_after = np.where(rng.uniform(size=200) < 0.3, 0, mmlu)
    gsm = rng.integers(0, 2, 60)
    gsm_after = gsm.copy()
    gsm_after[:2] = 1 - gsm_after[:2]
    answer = '<script>alert("x")</script> {"name": "张伟"}'
    heldout = (result("heldout", [0] * 40, metric="exact_match",
                      samples=[Sample("user: 张伟今年30岁", "I don't know", "{}", 0.0)],
                      extra={"perplexity": {"score": 9.0, "item_scores": [], "higher_is_better": False}}),
               result("heldout", [1] * 30 + [0] * 10, metric="exact_match",
                      samples=[Sample("user: 张伟今年30岁", answer, "{}", 1.0)],
                      extra={"perplexity": {"score": 2.0, "item_scores": [], "higher_is_better": False}}))
    return [heldout,
            (result("mmlu", mmlu, general=True), result("mmlu", mmlu_after, general=True)),
            (result("gsm8k", gsm, general=True), result("gsm8k", gsm_after, general=True))]


def test_rows_verdicts_and_forgetting_flags():
    built = report.build("runs/demo", "smollm2-135m-instruct", pairs())
    by_task = {t["task"]: t for t in built["tasks"]}
    heldout = by_task["heldout"]["rows"]
    assert [r["metric"] for r in heldout] == ["exact_match", "perplexity"]
    assert heldout[0]["delta"] == pytest.approx(0.75) and heldout[0]["verdict"] == "better"
    assert heldout[1]["delta"] == pytest.approx(-7.0) and heldout[1]["delta_interval"] is None  # no items: no claim
    assert heldout[1]["verdict"] == "n/a"
    mmlu = by_task["mmlu"]["rows"][0]
    base, tuned = pairs()[1]
    assert mmlu["delta_interval"] == bootstrap.paired_delta_interval(base.item_scores, tuned.item_scores)
    assert mmlu["delta_interval"][1] < 0 and mmlu["verdict"] == "worse"
    flags = {(f["task"], f["metric"]): f["forgot"] for f in built["forgetting"]}
    assert flags == {("mmlu", "accuracy"): True, ("gsm8k", "accuracy"): False}  # heldout is not general


def test_lower_is_better_metrics_flag_a_rise():
    before = result("truthfulqa-ppl", [2.0, 2.1, 1.9, 2.0] * 25, metric="perplexity", higher=False, general=True)
    after = result("truthfulqa-ppl", [2.5, 2.6, 2.4, 2.5] * 25, metric="perplexity", higher=False, general=True)
    built = report.build("m", "b", [(before, after)])
    assert built["forgetting"][0]["forgot"] is True and built["tasks"][0]["rows"][0]["verdict"] == "worse"


def test_without_a_base_there_is_no_delta_and_no_forgetting(tmp_path):
    built = report.build("some-model", None, [(None, result("mmlu", [1, 0, 1, 1], general=True))])
    row = built["tasks"][0]["rows"][0]
    assert "delta" not in row and row["model_interval"] is not None and built["forgetting"] == []
    paths = report.write(built, tmp_path)
    assert "fine-tuned" not in paths["html"].read_text()


def test_written_files_are_self_contained_and_escaped(tmp_path):
    paths = report.write(report.build("runs/demo", "base-model", pairs()), tmp_path)
    assert json.loads(paths["json"].read_text())["tasks"][1]["task"] == "mmlu"
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = paths["html"].read_text()
    assert "<script" not in page and "&lt;script&gt;" in page  # the model's output is text, never markup
    assert not re.search(r"(src|href)=[\"']?(https?:|//)", page)  # nothing fetched from elsewhere
    assert 'src="data:image/png;base64,' in page


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary: install Debian's chromium-headless-shell "
                                              "(apt-get install chromium-headless-shell) to render the report")
def test_the_page_shows_its_tables_in_headless_chromium(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the `test` extra) is not installed")
    paths = report.write(report.build("runs/demo", "smollm2-135m-instruct", pairs()), tmp_path)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            failed = []
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.goto(paths["html"].as_uri())
            headings = page.locator("h2").all_inner_texts()
            assert headings[0] == "Forgetting" and any(h.startswith("mmlu") for h in headings)
            forgotten = page.locator("#forgetting tr.forgot td").all_inner_texts()
            assert forgotten[:2] == ["mmlu", "accuracy"] and "worse beyond noise" in forgotten
            heldout = page.locator("section.task").first
            cells = heldout.locator("table.scores tr").nth(1).locator("td").all_inner_texts()
            assert cells[:4] == ["exact_match", "0.000", "0.750", "+0.750"] and cells[5] == "better"
            assert page.locator("img").evaluate("img => img.complete && img.naturalWidth > 100")
            heldout.locator("details summary").click()
            assert '<script>alert("x")</script>' in heldout.locator("table.samples").inner_text()
            assert failed == []
        finally:
            browser.close()
