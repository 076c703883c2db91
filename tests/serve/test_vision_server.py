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
from tests.vision.conftest import images, vision_run, vlm_folder  # noqa: F401  (the tiny trained LLaVA run)


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


def test_image_parts_answered_as_generation_answers(served_vision, vision_run, images):  # noqa: F811
    url, name = served_vision
    asks = [messages(data_url(images["red"])), messages(data_url(images["blue"]), "And this one?"),
            [{"role": "user", "content": "Only text, no image."}]]
    expected = reference(vision_run, asks, 8)
    assert any(expected)
    for ask, answer in zip(asks, expected):
        reply = client(url).chat.completions.create(model=name, messages=ask, max_tokens=8, temperature=0)
        assert reply.choices[0].message.content == answer
        assert reply.usage.prompt_tokens > 0
    pieces = [c.choices[0].delta.content or "" for c in client(url).chat.completions.create(
        model=name, messages=asks[0], max_tokens=8, temperature=0, stream=True) if c.choices]
    assert "".join(pieces) == expected[0]
    # concurrent requests with and without images share decode steps and still answer as alone
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda a: client(url).chat.completions.create(
            model=name, messages=a, max_tokens=8, temperature=0).choices[0].message.content, asks * 2))
    assert got == expected * 2


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
