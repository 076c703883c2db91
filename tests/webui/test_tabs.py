"""The tabs' functions called directly, each against the library call it wraps: data check / inspect,
the config form, chat streaming (against unbatched greedy generation), evaluation rows, export."""

from __future__ import annotations

import pytest

from sftune import config
from sftune.webui import chat_tab, data_tab, evaluate_tab, export_tab, train_tab


def test_check_lists_each_rejected_record_with_its_reason_and_line(mixed_file, roots):
    from sftune.data import check

    result = data_tab.check_files([str(mixed_file)], roots=roots)
    reference = check([str(mixed_file)])
    assert (result["total"], result["valid"], result["invalid"]) == (5, 3, 2) == \
        (reference.total, reference.valid, reference.invalid)
    assert result["files"][0][1] == reference.formats[str(mixed_file)]
    assert sorted(r[1] for r in result["rejected"]) == sorted(reference.reasons.elements())
    assert [r[0] for r in result["rejected"]] == [f"{mixed_file} line 2", f"{mixed_file} line 4"]
    assert "3 valid, 2 rejected" in data_tab.check_summary(result)


def test_inspect_colours_exactly_the_trained_tokens(demo_files, smollm2_tokenizer, roots):
    import re

    from sftune import models, templates
    from sftune.data import read
    from sftune.encode import encode

    page = data_tab.inspect_html([str(demo_files[0])], models.DEFAULT_MODEL, limit=1, roots=roots)
    first = next(read([str(demo_files[0])]))
    result = encode(first, smollm2_tokenizer, templates.default_for(smollm2_tokenizer))
    trained_ids = [t for t, label in zip(result["input_ids"], result["labels"]) if label != -100]
    import html

    shown = "".join(html.unescape(m) for m in re.findall(r"<span class='sftune-trained'>(.*?)</span>",
                                                                page.split("</p>", 1)[1], re.S))
    # each reply decoded whole (its Chinese characters intact), the masked text around it left out
    replies = [m.content for m in first.messages if m.role == "assistant"]
    assert shown == smollm2_tokenizer.decode(trained_ids) == "".join(r + "<|im_end|>" for r in replies)
    assert f"{len(result['input_ids'])} tokens, {len(trained_ids)} trained" in page


def test_the_form_gives_the_config_a_yaml_file_would(tmp_path):
    from sftune.webui.paths import Roots

    roots = Roots.of(tmp_path)  # the data root: the working directory, where a.jsonl would be
    form = {"name": "r1", "model": "m", "train": "a.jsonl\nb.jsonl", "eval": "", "template": "(model's own)",
            "method": "lora", "r": 8, "alpha": 16, "lr": 1e-4, "epochs": 2, "max_steps": None, "batch_size": 4,
            "grad_accum": 2, "max_len": 512, "packing": True, "precision": "auto", "logging_steps": 1,
            "save_steps": 10}
    cfg = train_tab.build_config(roots, form)
    expected = config.load({"model": {"name": "m"}, "data": {"train": ["a.jsonl", "b.jsonl"], "max_len": 512},
                            "method": {"name": "lora", "r": 8, "alpha": 16},
                            "train": {"epochs": 2, "batch_size": 4, "grad_accum": 2, "lr": 1e-4, "logging_steps": 1,
                                      "save_steps": 10},
                            "eval": {"steps": 10}, "output": {"dir": str(tmp_path.resolve() / "r1")}})
    assert config.to_yaml(cfg) == config.to_yaml(expected)
    with pytest.raises(config.ConfigError, match="run name"):
        train_tab.build_config(roots, {**form, "name": "../x"})
    with pytest.raises(config.ConfigError, match="train.max_steps: 'ten' is not a number"):
        train_tab.build_config(roots, {**form, "max_steps": "ten"})
    assert train_tab.build_config(roots, {**form, "max_steps": " 30 ", "lr": ""}).train.max_steps == 30
    with pytest.raises(config.ConfigError, match="batch_size"):
        train_tab.build_config(roots, {**form, "batch_size": 0})


def test_chat_streams_the_greedy_answer_of_the_run_and_of_its_base(tiny_run, roots):
    from sftune import runs
    from sftune.generation import GenerationOptions, generate, render_prompts

    options = GenerationOptions(max_new_tokens=12)
    *_, (tuned, base) = chat_tab.chat(str(tiny_run), True, [], [], "1 + 1 =", options, roots=roots)
    for name, history in ((str(tiny_run), tuned), (runs.base_model_of(tiny_run), base)):
        loaded = runs.load(name)
        prompt = render_prompts(loaded.template, [[{"role": "user", "content": "1 + 1 ="}]])
        reference = generate(loaded.model, loaded.tokenizer, prompt, options, stop_token_ids=loaded.stop_token_ids)
        assert history[-1] == {"role": "assistant", "content": reference[0].text}
        assert history[0] == {"role": "user", "content": "1 + 1 ="}


def test_evaluate_shows_the_rows_of_the_written_report(tiny_run, tmp_path, roots):
    import json

    report, paths = evaluate_tab.evaluate(str(tiny_run), ["heldout"], roots=roots, limit=2, max_new_tokens=4)
    written = json.loads(paths["json"].read_text())
    rows = evaluate_tab.score_rows(report)
    assert [r[:2] for r in rows] == [[t["task"], row["metric"]] for t in written["tasks"] for row in t["rows"]]
    assert rows[0][3] == round(written["tasks"][0]["rows"][0]["model"], 4)
    assert "<iframe" in evaluate_tab.report_frame(paths["html"])


