"""The UI through gradio_client against the real app served on 127.0.0.1: the same answers as the
functions behind it."""

from __future__ import annotations

import pytest

from sftune.webui import data_tab


def test_validate_through_the_api_gives_the_check_report(served, mixed_file, roots):
    from gradio_client import Client

    url, _ = served
    assert url.startswith("http://127.0.0.1:")
    client = Client(url, verbose=False, analytics_enabled=False)
    summary, files, reasons, rejected, gallery = client.predict(str(mixed_file), "(detect)", api_name="/check")
    reference = data_tab.check_files([str(mixed_file)], roots=roots)
    assert summary == data_tab.check_summary(reference)
    assert rejected["data"] == reference["rejected"]
    assert [row[:2] for row in reasons["data"]] == [row[:2] for row in reference["reasons"]]
    assert not gallery["visible"] and not gallery["value"] and not reference["gallery"]  # text data: no images
    with pytest.raises(Exception, match="no data file given"):
        client.predict("", "(detect)", api_name="/check")


def test_stats_through_the_api_give_the_histograms(served, mixed_file, roots):
    import PIL.Image
    from gradio_client import Client

    client = Client(served[0], verbose=False, analytics_enabled=False)
    text, image = client.predict(str(mixed_file), "(detect)", "", api_name="/stats")
    result, reference = data_tab.statistics([str(mixed_file)], roots=roots)
    assert text == data_tab.stats_markdown(result)
    assert PIL.Image.open(image).size == reference.size  # the image gradio serves: a copy of its own


def test_validate_image_data_through_the_api_shows_the_gallery(served, tmp_path, roots):
    from gradio_client import Client

    from sftune.vision import shapes

    data = shapes.write(tmp_path, 3, seed=0)
    client = Client(served[0], verbose=False, analytics_enabled=False)
    summary, *_, gallery = client.predict(str(data), "(detect)", api_name="/check")
    reference = data_tab.check_files([str(data)], roots=roots)
    assert "**3 images**" in summary and gallery["visible"]
    assert [item["caption"] for item in gallery["value"]] == [caption for _, caption in reference["gallery"]]


def test_chat_through_the_api_streams_the_runs_answer(served, tiny_run, roots):
    from gradio_client import Client

    from sftune.generation import GenerationOptions
    from sftune.webui import chat_tab

    url, _ = served
    client = Client(url, verbose=False, analytics_enabled=False)
    tuned, base, message = client.predict(str(tiny_run), False, [], [], {"text": "hello", "files": []}, 8, 0,
                                          api_name="/chat")
    *_, (reference, _) = chat_tab.chat(str(tiny_run), False, [], [], "hello", GenerationOptions(max_new_tokens=8),
                                       roots=roots)
    # the Chatbot trims a reply's surrounding whitespace when it sends it
    got = [(m["role"], m["content"].strip()) for m in chat_tab.messages_of(tuned)]
    assert got == [(m["role"], m["content"].strip()) for m in reference] and len(got) == 2
    assert base == [] and not message["text"] and not message["files"]  # the box is cleared
