"""The main job: a complete SFT run on a CPU in a few minutes, with a gain you can check.

The task is information extraction in Chinese and English: a sentence about a person in, the
person's name, age and city out as one line of JSON. Answers are checked exactly (parsed JSON equal
to the truth), so the held-out exact-match rate before and after training is the metric, next to
the held-out loss. The data is generated here, deterministically, from small word lists.
"""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path
from typing import Any

# The demo's configuration; examples/demo-smollm2.yaml is a link to this same file.
DEFAULT_CONFIG = resources.files("sftune") / "configs" / "demo.yaml"

EN_NAMES = ["Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Irene", "Jack", "Karen",
            "Liam", "Mia", "Noah", "Olivia", "Peter", "Quinn", "Rachel", "Sam", "Tina", "Umar", "Vera",
            "Will", "Xavier", "Yara", "Zoe"]
EN_CITIES = ["Paris", "London", "Berlin", "Madrid", "Rome", "Tokyo", "Sydney", "Toronto", "Boston", "Dublin",
             "Oslo", "Vienna", "Lisbon", "Prague", "Seattle", "Chicago", "Denver", "Austin"]
ZH_NAMES = ["张伟", "王芳", "李娜", "刘洋", "陈静", "杨磊", "赵敏", "黄强", "周婷", "吴刚", "徐丽", "孙浩",
            "马超", "朱琳", "胡军", "郭敏", "林峰", "何静", "高翔", "罗兰"]
ZH_CITIES = ["北京", "上海", "广州", "深圳", "杭州", "成都", "武汉", "南京", "西安", "重庆", "天津", "苏州",
             "长沙", "青岛", "厦门", "昆明"]
EN_SENTENCES = [
    "{name} is {age} years old and lives in {city}.",
    "Meet {name}, a {age}-year-old from {city}.",
    "Living in {city}, {name} turned {age} this year.",
    "{name}, aged {age}, has a small flat in {city}.",
    "At {age}, {name} moved to {city} for work.",
]
ZH_SENTENCES = [
    "{name}今年{age}岁，住在{city}。",
    "来自{city}的{name}已经{age}岁了。",
    "{name}在{city}工作，今年{age}岁。",
    "{age}岁的{name}刚刚搬到{city}。",
    "住在{city}的{name}，年龄是{age}岁。",
]
EN_ASK = "Extract the person's name, age and city from the sentence as JSON with keys name, age, city.\n"
ZH_ASK = "从下面的句子中提取人物的姓名、年龄和城市，输出 JSON，键为 name、age、city。\n"


def make_example(rng: random.Random, chinese: bool) -> dict[str, Any]:
    """One record in the OpenAI messages shape, with the truth kept in meta for checking."""
    names, cities, sentences, ask = (
        (ZH_NAMES, ZH_CITIES, ZH_SENTENCES, ZH_ASK) if chinese else (EN_NAMES, EN_CITIES, EN_SENTENCES, EN_ASK)
    )
    truth = {"name": rng.choice(names), "age": rng.randint(18, 80), "city": rng.choice(cities)}
    sentence = rng.choice(sentences).format(**truth)
    return {
        "messages": [
            {"role": "user", "content": ask + sentence},
            {"role": "assistant", "content": json.dumps(truth, ensure_ascii=False)},
        ],
        "meta": {"language": "zh" if chinese else "en", "truth": truth},
    }


def write_dataset(folder: str | Path, n_train: int = 320, n_eval: int = 40, seed: int = 0) -> tuple[Path, Path]:
    """Write train.jsonl and eval.jsonl (half Chinese, half English; no eval sentence in train)."""
    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    records = []
    while len(records) < n_train + n_eval:
        record = make_example(rng, chinese=len(records) % 2 == 0)
        key = record["messages"][0]["content"]
        if key not in seen:
            seen.add(key)
            records.append(record)
    paths = folder / "train.jsonl", folder / "eval.jsonl"
    for path, part in zip(paths, (records[:n_train], records[n_train:])):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    return paths


