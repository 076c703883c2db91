"""sftune export: the merged folder answers as the run does, and runtimes see the training template and stops."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from typer.testing import CliRunner

from sftune import runs
from sftune.cli import app
from sftune.export import ExportError, export
from tests.export.conftest import train_tiny_run

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "住在重庆的张伟, age 37? Hello!"}]


def prompt_ids(loaded) -> torch.Tensor:
    text = loaded.template.render(MESSAGES, add_generation_prompt=True)
    return torch.tensor([loaded.tokenizer(text, add_special_tokens=False)["input_ids"]])


def test_merged_logits_equal_the_adapter(lora_run, exported):
    loaded = runs.load(lora_run)  # base + adapter, as the run answers
    merged = AutoModelForCausalLM.from_pretrained(exported).eval()  # plain transformers, no sftune, no peft
    ids = prompt_ids(loaded)
    with torch.no_grad():
        want, got = loaded.model(ids).logits, merged(ids).logits
        base = runs.load(loaded.base).model(ids).logits
    assert (want - base).abs().max() > 1e-3  # the adapter changes the answer, so the merge has something to show
    assert (want - got).abs().max() <= 1e-4
    summary = json.loads((exported / "export.json").read_text())
    assert summary["merged"] is True and summary["method"] == "lora"


def test_tokenizer_template_and_generation_config_are_the_runs(lora_run, exported):
    loaded = runs.load(lora_run)
    tokenizer = AutoTokenizer.from_pretrained(exported)
    assert tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False) \
        == prompt_ids(loaded)[0].tolist()
    eos = GenerationConfig.from_pretrained(exported).eos_token_id
    eos = [eos] if isinstance(eos, int) else eos
    end_of_turn = tokenizer.convert_tokens_to_ids(loaded.template.stop)
    assert eos[0] == end_of_turn and set(eos) == set(loaded.stop_token_ids)


def test_a_run_whose_template_was_edited_is_not_exported(lora_run, tmp_path):
    """export loads the run as every loader does (runs.load_weights): a config.yaml whose template is not the one
    saved in the run's tokenizer is refused, rather than exported with a template training never rendered."""
    from sftune import config

    edited = tmp_path / "edited"
    shutil.copytree(lora_run, edited)
    cfg = runs.run_config(edited)
    assert cfg.data.template is None  # trained with SmolLM2's own template; config.yaml now says chatml
    cfg.data.template = "chatml"
    (edited / runs.RUN_CONFIG).write_text(config.to_yaml(cfg), encoding="utf-8")
    with pytest.raises(runs.RunError, match="differs from the template in config.yaml"):
        export(edited, tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_prompt_tuning_cannot_be_merged(tmp_path, smollm2_tokenizer):
    run = train_tiny_run(tmp_path, smollm2_tokenizer, method={"name": "prompt_tuning", "num_virtual_tokens": 4},
                         steps=1)
    with pytest.raises(ExportError, match="prompt_tuning .*cannot be merged.*sftune chat"):
        export(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(app, ["export", str(run), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.output.startswith("error:") and "prompt_tuning" in result.output


def test_cli_export_with_check(lora_run, tmp_path):
    result = CliRunner().invoke(app, ["export", str(lora_run), "-o", str(tmp_path / "out"), "--check",
                                      "--check-count", "2", "--check-max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert "LoRA merged into the base" in " ".join(result.output.split())
    summary = json.loads((tmp_path / "out" / "export.json").read_text())
    assert summary["check"]["ok"] is True and "gguf" not in summary


def test_full_run_is_saved_as_trained_with_the_stop_fix(tmp_path, smollm2_tokenizer):
    run = train_tiny_run(tmp_path, smollm2_tokenizer, method={"name": "full"}, steps=1)
    summary = export(run, tmp_path / "out")
    assert summary["merged"] is False
    loaded = runs.load(run)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = prompt_ids(loaded)
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, exported(ids).logits)
    assert GenerationConfig.from_pretrained(tmp_path / "out").eos_token_id == loaded.stop_token_ids[0]


def test_qlora_merges_into_the_full_precision_base_and_says_so(tmp_path, smollm2_tokenizer):
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel

    run = train_tiny_run(tmp_path, smollm2_tokenizer, method={"name": "qlora", "r": 4, "alpha": 16}, steps=2)
    summary = export(run, tmp_path / "out")
    assert summary["merged"] and "dequantized" in summary["note"]
    assert "dequantized" in json.loads((tmp_path / "out" / "export.json").read_text())["note"]
    # the reference: the adapter on the base in float32 (what the merge folds it into)
    config = runs.run_config(run)
    base = AutoModelForCausalLM.from_pretrained(config.model.name, dtype=torch.float32).eval()
    adapter = PeftModel.from_pretrained(base, str(run)).eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert not any("4bit" in type(m).__name__ for m in merged.modules())
    ids = prompt_ids(runs.load(config.model.name))
    with torch.no_grad():
        assert (adapter(ids).logits - merged(ids).logits).abs().max() <= 1e-4


def test_export_never_writes_over_the_run_or_its_base(lora_run):
    base = runs.run_config(lora_run).model.name
    folder = lora_run.parent  # holds the run and its base model's folder

    def files():
        return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    before = files()
    cases = [(lora_run, f"output {lora_run} is the input {lora_run}"),
             (lora_run / "merged", f"output {lora_run / 'merged'} is inside the input folder {lora_run}"),
             (folder, f"output {folder} is a folder that holds the input {lora_run}"),
             (base, f"output {base} is the input {base}")]
    for out, says in cases:
        result = CliRunner().invoke(app, ["export", str(lora_run), "-o", str(out)], env={"COLUMNS": "1000"})
        assert result.exit_code == 2 and says in result.output.replace("\n", ""), result.output
    with pytest.raises(ValueError, match="is the input"):
        export(lora_run, base)
    assert files() == before
