"""The Data and Chat tabs with image-text data and a vision-language run, each against the library call it
wraps: the check's image count and gallery (the records' own images), inspect's images and masked image runs
(vision.encode), the chat's answers with images (vision.generate, greedy), a text-only run's refusal."""

from __future__ import annotations

import base64
import html
import io
import re

import numpy as np
import pytest
from PIL import Image

from sftune import runs
from sftune.data import check, read
from sftune.data import images as image_refs
from sftune.encode import IGNORE
from sftune.generation import GenerationOptions
from sftune.vision import encode as vision_encode
from sftune.vision import generate as vision_generate
from sftune.vision import shapes
from sftune.runs import tokenizer_and_processor
from sftune.webui import chat_tab, data_tab
from tests.vision.conftest import images, vision_run, vlm_folder  # noqa: F401  (tiny LLaVA run and checkpoints)


def test_check_counts_images_and_shows_the_records_images(tmp_path, roots):
    data = shapes.write(tmp_path, 5, seed=0)
    result = data_tab.check_files([str(data)], roots=roots)
    assert result["images"] == check([str(data)]).images == 5
    refs = [ref for c in read([data]) for ref in c.images]
    assert len(result["gallery"]) == len(refs)
    for k, ((thumb, caption), ref) in enumerate(zip(result["gallery"], refs)):
        assert np.array_equal(np.asarray(thumb), np.asarray(image_refs.load(ref)))  # 32x32: kept as it is
        assert caption == f"{data.name} line {k + 1}, image 1"
    assert "**5 images**" in data_tab.check_summary(result)
    assert len(data_tab.gallery([str(data)], limit=2, roots=roots)) == 2
    big = tmp_path / "big.png"
    Image.new("RGB", (640, 320), "green").save(big)
    assert data_tab.thumbnail(str(big)).size == (data_tab.THUMBNAIL, data_tab.THUMBNAIL // 2)


def test_inspect_shows_images_and_masks_their_tokens_as_one_run(tmp_path, vlm_folder, roots):  # noqa: F811
    from sftune import templates

    data = shapes.write(tmp_path, 2, seed=0)
    for family in ("llava", "idefics3"):
        folder = vlm_folder(family)
        page = data_tab.inspect_html([str(data)], str(folder), limit=1, roots=roots)
        tokenizer, processor = tokenizer_and_processor(folder)
        first = next(read([data]))
        row = vision_encode.encode(first, processor, templates.default_for(tokenizer))
        n_image = sum(1 for t in row["input_ids"] if t in vision_encode.image_token_ids(processor))
        assert re.findall(r"<span class='sftune-image'>\[image (\d+): (\d+) tokens\]</span>", page) == \
            [("1", str(n_image))]
        trained_ids = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE]
        shown = "".join(html.unescape(m) for m in re.findall(r"<span class='sftune-trained'>(.*?)</span>",
                                                                    page.split("</p>", 1)[1], re.S))
        assert shown == tokenizer.decode(trained_ids) == first.messages[-1].content + "<|im_end|>"
        assert f"{len(row['input_ids'])} tokens, {len(trained_ids)} trained, 1 images" in page
        [src] = re.findall(r"<img class='sftune-thumb' src='data:image/png;base64,([^']+)'", page)
        shown_image = Image.open(io.BytesIO(base64.b64decode(src))).convert("RGB")
        assert np.array_equal(np.asarray(shown_image), np.asarray(image_refs.load(first.images[0])))
    from sftune import models

    with pytest.raises(ValueError, match="has images, but .* is a text-only model"):
        data_tab.inspect_html([str(data)], models.DEFAULT_MODEL, limit=1, roots=roots)


def test_chat_with_images_streams_the_vision_runs_greedy_answer_and_its_bases(vision_run, images, roots):  # noqa: F811
    options = GenerationOptions(max_new_tokens=8)
    message = {"text": "What colour?", "files": [images["red"]]}
    *_, (tuned, base) = chat_tab.chat(str(vision_run), True, [], [], message, options, roots=roots)
    ask = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": images["red"]}},
                                        {"type": "text", "text": "What colour?"}]}]
    for name, history in ((str(vision_run), tuned), (runs.base_model_of(vision_run), base)):
        loaded = runs.load(name)
        assert loaded.is_vision
        expected = vision_generate.generate(loaded, [ask], options)[0].text
        assert history == [{"role": "user", "content": [{"path": images["red"]}, "What colour?"]},
                           {"role": "assistant", "content": expected}]
    # the next turn, with the history as the Chatbot sends it back (typed file and text entries)
    sent_back = [{"role": "user", "content": [{"type": "file", "file": {"path": images["red"]}},
                                              {"type": "text", "text": "What colour?"}]},
                 {"role": "assistant", "content": [{"type": "text", "text": tuned[-1]["content"]}]}]
    *_, (tuned2, _) = chat_tab.chat(str(vision_run), False, sent_back, [], {"text": "And this?",
                                                                            "files": [images["blue"]]}, options,
                                   roots=roots)
    turn2 = ask + [{"role": "assistant", "content": tuned[-1]["content"]},
                   {"role": "user", "content": [{"type": "image_url", "image_url": {"url": images["blue"]}},
                                                {"type": "text", "text": "And this?"}]}]
    assert chat_tab.messages_of(tuned2[:-1]) == turn2
    assert tuned2[-1]["content"] == vision_generate.generate(runs.load(vision_run), [turn2], options)[0].text


def test_a_text_only_run_refuses_an_image_before_showing_it(tiny_run, images, roots):  # noqa: F811
    chats = chat_tab.chat(str(tiny_run), True, [], [], {"text": "What is it?", "files": [images["red"]]},
                          GenerationOptions(max_new_tokens=4), roots=roots)
    with pytest.raises(ValueError, match="is a text-only run: it cannot read images"):
        next(chats)
    *_, (tuned, _) = chat_tab.chat(str(tiny_run), False, [], [], {"text": "hello", "files": []},
                                   GenerationOptions(max_new_tokens=4), roots=roots)
    assert tuned[0] == {"role": "user", "content": "hello"} and tuned[-1]["role"] == "assistant"
