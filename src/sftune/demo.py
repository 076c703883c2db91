"""The main job: a complete SFT run on a CPU in a few minutes, with a gain you can check.

The task is information extraction in Chinese and English: a sentence about a person in, the
person's name, age and city out as one line of JSON. Answers are checked exactly (parsed JSON equal
to the truth), so the held-out exact-match rate before and after training is the metric, next to
the held-out loss; the demo ends with `sftune eval`'s before/after report of its run. The data is
generated here, deterministically, from small word lists.
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
    """The whole demo: write the data, train, then the before/after report on the held-out examples.

    `method` trains the same task with another method (full, freeze, qlora, prompt_tuning ...). The
    report is `sftune eval RUN --tasks heldout` (RUN/eval/report.html): the base model and the run answer
    the same held-out questions; the extraction check (JSON equal to the truth) is its json_match.
    """
    import yaml
    from rich.console import Console
    from rich.table import Table

    from sftune import config as config_module
    from sftune.evaluate import compare
    from sftune.training import train

    console = console or Console()
    raw = yaml.safe_load(Path(config or DEFAULT_CONFIG).read_text(encoding="utf-8"))
    cfg = config_module.load(raw, (method_overrides(method) if method else []) + list(overrides or []))
    train_path, eval_path = Path(cfg.data.train[0]), Path(cfg.data.eval[0])
    write_dataset(train_path.parent)
    if eval_path.parent != train_path.parent:
        write_dataset(eval_path.parent)
    # written now, so absolute now: the run's config.yaml then names them from any working directory
    cfg.data.train[0], cfg.data.eval[0] = str(train_path.absolute()), str(eval_path.absolute())
    held_out = read_truths(eval_path)
    console.print(f"[bold]demo data[/bold]: {len(read_truths(train_path))} training and {len(held_out)} held-out "
                  f"examples (Chinese + English extraction to JSON) in {train_path.parent}")

    result = train(cfg, console=console)
    result.model = None  # the report loads the run from its folder, as `sftune eval` does
    report, paths = compare.compare(str(result.run_dir), tasks=["heldout"],
                                    options={"max_new_tokens": 32, "batch_size": 20}, console=console)
    task = report["tasks"][0]
    rows = {row["metric"]: row for row in task["rows"]}
    before, after = rows["json_match"]["base"], rows["json_match"]["model"]

    history = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in history if "eval_loss" in r]
    loss_before = evals[0]["eval_loss"] if evals and evals[0]["step"] == 0 else None
    loss_after = result.summary.get("eval_loss")

    table = Table(title=f"Held-out results ({len(held_out)} examples)")
    for column in ("", "before", "after", "delta (95% interval)"):
        table.add_column(column)
    for label, metric in (("exact match (JSON equal to the truth)", "json_match"), ("ROUGE-L", "rougeL"),
                          ("perplexity of the answers", "perplexity")):
        row = rows[metric]
        interval = row["delta_interval"]
        shown = "" if interval is None else f"[{interval[0]:+.2f}, {interval[1]:+.2f}]"
        fmt = "{:.1%}" if metric == "json_match" else "{:.3f}"
        table.add_row(label, fmt.format(row["base"]), fmt.format(row["model"]), shown)
    if loss_before is not None and loss_after is not None:
        table.add_row("loss per answer token", f"{loss_before:.3f}", f"{loss_after:.3f}", "")
    console.print(table)
    for base_sample, tuned_sample in list(zip(task["base"]["samples"], task["model"]["samples"]))[:2]:
        console.print(f"[bold]Q:[/bold] {base_sample['prompt'].removeprefix('user: ')}")  # one Chinese, one English
        console.print(f"  [red]before:[/red] {base_sample['answer']!r}")
        console.print(f"  [green]after:[/green]  {tuned_sample['answer']!r}")
    s = result.summary
    console.print(f"Trained {s['trained_tokens']} answer tokens in {s['train_seconds']:.0f} s, "
                  f"{s['trained_tokens_per_second']:.0f} tokens/s while training (evaluations left out), peak memory {s['peak_memory_mb']:.0f} MB. "
                  f"Run folder: {result.run_dir}")
    console.print(f"Before/after report: {paths['html']} (again with `sftune eval {result.run_dir} --tasks heldout`)")
    outcome = {"method": cfg.method.name, "exact_match_before": before, "exact_match_after": after,
               "loss_before": loss_before, "loss_after": loss_after, "run_dir": str(result.run_dir),
               "report": str(paths["html"]), "summary": s}
    (result.run_dir / "demo.json").write_text(json.dumps(outcome, indent=2) + "\n", encoding="utf-8")
    return outcome
