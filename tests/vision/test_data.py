"""Images in conversations: every layout read into one Conversation shape, every fault located."""

from __future__ import annotations

import base64
import json

import pytest
from PIL import Image

from sftune import data
from sftune.data import images as image_refs


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture()
def folder(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (20, 20), "red").save(tmp_path / "img" / "red.png")
    (tmp_path / "img" / "broken.png").write_bytes(b"not an image at all")
    return tmp_path


def _data_url(colour="blue"):
    import io

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


LAYOUTS = {
    "openai_path": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "img/red.png"}},
                                                              {"type": "text", "text": "Colour?"}]},
                                 {"role": "assistant", "content": "red"}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "<image>Colour?"}, {"from": "gpt", "value": "red"}],
                 "images": ["img/red.png"]},
    "alpaca": {"instruction": "<image>Colour?", "output": "red", "images": ["img/red.png"]},
    "caption": {"image": "img/red.png", "caption": "a red square"},
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_gives_placeholders_and_resolved_paths(layout, folder):
    path = _write(folder / f"{layout}.jsonl", [LAYOUTS[layout]])
    (conversation,) = data.read([path])
    assert conversation.images == [str(folder / "img" / "red.png")]
    assert image_refs.count_placeholders(conversation) == 1
    assert conversation.messages[0].role == "user" and conversation.messages[-1].role == "assistant"


def test_openai_data_url_is_kept_and_decoded(folder):
    url = _data_url()
    record = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Colour?"},
                                                        {"type": "image_url", "image_url": {"url": url}}]},
                           {"role": "assistant", "content": "blue"}]}
    (conversation,) = data.read([_write(folder / "d.jsonl", [record])])
    assert conversation.images == [url]
    assert conversation.messages[0].content == "Colour?\n<image>"  # the image's place among the parts
    assert image_refs.load(url).getpixel((0, 0)) == (0, 0, 255)


def test_llamafactory_dataset_info_with_images_column(folder):
    _write(folder / "mm.json", [])
    (folder / "mm.json").write_text(json.dumps([{"messages": [{"role": "user", "content": "<image>What?"},
                                                              {"role": "assistant", "content": "red"}],
                                                 "images": ["img/red.png"]}]))
    (folder / "dataset_info.json").write_text(json.dumps({"mm_demo": {
        "file_name": "mm.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}))
    (conversation,) = data.read([folder / "dataset_info.json"])
    assert conversation.images == [str(folder / "img" / "red.png")]


@pytest.mark.parametrize("record, reason, field, fix", [
    ({"image": "img/missing.png", "caption": "x"}, "missing_image", "images[0]", "fix the path"),
    ({"image": "img/broken.png", "caption": "x"}, "bad_image", "images[0]", "valid PNG"),
    ({"image": "https://example.com/a.png", "caption": "x"}, "missing_image", "images[0]", "download"),
    ({"conversations": [{"from": "human", "value": "<image><image>Colour?"}, {"from": "gpt", "value": "red"}],
      "images": ["img/red.png"]}, "image_count", "messages[0].content", "one <image>"),
    ({"conversations": [{"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "red"}],
      "images": ["img/red.png"]}, "image_count", "images", "one <image>"),
])
def test_faults_are_located_with_a_fix(record, reason, field, fix, folder):
    path = _write(folder / "bad.jsonl", [record])
    with pytest.raises(data.DataError) as err:
        list(data.read([path]))
    assert err.value.reason == reason and err.value.field == field
    assert err.value.location == "line 1" and fix in err.value.fix


def test_size_limit(folder, monkeypatch):
    monkeypatch.setattr(image_refs, "MAX_PIXELS", 100)  # the 20x20 image is 400 pixels
    path = _write(folder / "big.jsonl", [LAYOUTS["caption"]])
    with pytest.raises(data.DataError, match="over 100") as err:
        list(data.read([path]))
    assert err.value.reason == "image_too_large"


def test_check_counts_images_and_rejections(folder):
    good = dict(LAYOUTS["caption"])
    two = {"images": ["img/red.png", "img/red.png"], "caption": "two red squares"}
    bad = {"image": "img/broken.png", "caption": "x"}
    report = data.check([_write(folder / "c.jsonl", [good, two, bad])])
    assert (report.valid, report.invalid, report.images) == (2, 1, 3)
    assert report.reasons == {"bad_image": 1}
    assert report.to_dict()["images"] == 3


def test_video_is_still_refused_by_name(folder):
    path = _write(folder / "v.jsonl", [{"instruction": "<video>What?", "output": "x", "videos": ["a.mp4"]}])
    with pytest.raises(data.DataError, match="video or audio"):
        list(data.read([path]))


def test_round_trip_keeps_images(folder):
    (conversation,) = data.read([_write(folder / "r.jsonl", [LAYOUTS["sharegpt"]])])
    again = data.Conversation.from_dict(json.loads(conversation.to_json()))
    assert again.images == conversation.images


@pytest.mark.parametrize("style", ["messages", "sharegpt", "alpaca", "openai"])
def test_convert_keeps_images_in_every_style(style, folder):
    from sftune.data.writers import write_jsonl

    (conversation,) = data.read([_write(folder / "in.jsonl", [LAYOUTS["sharegpt"]])])
    out = folder / f"out-{style}.jsonl"
    write_jsonl([conversation], out, style)
    (again,) = data.read([out])
    assert again.images == conversation.images
    assert [m.content for m in again.messages] == [m.content for m in conversation.messages]
