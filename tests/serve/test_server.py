"""The server through the official `openai` client on loopback: answers equal `sftune.generation`'s greedy
answers for the same prompts (alone, streamed, concurrent, per adapter); errors in OpenAI's shape."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx
import openai
import pytest

from sftune import runs
from sftune.generation import GenerationOptions, generate, render_prompts
from sftune.serve import adapters
from sftune.serve.server import create_app
from sftune.serve.background import running
from tests.serve.conftest import openai_error

QUESTIONS = ["Hello there, how are you?", "Hi", "Name three colours of the sky.", "你好，今天天气怎么样？",
             "A longer prompt, one that takes many more tokens than the others do, by far.", "What is 2 + 2?",
             "Tell me a story.", "Why?"]


def reference(run_or_model, question: str, max_tokens: int) -> str:
    """sftune.generation's greedy answer, one prompt alone, through the run's own template."""
    loaded = runs.load(run_or_model)
    [prompt] = render_prompts(loaded.template, [[{"role": "user", "content": question}]])
    [done] = generate(loaded.model, loaded.tokenizer, [prompt], GenerationOptions(max_new_tokens=max_tokens),
                      stop_token_ids=loaded.stop_token_ids)
    return done.text


@pytest.fixture(scope="module")
def served(base_dir):
    model, tokenizer, names = adapters.load(str(base_dir))
    app = create_app(model, tokenizer, names, max_batch_size=8)
    with running(app) as url:
        yield url, app


def client(url, key="none"):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def ask(url, model, question, max_tokens, **kwargs):
    reply = client(url).chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                               max_tokens=max_tokens, temperature=0, **kwargs)
    return reply


def test_plain_and_streamed_answers_equal_generation(served, base_dir):
    url, _ = served
    name = str(base_dir)
    assert [m.id for m in client(url).models.list().data] == [name]
    for question in QUESTIONS[:3]:
        expected = reference(base_dir, question, 20)
        reply = ask(url, name, question, 20)
        assert reply.choices[0].message.content == expected
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage.completion_tokens <= 20 and reply.usage.prompt_tokens > 0
        pieces = [c.choices[0].delta.content or "" for c in ask(url, name, question, 20, stream=True) if c.choices]
        assert "".join(pieces) == expected and len([p for p in pieces if p]) > 1


def test_the_raw_stream_ends_with_done(served, base_dir):
    url, _ = served
    body = {"model": str(base_dir), "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        data = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    assert json.loads(data[-2])["choices"][0]["finish_reason"] in ("stop", "length")


def test_completions_take_raw_text(served, base_dir):
    url, _ = served
    loaded = runs.load(base_dir)
    [expected] = generate(loaded.model, loaded.tokenizer, ["The sky is"], GenerationOptions(max_new_tokens=8),
                          stop_token_ids=loaded.stop_token_ids, add_special_tokens=True)
    reply = client(url).completions.create(model=str(base_dir), prompt="The sky is", max_tokens=8, temperature=0)
    assert reply.choices[0].text == expected.text


def test_malformed_and_unsupported_requests_get_400_in_openai_shape(served, base_dir):
    url, _ = served
    model, user = str(base_dir), [{"role": "user", "content": "x"}]

    def post(body=None, **kwargs):
        return httpx.post(f"{url}/v1/chat/completions", timeout=30, **({"json": body} if body else {}), **kwargs)

    assert "messages" in openai_error(post({"model": model}), 400)["message"]
    bad_json = post(content=b"{not json", headers={"content-type": "application/json"})
    assert "not valid JSON" in openai_error(bad_json, 400)["message"]
    assert openai_error(post({"model": model, "messages": user, "n": 2}), 400)["param"] == "n"
    assert "role" in openai_error(post({"model": model, "messages": [{"content": "x"}]}), 400)["message"]
    assert openai_error(post({"model": "nope", "messages": user}), 404)["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client(url).chat.completions.create(model=str(base_dir), messages=[{"role": "user", "content": "x"}],
                                            temperature=5)


def test_over_long_prompt_and_max_tokens_get_400_naming_the_lengths(served, base_dir):
    url, _ = served
    with pytest.raises(openai.BadRequestError) as err:
        ask(url, str(base_dir), "word " * 600, 5)
    assert "context length is 512" in str(err.value) and err.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as err:
        ask(url, str(base_dir), "Hi", 600)
    assert "max_tokens=600" in str(err.value) and "512" in str(err.value)


def test_api_key(base_dir):
    model, tokenizer, names = adapters.load(str(base_dir))
    with running(create_app(model, tokenizer, names, api_key="sekret")) as url:
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").models.list()
        error = openai_error(httpx.get(f"{url}/v1/models"), 401)
        assert error["code"] == "invalid_api_key" and "Authorization: Bearer" in error["message"]
        assert [m.id for m in client(url, "sekret").models.list().data] == [str(base_dir)]


def test_concurrent_clients_are_batched_and_all_answered_correctly(served, base_dir):
    url, app = served
    expected = {q: reference(base_dir, q, 24) for q in QUESTIONS}
    steps_before = app.state.batcher.steps
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda q: ask(url, str(base_dir), q, 24), QUESTIONS))
    assert time.monotonic() - started < 120
    assert [r.choices[0].message.content for r in replies] == [expected[q] for q in QUESTIONS]
    tokens = sum(r.usage.completion_tokens for r in replies)
    assert app.state.batcher.steps - steps_before < tokens * 0.6  # decode steps were shared between requests


def test_an_abandoned_stream_is_cancelled(base_dir):
    """A client that closes its stream early frees its slot: the batch empties long before max_tokens."""
    model, tokenizer, names = adapters.load(str(base_dir))
    model.register_forward_pre_hook(lambda *_: time.sleep(0.02))  # 400 tokens would take 8 s or more
    app = create_app(model, tokenizer, names)
    body = {"model": str(base_dir), "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 400,
            "stream": True, "stop": ["never-in-the-answer"]}  # no stop string: the answer runs to max_tokens
    with running(app) as url:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
            for k, _ in enumerate(response.iter_lines()):
                if k == 6:
                    assert httpx.get(f"{url}/health").json()["active"] == 1
                    break
        deadline = time.monotonic() + 20
        while httpx.get(f"{url}/health").json()["active"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{url}/health").json() == {"status": "ok", "active": 0, "waiting": 0}
        assert app.state.batcher.steps < 100
        assert ask(url, str(base_dir), "Hi", 3).choices[0].finish_reason in ("stop", "length")


def test_adapters_chosen_by_name(base_dir, lora_runs):
    alpha, beta = lora_runs
    model, tokenizer, names = adapters.load(str(alpha), {"beta": str(beta)})
    assert list(names) == ["alpha", str(base_dir), "beta"]
    expected = {name: reference(folder, q, 16) for name, folder in (("alpha", alpha), ("beta", beta),
                                                                      (str(base_dir), base_dir))
                for q in QUESTIONS[:1]}
    with running(create_app(model, tokenizer, names)) as url:
        assert [m.id for m in client(url).models.list().data] == list(names)
        with ThreadPoolExecutor(6) as pool:  # requests for different adapters at once: batches by adapter
            answers = list(pool.map(lambda n: ask(url, n, QUESTIONS[0], 16).choices[0].message.content,
                                    ["alpha", "beta", str(base_dir)] * 2))
    assert answers == [expected[n] for n in ["alpha", "beta", str(base_dir)] * 2]
    assert len(set(answers[:3])) == 3  # three different models answered


def test_an_adapter_on_another_base_is_refused(base_dir, lora_runs, tmp_path, smollm2_tokenizer):
    from tests.conftest import tiny_model

    other = tmp_path / "other-base"
    tiny_model("llama", vocab_size=len(smollm2_tokenizer), seed=3).save_pretrained(other)
    smollm2_tokenizer.save_pretrained(other)
    with pytest.raises(adapters.AdapterError, match="adapters must share the base model"):
        adapters.load(str(other), {"beta": str(lora_runs[1])})