def test_export_writes_the_merged_model_and_names_the_folder(tiny_run, tmp_path, roots):
    out, summary = export_tab.export_run(str(tiny_run), str(tmp_path / "merged"), roots=roots)
    assert (out / "model.safetensors").is_file() and summary["merged"]
    assert str(out.resolve()) in export_tab.summary_markdown(out, summary)


def test_inspect_shows_the_pieces_the_command_line_marks(tmp_path, roots):
    """The Data tab and `sftune data inspect` (piped: trained text in ⟦ ⟧) show one record in the same pieces."""
    import html
    import json
    import re

    from typer.testing import CliRunner

    from sftune import models
    from sftune.cli import app
    from tests.data.test_inspect import ALPACA_ZH, TRAINED

    data = tmp_path / "alpaca_zh.jsonl"
    data.write_text(json.dumps(ALPACA_ZH, ensure_ascii=False) + "\n", encoding="utf-8")
    page = data_tab.inspect_html([str(data)], models.DEFAULT_MODEL, limit=1, roots=roots).split("</p>", 1)[1]
    shown = [(kind, html.unescape(text)) for kind, text in
             re.findall(r"<span class='sftune-(\w+)'>(.*?)</span>", page, re.S)]
    result = CliRunner().invoke(app, ["data", "inspect", str(data), "--limit", "1"])
    assert result.exit_code == 0, result.output
    record = result.output.split("\n", 2)[2].rsplit("\n\n", 1)[0]  # after the template and record headers
    marked = [("trained" if k % 2 else "masked", text) for k, text in enumerate(re.split("[⟦⟧]", record))]
    assert shown == marked and ("trained", TRAINED) in shown and "\ufffd" not in page


def test_the_train_form_fits_its_labels_and_a_single_evaluation_shows_as_a_point(tmp_path, demo_files):
    """Rows of at most FIELDS_PER_ROW fields (five cut "Packing" to "Packir"); the held-out loss of one evaluation
    is drawn as a point (a line of one point draws nothing) on axes that read "10", not "10.000000"."""
    import gradio as gr
    from gradio.layouts import Form

    from sftune.webui import app as webui_app

    blocks = webui_app.build(tmp_path / "runs")
    def inside(block):
        return [block] + [b for child in getattr(block, "children", []) for b in inside(child)]

    train = inside(next(b for b in blocks.blocks.values() if isinstance(b, gr.Tab) and b.label == "Train"))
    rows = [b for b in train if isinstance(b, gr.Row)]
    packing = next(b for b in train if isinstance(b, gr.Checkbox) and b.label == "Packing")
    fields = {row: [c for child in row.children for c in (child.children if isinstance(child, Form) else [child])
                    if isinstance(c, gr.components.FormComponent)] for row in rows}  # gradio wraps them in a Form
    assert any(packing in row_fields for row_fields in fields.values())
    for row_fields in fields.values():
        assert len(row_fields) <= train_tab.FIELDS_PER_ROW, [c.label for c in row_fields]
    plot = blocks.blocks[next(k for k, b in blocks.blocks.items() if getattr(b, "elem_id", None) == "train-eval-plot")]
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9.5, "learning_rate": 0.0001}\n'
                                       '{"step": 1, "eval_loss": 10.0}\n')
    shown = plot.postprocess(train_tab.curves(run)[1])
    assert shown.mark == "point" and shown.data == [[1, 10.0]]
    assert plot.y_axis_format == plot.x_axis_format == "~g"


def test_inspect_shows_the_stop_token_audit_as_the_command_line_does(tmp_path, smollm2_tokenizer, roots):
    """A model whose template writes no stop after the last reply (GLM-4.5): the tab says which stop sftune
    appends, in the words of `sftune data inspect`, and shows it trained after the last reply."""
    import html
    import json
    import re

    from transformers import GenerationConfig
    from typer.testing import CliRunner

    from sftune import models
    from sftune.cli import app
    from tests.templates.test_official_spans import PLAIN, stand_in

    tokenizer, eos_ids = stand_in(smollm2_tokenizer, "glm4.5")
    folder = tmp_path / "glm"
    tokenizer.save_pretrained(folder)
    GenerationConfig(eos_token_id=eos_ids).save_pretrained(folder)
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": PLAIN}) + "\n")
    page = data_tab.inspect_html([str(data)], str(folder), limit=1, roots=roots)
    head, record = page.split("</p>", 1)
    line = html.unescape(re.search(r"<span class='sftune-stops-appended'>(.*?)</span>", head, re.S).group(1))
    out = CliRunner().invoke(app, ["data", "inspect", str(data), "--model", str(folder)])
    assert out.exit_code == 0, out.output
    assert "appends '<|user|>'" in line and " ".join(line.split()) in " ".join(out.output.split())
    trained = [html.unescape(t) for t in re.findall(r"<span class='sftune-trained'>(.*?)</span>", record, re.S)]
    assert "".join(trained).endswith("It is 4.<|user|>")
    # a template that writes its stops: the tab names them, as the command line does
    plain = data_tab.inspect_html([str(data)], models.DEFAULT_MODEL, limit=1, roots=roots).split("</p>", 1)[0]
    assert "<span class='sftune-stops'>stop tokens: &lt;|im_end|&gt;</span>" in plain