def read_truths(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def is_correct(answer: str, truth: dict[str, Any]) -> bool:
    """Exact check: the answer parses as JSON and equals the truth."""
    try:
        return json.loads(answer.strip()) == truth
    except (json.JSONDecodeError, ValueError):
        return False


def generate(model, tokenizer, template, prompts: list[str], *, max_new_tokens: int = 32, batch_size: int = 20) -> list[str]:
    """Greedy answers, each prompt rendered with the training template (left-padded batches)."""
    import torch

    model.eval()
    answers = []
    pad = tokenizer.pad_token_id
    stop = template.stop_token_ids(tokenizer)  # the end of turn the template trains, and EOS
    for lo in range(0, len(prompts), batch_size):
        texts = [template.render([{"role": "user", "content": p}], add_generation_prompt=True)
                 for p in prompts[lo : lo + batch_size]]
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(map(len, ids))
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad, eos_token_id=stop)
        answers += [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
    return answers


def exact_match(model, tokenizer, template, records: list[dict[str, Any]]) -> tuple[float, list[str]]:
    prompts = [r["messages"][0]["content"] for r in records]
    answers = generate(model, tokenizer, template, prompts)
    hits = sum(is_correct(a, r["meta"]["truth"]) for a, r in zip(answers, records))
    return hits / len(records), answers


# Learning rates for the demo's 30 short steps, per method (the methods' usual rates, raised so that
# each learns the task in the demo's few minutes). Used with `sftune demo --method NAME`.
DEMO_LEARNING_RATE = {
    "lora": 1e-3,
    "qlora": 1e-3,
    "full": 5e-5,
    "freeze": 2e-4,
    "prompt_tuning": 3e-2,
    "prefix_tuning": 5e-4,
    "p_tuning_v2": 1e-2,
}


def method_overrides(method: str) -> list[str]:
    """The demo's overrides for training with `method` instead of LoRA, into runs/demo-METHOD."""
    if method not in DEMO_LEARNING_RATE:
        from sftune.config import ConfigError

        raise ConfigError(f"unknown method {method!r}; pick one of {', '.join(DEMO_LEARNING_RATE)}")
    return [f"method.name={method}", f"train.lr={DEMO_LEARNING_RATE[method]}", f"output.dir=runs/demo-{method}"]


def run(config: str | Path | None = None, overrides: list[str] | None = None, *, method: str | None = None,
        console=None) -> dict[str, Any]:
    """The whole demo: write the data, measure the base model, train, measure again, print both.

    `method` trains the same task with another method (full, freeze, qlora, prompt_tuning ...).
    """
    import yaml
    from rich.console import Console
    from rich.table import Table

    from sftune import config as config_module, models, templates
    from sftune.training import train

    console = console or Console()
    raw = yaml.safe_load(Path(config or DEFAULT_CONFIG).read_text(encoding="utf-8"))
    cfg = config_module.load(raw, (method_overrides(method) if method else []) + list(overrides or []))
    train_path, eval_path = Path(cfg.data.train[0]), Path(cfg.data.eval[0])
    write_dataset(train_path.parent)
    if eval_path.parent != train_path.parent:
        write_dataset(eval_path.parent)
    held_out = read_truths(eval_path)
    console.print(f"[bold]demo data[/bold]: {len(read_truths(train_path))} training and {len(held_out)} held-out "
                  f"examples (Chinese + English extraction to JSON) in {train_path.parent}")

    with console.status(f"Loading {cfg.model.name}"):
        base, tokenizer = models.load(cfg.model.name)
    template = templates.get(cfg.data.template, tokenizer) if cfg.data.template else templates.default_for(tokenizer)
    with console.status("Answering the held-out questions before training"):
        before, before_answers = exact_match(base, tokenizer, template, held_out)
    del base

    result = train(cfg, console=console)
    with console.status("Answering the held-out questions after training"):
        after, after_answers = exact_match(result.model, result.tokenizer, template, held_out)

    history = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in history if "eval_loss" in r]
    loss_before = evals[0]["eval_loss"] if evals and evals[0]["step"] == 0 else None
    loss_after = result.summary.get("eval_loss")

    table = Table(title=f"Held-out results ({len(held_out)} examples)")
    table.add_column("")
    table.add_column("before")
    table.add_column("after")
    table.add_row("exact match (JSON equal to the truth)", f"{before:.1%}", f"{after:.1%}")
    if loss_before is not None and loss_after is not None:
        table.add_row("loss per answer token", f"{loss_before:.3f}", f"{loss_after:.3f}")
    console.print(table)
    for k in (0, 1):  # one Chinese and one English example
        console.print(f"[bold]Q:[/bold] {held_out[k]['messages'][0]['content']}")
        console.print(f"  [red]before:[/red] {before_answers[k]!r}")
        console.print(f"  [green]after:[/green]  {after_answers[k]!r}")
    s = result.summary
    console.print(f"Trained {s['trained_tokens']} answer tokens in {s['train_seconds']:.0f} s, "
                  f"{s['trained_tokens_per_second']:.0f} tokens/s while training (evaluations left out), peak memory {s['peak_memory_mb']:.0f} MB. "
                  f"Run folder: {result.run_dir}")
    outcome = {"method": cfg.method.name, "exact_match_before": before, "exact_match_after": after,
               "loss_before": loss_before, "loss_after": loss_after, "run_dir": str(result.run_dir), "summary": s}
    (result.run_dir / "demo.json").write_text(json.dumps(outcome, indent=2) + "\n", encoding="utf-8")
    return outcome
