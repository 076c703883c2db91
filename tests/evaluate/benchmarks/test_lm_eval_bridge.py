"""The lm-eval bridge and sftune's own MMLU path give the same contexts, letter scores, choices and accuracy."""

from __future__ import annotations

import pytest

pytest.importorskip("lm_eval")

from sftune.evaluate.benchmarks import TASKS, lm_eval_bridge, multiple_choice as mc  # noqa: E402
from sftune.evaluate.compare import with_harness  # noqa: E402
from tests.evaluate.benchmarks.conftest import data  # noqa: E402


def test_same_accuracy_and_choices_as_sftunes_own_path(loaded):
    ours = TASKS["mmlu"](loaded, options=data("mmlu"))
    theirs = with_harness("mmlu", TASKS["mmlu"], "lm-eval")(loaded, options={**data("mmlu"), "harness": "lm-eval"})
    assert theirs.details["harness"].startswith("lm-eval")
    assert theirs.details["predictions"] == ours.details["predictions"]
    assert theirs.item_scores == ours.item_scores and theirs.score == ours.score
    assert theirs.details["subjects"] == ours.details["subjects"]


def test_same_contexts_and_letter_scores(loaded):
    items = mc.load_items("ceval", data("ceval"))
    records = lm_eval_bridge.evaluate_items("ceval", items, lm_eval_bridge.model_args(loaded))
    ours = mc.letter_loglikelihoods(loaded, items)
    for item, record, scores in zip(items, records, ours):
        assert record["context"] == item.context
        assert record["loglikelihoods"] == pytest.approx(scores, abs=1e-4)


def test_model_args_for_a_plain_folder_and_an_adapter_run(loaded, tmp_path, tiny_folder):
    from sftune.runs import Loaded

    assert lm_eval_bridge.model_args(loaded) == {"pretrained": str(tiny_folder), "dtype": "float32"}
    (tmp_path / "adapter_config.json").write_text("{}")
    run = Loaded(str(tmp_path), loaded.model, loaded.tokenizer, loaded.template, loaded.stop_token_ids,
                 base=str(tiny_folder), run_dir=tmp_path, method="lora")
    assert lm_eval_bridge.model_args(run) == {"pretrained": str(tiny_folder), "peft": str(tmp_path),
                                              "tokenizer": str(tmp_path), "dtype": "float32"}
    with pytest.raises(ValueError, match="QLoRA"):
        lm_eval_bridge.model_args(Loaded(str(tmp_path), None, None, None, [], base=str(tiny_folder),
                                         run_dir=tmp_path, method="qlora"))
