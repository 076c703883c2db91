"""training.run's packing decision, the one both recipes (and the vision branch's rule) go through: before the model
loads the method decides; with the model, the method on it and then the model's own packed rows."""

from __future__ import annotations

from types import SimpleNamespace

from sftune import config as config_module
from sftune.training.run import packing_decision
from tests.conftest import tiny_model


def _cfg(method: str, packing: bool = True):
    return config_module.load({"model": {"name": "smollm2-135m-instruct"}, "method": {"name": method},
                               "data": {"train": "x.jsonl", "packing": packing}})


def test_before_loading_the_method_decides():
    assert packing_decision(_cfg("lora")) == (True, None)
    assert packing_decision(_cfg("lora", packing=False)) == (False, None)  # not asked for: no reason to give
    packs, why = packing_decision(_cfg("prompt_tuning"))
    assert not packs and "prompt_tuning prepends its virtual tokens" in why


def test_a_reason_the_caller_knows_wins_over_the_probe():
    assert packing_decision(_cfg("lora"), refused="LLaVA rows are not tested packed") == (
        False, "LLaVA rows are not tested packed")
    assert packing_decision(_cfg("lora", packing=False), refused="anything") == (False, None)


def test_with_the_model_its_packed_rows_decide():
    """A tiny llama under sdpa keeps packed sequences apart (the packed == alone probe runs on it)."""
    assert packing_decision(_cfg("full"), tiny_model("llama")) == (True, None)


def test_an_attention_that_does_not_keep_packed_sequences_apart_turns_packing_off():
    model = SimpleNamespace(config=SimpleNamespace(_attn_implementation="paged_attention"))
    packs, why = packing_decision(_cfg("full"), model)
    assert not packs and "'paged_attention' is not known to keep packed sequences apart" in why
