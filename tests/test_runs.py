"""runs.load: a run folder answers with its trained weights, its training template and its stop tokens."""

from __future__ import annotations

import shutil

import pytest
import torch

from sftune import runs, templates
from tests.training.test_recipe import run_config


@pytest.fixture
def lora_run(tmp_path, tiny_checkpoint):  # noqa: F811
    from sftune import train

    cfg = run_config(tmp_path, tiny_checkpoint, data={"template": "chatml"}, train={"max_steps": 2})
    return train(cfg).run_dir, tiny_checkpoint


def test_a_lora_run_loads_base_plus_adapter_with_its_template(lora_run):
    from peft import PeftModel

    run_dir, base_dir = lora_run
    loaded = runs.load(run_dir)
    assert isinstance(loaded.model, PeftModel) and not loaded.model.training
    assert loaded.base == str(base_dir) and loaded.method == "lora" and loaded.is_adapter
    assert runs.base_model_of(run_dir) == str(base_dir) and runs.base_model_of(base_dir) is None
    # the run was trained with the chatml built-in (not the model's own template): inference renders it too
    chatml = templates.get("chatml", loaded.tokenizer)
    messages = [{"role": "user", "content": "hi"}]
    assert loaded.template.render(messages, add_generation_prompt=True) == chatml.render(
        messages, add_generation_prompt=True)
    assert loaded.tokenizer.chat_template == chatml.to_jinja()
    assert loaded.stop_token_ids == sorted({loaded.tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                            loaded.tokenizer.eos_token_id})
    # the adapter is applied: its logits differ from the base model's, and merging keeps them
    ids = torch.tensor([[1, 2, 3, 4]])
    base = runs.load(base_dir)
    with torch.no_grad():
        tuned, plain = loaded.model(ids).logits, base.model(ids).logits
        merged = runs.load(run_dir, merge=True).model(ids).logits
    assert not torch.allclose(tuned, plain)
    assert torch.allclose(merged, tuned, atol=1e-5)


def test_a_run_refuses_another_template_and_an_edited_tokenizer(lora_run, tmp_path):
    run_dir, _ = lora_run
    with pytest.raises(runs.RunError, match="trained with template 'chatml'"):
        runs.load(run_dir, template="llama3")
    edited = tmp_path / "edited"
    shutil.copytree(run_dir, edited)
    config = (edited / "tokenizer_config.json").read_text()
    (edited / "tokenizer_config.json").write_text(config.replace("<|im_start|>assistant", "<|im_start|>bot"))
    if (edited / "chat_template.jinja").exists():
        text = (edited / "chat_template.jinja").read_text()
        (edited / "chat_template.jinja").write_text(text.replace("<|im_start|>assistant", "<|im_start|>bot"))
    with pytest.raises(runs.RunError, match="differs from the template in config.yaml"):
        runs.load(edited)


def test_a_plain_model_gets_its_own_template_or_the_one_asked(tiny_checkpoint):  # noqa: F811
    loaded = runs.load(tiny_checkpoint)
    assert loaded.run_dir is None and loaded.base is None and loaded.method is None
    assert loaded.template.name == "tokenizer"
    assert runs.load(tiny_checkpoint, template="llama3").template.name == "llama3"


def test_a_folder_without_config_is_not_a_run(tmp_path):
    assert not runs.is_run(tmp_path)
    with pytest.raises(runs.RunError, match="not a run folder"):
        runs.run_config(tmp_path)
