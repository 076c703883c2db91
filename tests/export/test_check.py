"""The parity check: exported artefacts that answer as the run does pass; a broken one is reported."""

from __future__ import annotations

import json
import shutil

from sftune.export.check import check_export


def test_merged_and_gguf_agree_with_the_run(lora_run, exported):
    report = check_export(lora_run, exported, count=4, max_new_tokens=12)
    assert report["artefacts"] == ["merged", "gguf"] and report["prompts"] == 4
    assert report["ok"], json.dumps(report["rows"], ensure_ascii=False, indent=1)
    assert "all artefacts agree" in (exported / "check.md").read_text()


def test_an_edited_chat_template_is_reported(lora_run, exported, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken, ignore=shutil.ignore_patterns("gguf"))
    path = broken / "chat_template.jinja"
    jinja = path.read_text(encoding="utf-8")
    prompt = "{{ '<|im_start|>assistant\n' }}"  # the generation prompt: one newline more is a silent template drift
    assert prompt in jinja
    path.write_text(jinja.replace(prompt, "{{ '<|im_start|>assistant\n\n' }}"), encoding="utf-8")
    report = check_export(lora_run, broken, count=2, max_new_tokens=4)
    assert not report["ok"] and report["artefacts"] == ["merged"]
    row = report["rows"][0]
    assert not row["same_prompt"] and "prompt_first_difference" in row
    text = (broken / "check.md").read_text(encoding="utf-8")
    assert "DIFFERENCES FOUND" in text and "prompt tokens differ from position" in text
