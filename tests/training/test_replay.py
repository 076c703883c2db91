"""data.replay: the prompt is exactly the template's user prefix, the mixing ratio, and the cache that
keeps a resumed run from generating again."""

from __future__ import annotations

import json

import pytest

from sftune import generation, templates
from sftune.data import Conversation, Message
from sftune.training import replay
from tests.conftest import tiny_model


def test_user_prefix_is_what_the_template_writes_before_the_user_text(smollm2_tokenizer):
    assert replay.user_prefix(templates.get("chatml")) == "<|im_start|>user\n"
    llama3 = templates.get("llama3")
    assert replay.user_prefix(llama3) == llama3.bos + "<|start_header_id|>user<|end_header_id|>\n\n"
    own = templates.default_for(smollm2_tokenizer)  # SmolLM2's template writes a default system prompt first
    rendered = smollm2_tokenizer.apply_chat_template([{"role": "user", "content": "QQQ"}], tokenize=False)
    assert replay.user_prefix(own) == rendered.split("QQQ")[0]
    assert replay.user_prefix(own).endswith("<|im_start|>user\n")


def test_generation_is_prompted_with_the_user_prefix_only(monkeypatch, smollm2_tokenizer):
    calls = []
    real = generation.generate

    def spy(model, tokenizer, prompts, options, **kwargs):
        calls.append((list(prompts), options))
        return real(model, tokenizer, prompts, options, **kwargs)

    monkeypatch.setattr(replay, "generate", spy)
    model = tiny_model("llama", vocab_size=len(smollm2_tokenizer))
    template = templates.get("chatml", smollm2_tokenizer)
    replay.generate_pairs(model, smollm2_tokenizer, template, 3, max_new_tokens=4, seed=1)
    prompts, options = calls[0]
    assert prompts == ["<|im_start|>user\n"] * 8 and options.temperature == 1.0 and options.seed == 1
    # a random model does not stop within 4 tokens: nothing is kept, every round asked again
    assert len([c for c in calls if c[0] and c[0][0] == "<|im_start|>user\n"]) == replay.MAX_ROUNDS


def _conversations(n: int) -> list[Conversation]:
    return [Conversation([Message("user", f"q{i}"), Message("assistant", f"a{i}")]) for i in range(n)]


@pytest.mark.parametrize("ratio, task, expected", [(0.25, 30, 10), (0.5, 7, 7), (0.1, 45, 5)])
def test_mixing_gives_the_ratio(ratio, task, expected):
    pairs = [{"instruction": f"i{k}", "answer": f"r{k}"} for k in range(3)]
    mixed = replay.mix_in(_conversations(task), pairs, ratio, seed=0)
    replayed = [c for c in mixed if c.meta.get("replay")]
    assert len(replayed) == expected and len(mixed) == task + expected
    assert len(replayed) / len(mixed) == pytest.approx(ratio, abs=0.5 / len(mixed))
    counts = {p["instruction"]: sum(c.messages[0].content == p["instruction"] for c in replayed) for p in pairs}
    assert max(counts.values()) - min(counts.values()) <= 1  # fewer pairs than needed: cycled evenly
    assert replay.mix_in(_conversations(5), pairs, 0.0, seed=0) == _conversations(5)


def test_cache_is_reused_with_the_same_settings_only(tmp_path):
    made = []

    def make():
        made.append(1)
        return [{"instruction": f"i{len(made)}", "answer": "a"}]

    path = tmp_path / "run" / replay.CACHE
    first = replay.load_or_generate(path, {"count": 1}, make)
    assert replay.load_or_generate(path, {"count": 1}, make) == first and len(made) == 1
    assert replay.load_or_generate(path, {"count": 2}, make) == [{"instruction": "i2", "answer": "a"}]
    assert json.loads(path.read_text())["settings"] == {"count": 2}


def test_a_run_reads_its_cached_pairs_instead_of_generating(tmp_path, smollm2_tokenizer, monkeypatch):
    """What a resumed run does: RUN/replay.json with the same settings is mixed in; nothing is generated."""
    from sftune import train
    from sftune.config import load
    from tests.training.test_recipe import run_config

    folder = tmp_path / "tiny-model"
    tiny_model("llama", vocab_size=len(smollm2_tokenizer)).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    raw = run_config(tmp_path, folder, data={"replay": {"ratio": 0.2, "max_new_tokens": 16}},
                     train={"max_steps": 2, "save_steps": None}, eval={"steps": None})
    cfg = load(raw)
    template = templates.default_for(smollm2_tokenizer)
    settings = {"model": str(folder), "prefix": replay.user_prefix(template), "count": 12, "max_new_tokens": 16,
                "seed": 0}
    pairs = [{"instruction": f"Name a colour ({k}).", "answer": "Blue."} for k in range(12)]
    cache = tmp_path / "run" / replay.CACHE
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({"settings": settings, "pairs": pairs}))
    monkeypatch.setattr(replay, "generate", lambda *a, **k: pytest.fail("the cached pairs were generated again"))
    result = train(cfg)
    assert result.summary["train_examples"] == 48 + 12  # 12 = 0.2 * 48 / 0.8
