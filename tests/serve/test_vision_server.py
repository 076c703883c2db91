"""A vision-language run served on loopback, through the official `openai` client: image parts (data URLs) are
answered as sftune.vision.generate answers them; paths, web URLs and broken images get 400; a text-only run
refuses image parts with 400; more LoRA runs on the vision run's base (--adapter) and the base itself answer
with images, each as its own run answers alone."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from sftune import runs
from sftune.generation import GenerationOptions
from sftune.serve import adapters
from sftune.serve.server import create_app
from sftune.vision import generate as vision_generate
from sftune.serve.background import running
from tests.vision.conftest import images, qwen_run, vision_run, vlm_folder  # noqa: F401  (tiny trained runs)


def data_url(path) -> str:
    return "data:image/png;base64," + base64.b64encode(open(path, "rb").read()).decode()


def messages(url: str, question: str = "What colour is it?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": question},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def served_vision(vision_run):  # noqa: F811
    model, tokenizer, names = adapters.load(str(vision_run))
    with running(create_app(model, tokenizer, names, max_batch_size=8)) as url:
        yield url, vision_run.name


def reference(run, conversations, max_tokens):
    loaded = runs.load(run)
    return [c.text for c in vision_generate.generate(loaded, conversations, GenerationOptions(max_new_tokens=max_tokens),
                                                     batch_size=1)]


def assert_served_as(url, name, asks, expected, *, max_tokens, streamed):
    """The server answers each ask with its expected text: one at a time (with a counted prompt), the ask
    `streamed` streamed, and all of them twice concurrently (requests with and without images share decode
    steps and still answer as alone)."""
    for ask, answer in zip(asks, expected):
        reply = client(url).chat.completions.create(model=name, messages=ask, max_tokens=max_tokens, temperature=0)
        assert reply.choices[0].message.content == answer and reply.usage.prompt_tokens > 0
    pieces = [c.choices[0].delta.content or "" for c in client(url).chat.completions.create(
        model=name, messages=asks[streamed], max_tokens=max_tokens, temperature=0, stream=True) if c.choices]
    assert "".join(pieces) == expected[streamed]
    with ThreadPoolExecutor(2 * len(asks)) as pool:
        got = list(pool.map(lambda a: client(url).chat.completions.create(
            model=name, messages=a, max_tokens=max_tokens, temperature=0).choices[0].message.content, asks * 2))
    assert got == expected * 2


def test_image_parts_answered_as_generation_answers(served_vision, vision_run, images):  # noqa: F811
    url, name = served_vision
    asks = [messages(data_url(images["red"])), messages(data_url(images["blue"]), "And this one?"),
            [{"role": "user", "content": "Only text, no image."}]]
    expected = reference(vision_run, asks, 8)
    assert any(expected)
    assert_served_as(url, name, asks, expected, max_tokens=8, streamed=0)


def test_paths_web_urls_and_broken_images_get_400(served_vision, images):  # noqa: F811
    url, name = served_vision
    cases = {images["red"]: "data URLs only", "https://example.com/cat.png": "data URLs only",
             "data:image/png;base64,not-base64!": "does not decode",
             "data:image/png;base64," + base64.b64encode(b"not a png").decode(): "does not decode as an image"}
    for image, said in cases.items():
        with pytest.raises(openai.BadRequestError) as err:
            client(url).chat.completions.create(model=name, messages=messages(image), max_tokens=4)
        assert said in err.value.message and "messages[0].content[1]" in err.value.message, err.value.message
    with pytest.raises(openai.BadRequestError, match="2 image placeholders but 1 images"):
        client(url).chat.completions.create(model=name, max_tokens=4, messages=[
            {"role": "user", "content": [{"type": "text", "text": "<image> two?"},
                                         {"type": "image_url", "image_url": {"url": data_url(images["red"])}}]}])


def test_a_text_only_run_refuses_image_parts(base_dir, images):  # noqa: F811
    model, tokenizer, names = adapters.load(str(base_dir))
    with running(create_app(model, tokenizer, names)) as url:
        with pytest.raises(openai.BadRequestError) as err:
            client(url).chat.completions.create(model=str(base_dir), messages=messages(data_url(images["red"])),
                                                max_tokens=4)
    assert err.value.status_code == 400 and "text-only run" in err.value.message
    assert err.value.body["param"] == "messages[0].content[1]" and err.value.body["code"] == "image_input_not_supported"


@pytest.fixture(scope="module")
def second_vision_run(vision_run, vlm_folder, tmp_path_factory):  # noqa: F811
    """Another LoRA run on the same tiny LLaVA base (another seed and learning rate)."""
    from sftune.training.recipe import train
    from sftune.vision import shapes

    root = tmp_path_factory.mktemp("vision-run-2")
    data = shapes.write(root / "data", 8, seed=1)
    train({"model": {"name": str(vlm_folder("llava"))}, "data": {"train": [str(data)], "max_len": 128},
           "method": {"name": "lora"}, "train": {"max_steps": 2, "batch_size": 4, "lr": 5e-2, "seed": 7},
           "vision": {"train_projector": True}, "output": {"dir": str(root / "run")}})
    return root / "run"


def test_adapters_beside_a_vision_run_answer_images_as_each_run_alone(vision_run, second_vision_run, vlm_folder,
                                                                      images):  # noqa: F811
    base = str(vlm_folder("llava"))
    model, tokenizer, names = adapters.load(str(vision_run), {"second": str(second_vision_run)})
    assert set(names) == {vision_run.name, base, "second"} and all(s.processor is not None for s in names.values())
    ask = messages(data_url(images["red"]))
    expected = {name: reference(folder, [ask], 8)[0]
                for name, folder in ((vision_run.name, vision_run), ("second", second_vision_run), (base, base))}
    assert len(set(expected.values())) > 1  # the three models answer differently: the switch is seen
    with running(create_app(model, tokenizer, names, max_batch_size=4)) as url:
        with ThreadPoolExecutor(6) as pool:  # interleaved requests for the three names
            got = list(pool.map(lambda name: (name, client(url).chat.completions.create(
                model=name, messages=ask, max_tokens=8, temperature=0).choices[0].message.content),
                list(expected) * 2))
    assert got == [(name, expected[name]) for name in list(expected) * 2]


def _qwen_asks(images):  # noqa: F811
    return [messages(data_url(images["red"])), messages(data_url(images["blue"]), "And this one?"),
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(images["blue"])}},
                                          {"type": "text", "text": "Two?"},
                                          {"type": "image_url", "image_url": {"url": data_url(images["red"])}}]}],
            [{"role": "user", "content": "Only text, no image."}]]


def test_qwen2_vl_run_served_as_generate_answers(qwen_run, images):  # noqa: F811
    """Qwen2-VL's 3-D rope: the server prefills an image prompt with the model's own positions and decodes
    at text position + the prompt's rope delta. Greedy answers equal model.generate's (batch_size=1), which
    equal sftune.vision.generate's batched (left-padded) answers; served alone, streamed and concurrently."""
    asks = _qwen_asks(images)
    expected = reference(qwen_run, asks, 12)
    loaded = runs.load(qwen_run)
    batched = [c.text for c in vision_generate.generate(loaded, asks, GenerationOptions(max_new_tokens=12),
                                                        batch_size=8)]
    assert batched == expected and len(set(expected)) > 1
    model, tokenizer, names = adapters.load(str(qwen_run))
    with running(create_app(model, tokenizer, names, max_batch_size=8)) as url:
        assert_served_as(url, qwen_run.name, asks, expected, max_tokens=12, streamed=2)


