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


def test_load_weights_gives_the_adapter_trainable_merged_or_beside_another(lora_run):
    """The one loader of a run folder: its adapter frozen (inference), trainable (continued training), folded in
    (merging), or one more adapter on a model that holds one (serving): each answers as the adapter alone."""
    from peft import PeftModel

    run_dir, base_dir = lora_run
    ids = torch.tensor([[1, 2, 3, 4]])
    frozen, tokenizer, template = runs.load_weights(run_dir)
    assert isinstance(frozen, PeftModel) and template.name == "chatml" and tokenizer.pad_token is not None
    assert not any(p.requires_grad for p in frozen.parameters())
    trainable, _, _ = runs.load_weights(run_dir, trainable=True)
    grads = [name for name, p in trainable.named_parameters() if p.requires_grad]
    assert grads and all("lora_" in name for name in grads)
    merged, _, _ = runs.load_weights(run_dir, merge=True)
    assert not isinstance(merged, PeftModel)
    from sftune import models

    base, _ = models.load(base_dir)
    served = runs.attach_adapter(runs.attach_adapter(base, run_dir), run_dir, name="second")
    assert set(served.peft_config) == {"default", "second"}
    served.set_adapter("second")
    with torch.no_grad():
        want = frozen.eval()(ids).logits
        assert torch.allclose(merged.eval()(ids).logits, want, atol=1e-5)
        assert torch.allclose(served.eval()(ids).logits, want, atol=1e-5)


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


