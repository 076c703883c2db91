"""Generation with a vision-language run: runs.load reads the run back, prompts are the training prompts'
ids, batched answers equal one-at-a-time answers and transformers' own generate."""

from __future__ import annotations

import pytest
import torch

from sftune import runs
from sftune.data import read
from sftune.encode import IGNORE
from sftune.generation import GenerationOptions
from sftune.vision import encode as vision_encode
from sftune.vision import generate as vision_generate
from sftune.vision import shapes


def _parts(path, question=shapes.QUESTION):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(path)}},
                                         {"type": "text", "text": question}]}]


def test_load_gives_processor_template_and_adapter(vision_run):
    loaded = runs.load(vision_run)
    assert loaded.is_vision and loaded.is_adapter and loaded.method == "lora"
    assert loaded.tokenizer is loaded.processor.tokenizer
    assert loaded.template.to_jinja() == loaded.tokenizer.chat_template  # the training template
    assert loaded.stop_token_ids == loaded.template.stop_token_ids(loaded.tokenizer)
    # the trained projector and adapter are what answers: not the base model's weights
    base = loaded.model.get_base_model() if hasattr(loaded.model, "get_base_model") else None
    assert base is not None and any("modules_to_save" in n for n, _ in loaded.model.named_parameters())


def test_prompt_ids_equal_training_prompt_ids(vision_run, tmp_path, images):
    """The training encoder's ids before the first trained token are the generation prompt's ids."""
    loaded = runs.load(vision_run)
    data = shapes.write(tmp_path, 3, seed=5)
    for conversation in read([data]):
        row = vision_encode.encode(conversation, loaded.processor, loaded.template)
        first = next(k for k, label in enumerate(row["labels"]) if label != IGNORE)
        prompt = conversation.__class__(conversation.messages[:-1], images=conversation.images)
        ids = vision_generate.prompt_inputs(prompt, loaded.processor, loaded.template)["input_ids"][0].tolist()
        assert ids == row["input_ids"][:first]
    # the OpenAI-parts form of the same question renders the same ids
    parts = vision_generate.conversation_of(_parts(images["red"]))
    ids = vision_generate.prompt_inputs(parts, loaded.processor, loaded.template)["input_ids"][0].tolist()
    ref = vision_generate.conversation_of({"messages": [{"role": "user", "content": "<image>\n" + shapes.QUESTION}],
                                           "images": [images["red"]]})
    assert ids == vision_generate.prompt_inputs(ref, loaded.processor, loaded.template)["input_ids"][0].tolist()


def transformers_greedy(loaded, messages, max_new_tokens):
    """transformers' greedy generate on the processor's own inputs for one conversation: the new token ids,
    cut before the first stop token (what sftune's answer should hold)."""
    inputs = vision_generate.prompt_inputs(vision_generate.conversation_of(messages), loaded.processor, loaded.template)
    tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        out = loaded.model.generate(**tensors, max_new_tokens=max_new_tokens, do_sample=False,
                                    eos_token_id=loaded.stop_token_ids, pad_token_id=loaded.tokenizer.pad_token_id)
    new = out[0, tensors["input_ids"].shape[1]:].tolist()
    return new[:next((k for k, t in enumerate(new) if t in loaded.stop_token_ids), len(new))]


def test_batched_equals_alone_and_transformers_generate(vision_run, images):
    loaded = runs.load(vision_run)
    options = GenerationOptions(max_new_tokens=6)
    convs = [_parts(images["red"]), _parts(images["blue"], "Colour?"), [{"role": "user", "content": "No image here"}]]
    batched = vision_generate.generate(loaded, convs, options, batch_size=8)
    alone = [vision_generate.generate(loaded, [c], options, batch_size=1)[0] for c in convs]
    assert [c.token_ids for c in batched] == [c.token_ids for c in alone]
    assert any(c.token_ids for c in batched)  # answers, not empty strings that would compare equal anyway
    # reference: transformers' generate on the processor's own output, cut at the first stop token
    new = transformers_greedy(loaded, convs[0], 6)
    assert batched[0].token_ids == new and batched[0].text == loaded.tokenizer.decode(new, skip_special_tokens=True)
    streamed = "".join(vision_generate.stream(loaded, convs[0], options))
    assert streamed == batched[0].text


def test_sampling_with_a_seed_repeats(vision_run, images):
    loaded = runs.load(vision_run)
    options = GenerationOptions(max_new_tokens=5, temperature=1.0, seed=3)
    a = vision_generate.generate(loaded, [_parts(images["red"])], options)
    b = vision_generate.generate(loaded, [_parts(images["red"])], options)
    assert a[0].token_ids == b[0].token_ids


def test_image_count_must_match(vision_run, images):
    loaded = runs.load(vision_run)
    conv = vision_generate.conversation_of({"messages": [{"role": "user", "content": "<image> <image> two?"}],
                                            "images": [images["red"]]})
    with pytest.raises(ValueError, match="2 image placeholders but 1 images"):
        vision_generate.prompt_inputs(conv, loaded.processor, loaded.template)


def test_generate_file_answers_image_records(vision_run, tmp_path):
    """`sftune generate` on a vision run: each record's image goes with its prompt (answers equal generate's)."""
    import json

    from sftune.serve.batch import GenerateError, generate_file

    loaded = runs.load(vision_run)
    data = shapes.write(tmp_path, 3, seed=7)
    options = GenerationOptions(max_new_tokens=5)
    summary = generate_file(loaded, data, tmp_path / "out.jsonl", options, batch_size=2, progress=False)
    assert summary["written"] == 3
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    prompts = [c.__class__(c.messages[:-1], images=c.images) for c in read([data])]
    expected = vision_generate.generate(loaded, prompts, options)
    assert [r["answer"] for r in records] == [e.text for e in expected]
    assert all(len(r["images"]) == 1 for r in records)
    text_only = runs.Loaded("text-run", loaded.model, loaded.tokenizer, loaded.template, loaded.stop_token_ids)
    with pytest.raises(GenerateError, match="has images, but text-run is a text-only run"):
        generate_file(text_only, data, tmp_path / "out2.jsonl", options, progress=False)


@pytest.mark.parametrize("family", ["idefics3", "gemma3"])
def test_plain_model_folders_answer_as_transformers_generate(family, vlm_folder, images):
    """A plain Idefics3 (SmolVLM) / Gemma 3 folder: runs.load gives its processor; sftune's greedy answers,
    batched, alone and streamed, equal model.generate on the processor's own inputs."""
    loaded = runs.load(vlm_folder(family))
    assert loaded.is_vision and loaded.run_dir is None and loaded.tokenizer is loaded.processor.tokenizer
    options = GenerationOptions(max_new_tokens=6)
    convs = [_parts(images["red"]), _parts(images["blue"], "Colour?"), [{"role": "user", "content": "No image"}]]
    batched = vision_generate.generate(loaded, convs, options, batch_size=8)
    alone = [vision_generate.generate(loaded, [c], options, batch_size=1)[0] for c in convs]
    assert [c.token_ids for c in batched] == [c.token_ids for c in alone]
    for conv, got in zip(convs, alone):
        assert got.token_ids == transformers_greedy(loaded, conv, 6)
        assert "".join(vision_generate.stream(loaded, conv, options)) == got.text
    assert any(c.token_ids for c in alone)  # answers, not empty lists that would compare equal anyway
    first = vision_generate.prompt_inputs(vision_generate.conversation_of(convs[0]), loaded.processor, loaded.template)
    assert len(set(first["input_ids"][0].tolist()) & vision_encode.image_token_ids(loaded.processor)) > 0
