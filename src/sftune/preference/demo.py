"""The preference demo: after the SFT demo, DPO teaches the model a style the held-out set checks exactly.

Prompts are the SFT demo's extraction questions; the chosen answer is the JSON line followed by a fixed
sign-off line (MARKER), the rejected one the JSON line alone. DPO with the RPO term (rpo_alpha 1): DPO alone
won its margin by pushing the rejected answers down and never made the sign-off likely enough to be generated
(docs/preference.md). Held-out: the reward accuracy of the pairs
(training's eval_rewards/accuracies) and the share of generated answers that end with MARKER, before and
after. It starts from runs/demo when the SFT demo has run, else from the embedded model.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

MARKER = "-- checked by sftune"


def write_pairs(folder: str | Path, n_train: int = 96, n_eval: int = 24, seed: int = 1) -> tuple[Path, Path]:
    """train.jsonl and eval.jsonl of pairs (TRL's conversational shape), no held-out prompt in train."""
    from sftune.demo import make_example

    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seen, records = set(), []
    while len(records) < n_train + n_eval:
        example = make_example(rng, chinese=len(records) % 2 == 0)
        prompt, answer = example["messages"][0], example["messages"][1]["content"]
        if prompt["content"] in seen:
            continue
        seen.add(prompt["content"])
        records.append({"prompt": [prompt], "chosen": [{"role": "assistant", "content": f"{answer}\n{MARKER}"}],
                        "rejected": [{"role": "assistant", "content": answer}]})
    paths = folder / "train.jsonl", folder / "eval.jsonl"
    for path, part in zip(paths, (records[:n_train], records[n_train:])):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    return paths


def styled_share(model_or_run: Any, prompts: list[list[dict]], *, max_new_tokens: int = 48) -> float:
    """The share of greedy answers to `prompts` that end with MARKER."""
    from sftune import generation, runs

    loaded = runs.load(model_or_run)
    texts = generation.render_prompts(loaded.template, prompts)
    answers = generation.generate(loaded.model, loaded.tokenizer, texts,
                                  generation.GenerationOptions(max_new_tokens=max_new_tokens),
                                  stop_token_ids=loaded.stop_token_ids, batch_size=12)
    return sum(a.text.strip().endswith(MARKER) for a in answers) / max(len(answers), 1)


def run(overrides: list[str] | None = None, *, console=None, start: str | None = None) -> dict[str, Any]:
    """Write the pairs, measure the style share, train DPO (LoRA), measure again; print and return the figures."""
    from rich.console import Console
    from rich.table import Table

    from sftune import config as config_module
    from sftune.preference.losses import NEEDS_REFERENCE
    from sftune.training import train

    console = console or Console()
    start = start or ("runs/demo" if (Path("runs/demo") / "config.yaml").is_file() else "smollm2-135m-instruct")
    train_path, eval_path = write_pairs("runs/preference-demo-data")
    raw = {"stage": "preference", "preference": {"loss": "dpo", "beta": 0.1, "rpo_alpha": 1.0},
           "model": {"name": start}, "data": {"train": str(train_path), "eval": str(eval_path), "max_len": 256},
           "method": {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.0},
           "train": {"max_steps": 24, "batch_size": 4, "lr": 2e-3, "warmup": 0.05, "logging_steps": 4,
                     "save_total_limit": 1},
           "eval": {"steps": 12, "on_start": True}, "output": {"dir": "runs/demo-dpo", "overwrite": True}}
    cfg = config_module.load(raw, overrides)
    prompts = [json.loads(line)["prompt"] for line in eval_path.read_text(encoding="utf-8").splitlines()]
    before = styled_share(start, prompts)
    result = train(cfg, console=console)
    result.model = None
    after = styled_share(str(result.run_dir), prompts)
    history = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in history if "eval_rewards/accuracies" in r]
    first = evals[0] if evals and evals[0]["step"] == 0 else {}
    # with a reference, at step 0 the policy is the reference: every reward is 0, the "accuracy" rounding noise
    acc_before = None if NEEDS_REFERENCE[cfg.preference.loss] else first.get("eval_rewards/accuracies")
    acc_after = result.summary.get("eval_rewards/accuracies")
    table = Table(title=f"Held-out preference results ({len(prompts)} prompts, started from {start})")
    for column in ("", "before", "after"):
        table.add_column(column)
    table.add_row("answers in the chosen style (ending with the sign-off)", f"{before:.1%}", f"{after:.1%}")
    table.add_row("reward accuracy (chosen reward > rejected)",
                  "- (all 0: policy = reference)" if acc_before is None else f"{acc_before:.1%}", f"{acc_after:.1%}")
    for answer in ("chosen", "rejected"):
        key = f"eval_logps/{answer}"
        table.add_row(f"mean log-prob of the {answer} answers", f"{first[key]:.2f}" if key in first else "-",
                      f"{result.summary[key]:.2f}" if key in result.summary else "-")
    console.print(table)
    outcome = {"start": start, "styled_before": before, "styled_after": after, "reward_accuracy_before": acc_before,
               "reward_accuracy_after": acc_after,
               "logps_before": {k: first.get(f"eval_logps/{k}") for k in ("chosen", "rejected")},
               "logps_after": {k: result.summary.get(f"eval_logps/{k}") for k in ("chosen", "rejected")},
               "run_dir": str(result.run_dir), "summary": result.summary}
    (result.run_dir / "demo.json").write_text(json.dumps(outcome, indent=2) + "\n", encoding="utf-8")
    return outcome