def test_a_run_moved_elsewhere_loads_and_exports_from_any_folder(tmp_path, tiny_checkpoint, monkeypatch):
    """Trained with paths relative to the working directory (model, data, output.dir), the run folder is moved and
    checked from another folder: config.yaml keeps outside paths absolute and paths inside the run relative to it."""
    import json

    from typer.testing import CliRunner

    from sftune import train
    from sftune.cli import app
    from sftune.demo import write_dataset

    project, elsewhere, other = tmp_path / "project", tmp_path / "elsewhere", tmp_path / "other"
    for folder in (project, elsewhere, other):
        folder.mkdir()
    shutil.move(tiny_checkpoint, project / "model")
    monkeypatch.chdir(project)
    train_file, eval_file = write_dataset(project / "data", n_train=8, n_eval=2)
    (project / "runs" / "r" / "data").mkdir(parents=True)
    shutil.move(eval_file, project / "runs" / "r" / "data" / "eval.jsonl")  # held-out data inside the run folder
    train({"model": {"name": "model"}, "data": {"train": "data/train.jsonl", "eval": "runs/r/data/eval.jsonl",
                                                 "max_len": 64},
           "method": {"name": "lora", "r": 4}, "train": {"max_steps": 2, "batch_size": 2, "save_steps": 1000},
           "eval": {"steps": 1000}, "output": {"dir": "runs/r"}})
    moved = elsewhere / "moved-run"
    shutil.move(project / "runs" / "r", moved)
    monkeypatch.chdir(other)

    cfg = runs.run_config(moved)
    assert cfg.model.name == str(project / "model") and cfg.data.train == [str(train_file)]
    assert cfg.data.eval == [str(moved / "data" / "eval.jsonl")] and cfg.output.dir == str(moved)
    adapter = json.loads((moved / runs.ADAPTER_CONFIG).read_text())
    assert adapter["base_model_name_or_path"] == str(project / "model")  # other tools find the base too
    result = CliRunner().invoke(app, ["export", str(moved), "-o", "out", "--check", "--check-count", "1",
                                      "--check-max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads((other / "out" / "export.json").read_text())["check"]["ok"] is True


@pytest.mark.parametrize("capability, dtype", [((7, 0), torch.float16), ((7, 5), torch.float16),
                                               ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)],
                         ids=["v100", "t4", "a100", "h100"])
def test_inference_runs_on_the_gpu_in_its_half_precision(monkeypatch, capability, dtype):
    from tests.test_hardware import fake_gpu

    assert runs.placement(cuda=False) == ("cpu", torch.float32)
    fake_gpu(monkeypatch, capability)
    assert runs.placement() == ("cuda", dtype)
    assert runs.placement("bf16") == ("cuda", dtype) and runs.placement("auto") == ("cuda", dtype)
    assert runs.placement("fp32") == ("cuda", torch.float32)  # a run trained in fp32 answers in fp32
    assert runs.placement(dtype=torch.float32) == ("cuda", torch.float32)  # the caller's dtype is kept


def test_load_places_the_model_on_the_gpu_and_leaves_the_cpu_path_as_it_was(monkeypatch, tiny_checkpoint):
    """runs.load asks for the whole model on the GPU in bf16 there; on the CPU it loads fp32, in place, as before."""
    from sftune import models
    from tests.test_hardware import fake_gpu

    loaded = runs.load(tiny_checkpoint)
    assert loaded.model.dtype == torch.float32 and loaded.model.device.type == "cpu"
    assert getattr(loaded.model, "hf_device_map", None) is None
    asked = []
    real_load = models.load

    def record(name, **options):
        asked.append(options)
        return real_load(name, **{**options, "device_map": None})

    monkeypatch.setattr(models, "load", record)
    runs.load(tiny_checkpoint)
    assert asked[-1]["dtype"] == torch.float32 and asked[-1]["device_map"] is None
    fake_gpu(monkeypatch, (9, 0))
    runs.load(tiny_checkpoint)
    assert asked[-1]["dtype"] == torch.bfloat16 and asked[-1]["device_map"] == {"": "cuda"}


def test_a_qlora_run_loads_its_4bit_base_on_the_gpu_with_one_device_map(monkeypatch, tmp_path, tiny_checkpoint):
    """The 4-bit base goes where methods.load_kwargs puts it (this process's GPU), with one device_map: runs.load
    once passed its own as well ("got multiple values for keyword argument 'device_map'")."""
    from sftune import config, methods, models
    from tests.test_hardware import fake_gpu

    cfg = config.load(run_config(tmp_path, tiny_checkpoint, method={"name": "qlora"}))
    run_dir = tmp_path / "qlora-run"
    run_dir.mkdir()
    runs.write_config(run_dir, cfg)
    (run_dir / runs.ADAPTER_CONFIG).write_text("{}")
    fake_gpu(monkeypatch, (8, 0))
    monkeypatch.setattr(methods, "_check_4bit_runs", lambda device, dtype, method: None)  # no GPU to run it on
    asked = []

    class Stop(Exception):
        pass

    def record(name, **options):
        asked.append((name, options))
        raise Stop

    monkeypatch.setattr(models, "load", record)
    with pytest.raises(Stop):
        runs.load(run_dir)
    (name, options), = asked
    assert name == str(tiny_checkpoint) and options["device_map"] == {"": 0}
    assert options["dtype"] == torch.bfloat16
    assert options["quantization_config"].bnb_4bit_compute_dtype == torch.bfloat16
    assert runs.load_options("cuda", torch.bfloat16, "auto", cfg.method)["device_map"] == "auto"  # the caller's wins


def test_a_run_answers_in_the_mode_its_template_kwargs_chose(tmp_path, tiny_checkpoint):  # noqa: F811
    """data.template_kwargs is saved with the run (config.yaml, and written into the tokenizer's chat_template, so
    any tool rendering it gets the mode): loading the run renders the switched generation prompt."""
    from sftune import train
    from sftune.templates.definitions import NO_THINK

    data = {"template": "qwen3", "template_kwargs": {"enable_thinking": False}}
    cfg = run_config(tmp_path, tiny_checkpoint, data=data, train={"max_steps": 1})
    run_dir = train(cfg).run_dir
    loaded = runs.load(run_dir)
    chat = [{"role": "user", "content": "Hi"}]
    assert loaded.template.kwargs == {"enable_thinking": False}
    assert loaded.template.render(chat, add_generation_prompt=True).endswith("<|im_start|>assistant\n" + NO_THINK)
    assert loaded.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        loaded.template.render(chat, add_generation_prompt=True)
    assert "{% set enable_thinking = false %}" in loaded.tokenizer.chat_template
    with pytest.raises(runs.RunError, match="trained with data.template_kwargs"):
        runs.load(run_dir, template_kwargs={"enable_thinking": True})
