"""sftune chat with a vision-language run: /image PATH attaches an image to the next message, and each answer
is sftune.vision.generate's greedy answer to the whole history (images included)."""

from __future__ import annotations

import io

from rich.console import Console

from sftune import generation, runs
from sftune.serve.chat import chat_loop
from sftune.vision import generate as vision_generate
from tests.vision.conftest import images, vision_run, vlm_folder  # noqa: F401  (the tiny trained LLaVA run)

OPTIONS = generation.GenerationOptions(max_new_tokens=8)


def image_part(path):
    return {"type": "image_url", "image_url": {"url": path}}


def test_image_command_attaches_to_the_next_message(vision_run, images, tmp_path):  # noqa: F811
    loaded = runs.load(vision_run)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    out = io.StringIO()
    lines = [f"/image {images['red']}", "What colour?", f"/image {tmp_path / 'broken.png'}", "/image",
             "And now?", f"/image {images['blue']}", "This one?", "/exit"]
    history = chat_loop(loaded, iter(lines), Console(file=out, width=300), OPTIONS)

    def greedy(messages):
        return vision_generate.generate(loaded, [messages], OPTIONS)[0].text

    turn1 = [{"role": "user", "content": [image_part(images["red"]), {"type": "text", "text": "What colour?"}]}]
    a1 = greedy(turn1)
    turn2 = turn1 + [{"role": "assistant", "content": a1}, {"role": "user", "content": "And now?"}]
    a2 = greedy(turn2)  # the broken image was refused, so "And now?" has no image
    turn3 = turn2 + [{"role": "assistant", "content": a2},
                     {"role": "user", "content": [image_part(images["blue"]), {"type": "text", "text": "This one?"}]}]
    a3 = greedy(turn3)
    assert history == turn3 + [{"role": "assistant", "content": a3}]
    text = out.getvalue()
    assert "image 40x30 attached" in text and "does not decode as an image" in text and "/image PATH" in text
    assert a1 + "\n" in text and a3 + "\n" in text and any((a1, a2, a3))


def test_image_command_in_a_text_only_run_is_refused(lora_run, images):  # noqa: F811
    loaded = runs.load(lora_run)
    out = io.StringIO()
    history = chat_loop(loaded, iter([f"/image {images['red']}", "Hi", "/exit"]), Console(file=out, width=300),
                        OPTIONS)
    assert "text-only run" in out.getvalue()
    assert history[0] == {"role": "user", "content": "Hi"}  # no image attached