def _qwen_requests(model, tokenizer, served, asks, options, finished):
    from sftune.serve import images as serve_images
    from sftune.serve.batching import Request

    requests = []
    for ask in asks:
        if serve_images.parts(ask):
            ids, inputs = serve_images.prompt(ask, None, served, model)
        else:
            ids, inputs = tokenizer(vision_generate.render_prompt(vision_generate.conversation_of(ask),
                                                                  served.processor, served.template),
                                    add_special_tokens=False)["input_ids"], None
        requests.append(Request(ids, options, frozenset(served.stop_token_ids), model_inputs=inputs,
                                on_event=lambda e: "done" in e and finished.release()))
    return requests


def _run(batcher, requests, finished):
    for request in requests:
        batcher.submit(request)
    if not batcher._thread.is_alive():
        batcher.start()
    for _ in requests:
        assert finished.acquire(timeout=120)


def test_qwen2_vl_batcher_decodes_with_the_rope_delta(qwen_run, images):  # noqa: F811
    """Each prompt alone: the batcher's logits at every step equal model.generate's (prefill with the
    model's 3-D positions, decode at text position + rope delta; the delta is the one transformers keeps,
    nonzero for images). Then all prompts in one batch: the same tokens."""
    import threading

    import torch

    from sftune.serve.batching import Batcher

    model, tokenizer, names = adapters.load(str(qwen_run))
    served = next(iter(names.values()))
    asks = _qwen_asks(images)
    options = GenerationOptions(max_new_tokens=8)
    finished = threading.Semaphore(0)
    seen = []
    hook = model.register_forward_hook(lambda module, args, out: seen.append(out.logits[:, -1].clone()))
    batcher = Batcher(model, tokenizer, max_batch_size=8)
    alone = []
    inner = next(m for m in model.modules() if hasattr(m, "rope_deltas"))
    for ask in asks:
        [request] = _qwen_requests(model, tokenizer, served, [ask], options, finished)
        seen.clear()
        _run(batcher, [request], finished)
        served_logits = seen[:len(request.tokens)]
        prompt = torch.tensor([request.prompt_ids])
        with torch.no_grad():
            out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
                                 do_sample=False, eos_token_id=sorted(request.stop_token_ids), output_logits=True,
                                 return_dict_in_generate=True, **(request.model_inputs or {}))
        assert request.tokens == out.sequences[0, prompt.shape[1]:].tolist()[:len(request.tokens)]
        for mine, theirs in zip(served_logits, out.logits):
            torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)
        assert request.rope_delta == int(inner.rope_deltas[0, 0])
        assert (request.rope_delta != 0) == bool(request.model_inputs)
        alone.append(request.tokens)
    hook.remove()
    together = _qwen_requests(model, tokenizer, served, asks, options, finished)
    _run(batcher, together, finished)
    batcher.stop()
    assert [r.tokens for r in together] == alone
