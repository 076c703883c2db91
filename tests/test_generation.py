"""Batched generation and scoring equal the unbatched reference: plain `generate` on one unpadded prompt,
and a log-softmax over one unpadded forward pass."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import pytest
import torch

from sftune import templates
from sftune.generation import GenerationOptions, generate, loglikelihood, render_prompts, stream
from tests.conftest import tiny_model

PROMPTS = [
    [{"role": "user", "content": "Hello there, how are you?"}],
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three colours of the sky."}],
    [{"role": "user", "content": "你好，今天天气怎么样？"}],
    [{"role": "user", "content": "A longer prompt, one that takes many more tokens than the others do, by far."}],
]


@pytest.fixture(scope="module")
def setup(smollm2_tokenizer):
    model = tiny_model("llama", vocab_size=len(smollm2_tokenizer), initializer_range=0.2)  # varied tokens
    template = templates.default_for(smollm2_tokenizer)
    return model, smollm2_tokenizer, template


def _one_at_a_time(model, tokenizer, text: str, n: int, stops: list[int]) -> list[int]:
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    return new[: next((k for k, t in enumerate(new) if t in stops), len(new))]


def test_batched_greedy_equals_one_prompt_at_a_time(setup):
    model, tokenizer, template = setup
    texts = render_prompts(template, PROMPTS)
    stops = template.stop_token_ids(tokenizer)
    got = generate(model, tokenizer, texts, GenerationOptions(max_new_tokens=12), stop_token_ids=stops, batch_size=3)
    for text, completion in zip(texts, got):
        assert completion.token_ids == _one_at_a_time(model, tokenizer, text, 12, stops)
        assert completion.text == tokenizer.decode(completion.token_ids, skip_special_tokens=True)
        assert completion.prompt_tokens == len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_stops_at_the_template_end_of_turn(smollm2_tokenizer):
    """A model that always predicts <|im_end|> gives an empty answer that finished by 'stop'."""
    tokenizer = smollm2_tokenizer
    model = tiny_model("llama", vocab_size=len(tokenizer))
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        model.lm_head.weight.zero_()  # tied with the embeddings: bias every position to <|im_end|>
        model.model.norm.weight.fill_(1.0)
    model.lm_head = torch.nn.Linear(64, len(tokenizer), bias=True)
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.zero_()
        model.lm_head.bias[end] = 10.0
    template = templates.default_for(tokenizer)
    [answer] = generate(model, tokenizer, render_prompts(template, PROMPTS[:1]), GenerationOptions(max_new_tokens=8),
                        stop_token_ids=template.stop_token_ids(tokenizer))
    assert answer.text == "" and answer.finish_reason == "stop" and answer.token_ids == []


def test_length_limit_and_stop_strings(setup):
    model, tokenizer, template = setup
    texts = render_prompts(template, PROMPTS[:2])
    stops = template.stop_token_ids(tokenizer)
    full = generate(model, tokenizer, texts, GenerationOptions(max_new_tokens=10), stop_token_ids=stops)
    assert all(c.finish_reason == "length" and c.completion_tokens == 10 for c in full)
    # Cut the first answer at a piece of its own text: it ends just before it.
    marker = full[0].text[4:7]
    cut = generate(model, tokenizer, texts, GenerationOptions(max_new_tokens=10, stop=(marker,)), stop_token_ids=stops)
    assert cut[0].text == full[0].text[: full[0].text.find(marker)] and cut[0].finish_reason == "stop"
    assert marker not in cut[1].text


def test_sampling_is_reproducible_with_a_seed(setup):
    model, tokenizer, template = setup
    texts = render_prompts(template, PROMPTS[:3])
    options = GenerationOptions(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=7)
    first = [c.token_ids for c in generate(model, tokenizer, texts, options)]
    again = [c.token_ids for c in generate(model, tokenizer, texts, options)]
    greedy = [c.token_ids for c in generate(model, tokenizer, texts, GenerationOptions(max_new_tokens=8))]
    assert first == again and first != greedy


def test_stream_joins_to_the_batched_answer(setup):
    model, tokenizer, template = setup
    stops = template.stop_token_ids(tokenizer)
    text = render_prompts(template, PROMPTS[:1])[0]
    [whole] = generate(model, tokenizer, [text], GenerationOptions(max_new_tokens=12), stop_token_ids=stops)
    pieces = list(stream(model, tokenizer, text, GenerationOptions(max_new_tokens=12), stop_token_ids=stops))
    assert "".join(pieces) == whole.text and len(pieces) > 1
    marker = whole.text[3:6]
    cut = "".join(stream(model, tokenizer, text, GenerationOptions(max_new_tokens=12, stop=(marker,)),
                         stop_token_ids=stops))
    assert cut == whole.text[: whole.text.find(marker)]


def test_loglikelihood_equals_one_unpadded_forward_pass(setup):
    model, tokenizer, _ = setup
    requests = [("The capital of France is", " Paris"), ("Question: 2+2=? Answer:", " 4"),
                ("Short", " and a longer continuation of several tokens"), ("中文的问题：", "答案")]
    got = loglikelihood(model, tokenizer, requests, batch_size=3)
    for (context, continuation), (score, greedy) in zip(requests, got):
        head = tokenizer(context)["input_ids"]
        whole = tokenizer(context + continuation)["input_ids"]
        assert whole[: len(head)] == head
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
        target = torch.tensor(whole[len(head):])
        expected = logprobs[len(head) - 1: len(whole) - 1].gather(-1, target[:, None]).sum().item()
        assert score == pytest.approx(expected, abs=1e-4)
        assert greedy == bool((logprobs[len(head) - 1: len(whole) - 1].argmax(-1) == target).all())


def test_closing_a_stream_stops_generation(setup):
    """A reader that goes away (a client that disconnected) ends the generation thread at once."""
    import threading
    import time

    model, tokenizer, template = setup
    text = render_prompts(template, PROMPTS[:1])[0]
    before = set(threading.enumerate())
    pieces = stream(model, tokenizer, text, GenerationOptions(max_new_tokens=100_000))
    next(pieces)
    worker = next(t for t in threading.enumerate() if t not in before)
    started = time.perf_counter()
    pieces.close()
    assert time.perf_counter() - started < 10
    assert not worker.is_alive()


def test_loglikelihood_shared_prefixes_and_left_padding_in_every_family(tiny_arch, smollm2_tokenizer):
    """Multiple-choice letters (one shared forward pass) and left-padded rows score as one unpadded pass."""
    tokenizer = smollm2_tokenizer
    model = tiny_model(tiny_arch, vocab_size=len(tokenizer), initializer_range=0.2)
    requests = [("Question: 2+2=?\nAnswer:", f" {letter}") for letter in "ABCD"]
    requests += [("A much longer context, so that the rows of the batch need padding on the left:", " yes it does")]
    got = loglikelihood(model, tokenizer, requests, batch_size=4)
    for (context, continuation), (score, _) in zip(requests, got):
        head, whole = tokenizer(context)["input_ids"], tokenizer(context + continuation)["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
        expected = sum(logprobs[k - 1, whole[k]].item() for k in range(len(head), len(whole)))
        assert score == pytest.approx(expected, abs=1e-4)


# --- precision and processes outside training -----------------------------------------------------

@pytest.mark.parametrize("weights, attention, device, bf16, expected", [
    (torch.float32, "flash_attention_2", "cuda", True, torch.bfloat16),  # full / freeze trained in bf16
    (torch.float32, "flash_attention_3", "cuda", False, torch.float16),  # a card without bf16 (T4, V100)
    (torch.bfloat16, "flash_attention_2", "cuda", True, None),  # a bf16 base (LoRA) is already half
    (torch.float32, "sdpa", "cuda", True, None),  # sdpa takes fp32
    (torch.float32, "flash_attention_2", "cpu", False, None),
])
def test_autocast_dtype_for_generation_outside_training(weights, attention, device, bf16, expected):
    from sftune.generation import autocast_dtype

    assert autocast_dtype(weights, attention, device, bf16) == expected


def test_half_precision_is_autocast_for_fp32_flash_models_on_cuda(monkeypatch):
    """An fp32 model with flash attention on a bf16 GPU generates under bf16 autocast (flash kernels refuse
    fp32 q/k/v); on the CPU nothing changes."""
    import types

    from sftune import generation
    from tests.test_hardware import fake_gpu

    fake_gpu(monkeypatch, (9, 0))
    model = types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32,
                                  config=types.SimpleNamespace(_attn_implementation="flash_attention_2"))
    with pytest.warns(UserWarning, match="CUDA is not available") if not torch.cuda.is_available() else nullcontext():
        context = generation.half_precision(model)
    assert isinstance(context, torch.autocast) and context.fast_dtype == torch.bfloat16 and context.device == "cuda"
    model.device = torch.device("cpu")
    assert not isinstance(generation.half_precision(model), torch.autocast)


def test_generate_runs_under_half_precision_and_passes_synced_gpus(monkeypatch, smollm2_tokenizer):
    """generation.generate (eval.generate_metrics, CHORD rollouts, replay) generates inside half_precision, and
    `synced_gpus` reaches transformers' generate."""
    from sftune import generation

    model = tiny_model("llama", vocab_size=len(smollm2_tokenizer))
    entered, seen = [], []

    @contextmanager
    def recorded(m):
        entered.append(m)
        yield

    real = model.generate

    def generate(**kwargs):
        seen.append((len(entered), kwargs.get("synced_gpus")))
        kwargs.pop("synced_gpus", None)  # one process here: nothing to synchronize with
        return real(**kwargs)

    monkeypatch.setattr(generation, "half_precision", recorded)
    monkeypatch.setattr(model, "generate", generate)
    options = generation.GenerationOptions(max_new_tokens=2)
    generation.generate(model, smollm2_tokenizer, ["hi"], options)
    generation.generate(model, smollm2_tokenizer, ["hi"], options, synced_gpus=True)
    assert entered == [model, model] and seen == [(1, None), (2, True)]
