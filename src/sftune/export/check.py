"""The parity check: does each exported artefact answer as the run does?

Held-out prompts (the run's eval data, or a file given) are rendered through each artefact exactly as
a runtime would: the merged folder with its own tokenizer's `apply_chat_template` and its
generation_config's eos ids; the GGUF through transformers' GGUF loader, with the chat template and
eos / end-of-turn ids from the GGUF's metadata. Prompt token ids and greedy answers are compared with
the run's own (runs.load + sftune.generation); check.json and check.md say where they differ.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any

from sftune import generation, runs, templates
from sftune.export.gguf import GGUF_DIR, GGUF_NAME
from sftune.export.merge import ExportError
from sftune.serve.batch import read_prompts



def check_export(run: str | Path, export_dir: str | Path, *, data: str | Path | None = None, count: int = 8,
                 max_new_tokens: int = 32, console: Any = None) -> dict[str, Any]:
    """Compare every artefact in `export_dir` with the run on `count` prompts; writes check.json / check.md."""
    export_dir = Path(export_dir)
    loaded = runs.load(run)
    source = data or (loaded.config.data.eval if loaded.config is not None else None)
    if not source:
        raise ExportError(f"{run} has no eval data in its config.yaml to check with; pass --check-data FILE "
                          "(any data file sftune reads)")
    source = source[0] if isinstance(source, (list, tuple)) else source
    if data is None and not glob.glob(str(source)) and not Path(source).exists():
        raise ExportError(f"the run's eval data {source} (data.eval in {run}/config.yaml) is not found: was it "
                          "moved or deleted? Pass --check-data FILE (any data file sftune reads)")
    items = read_prompts(source)[:count]
    options = generation.GenerationOptions(max_new_tokens=max_new_tokens)
    conversations = [templates.normalize_messages(item["messages"]) for item in items]
    ref_ids = generation.encode_prompts(loaded.tokenizer, generation.render_prompts(loaded.template, conversations))
    reference = generation.generate(loaded.model, loaded.tokenizer, ref_ids, options,
                                    stop_token_ids=loaded.stop_token_ids)
    del loaded
    artefacts = {"merged": _merged(export_dir)}
    if (export_dir / GGUF_DIR / GGUF_NAME).is_file():
        artefacts["gguf"] = _gguf(export_dir / GGUF_DIR)
    rows = []
    for name, (model, tokenizer, stops) in artefacts.items():
        chats = [templates.to_hf_messages(c) for c in conversations]
        ids = [list(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                                  return_dict=False)) for chat in chats]
        answers = generation.generate(model, tokenizer, ids, options, stop_token_ids=stops)
        for item, want_ids, got_ids, want, got in zip(items, ref_ids, ids, reference, answers):
            rows.append(_compare(name, item, want_ids, got_ids, want, got, loaded_tokenizer=tokenizer))
    ok = all(row["same_prompt"] and row["same_answer"] for row in rows)
    report = {"ok": ok, "prompts": len(items), "data": str(source), "max_new_tokens": max_new_tokens,
              "artefacts": list(artefacts), "rows": rows, "report": str(export_dir / "check.md")}
    (export_dir / "check.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (export_dir / "check.md").write_text(_markdown(report), encoding="utf-8")
    if console is not None:
        _print(console, report)
    return report


def _merged(folder: Path):
    """The merged folder loaded like any checkpoint; stops from its generation_config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    eos = GenerationConfig.from_pretrained(str(folder)).eos_token_id
    return model, tokenizer, [eos] if isinstance(eos, int) else list(eos or [])


def _gguf(folder: Path):
    """The GGUF through transformers' loader (tokenizer and chat template from its metadata); stops = eos + eot."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=GGUF_NAME).eval()
    model.hf_quantizer = None  # the weights are plain tensors once loaded (see DESIGN.md)
    reader = gguf.GGUFReader(str(folder / GGUF_NAME))
    stops = []
    for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eos_token_id"):
        field = reader.get_field(key)
        if field is not None:
            stops.append(int(field.contents()))
    return model, tokenizer, stops


def _compare(name, item, want_ids, got_ids, want, got, loaded_tokenizer) -> dict[str, Any]:
    """One artefact on one prompt: equal prompt ids and answer ids, or where they first differ."""
    row: dict[str, Any] = {"artefact": name, "index": item["index"], "source": item["source"],
                           "same_prompt": want_ids == got_ids, "same_answer": want.token_ids == got.token_ids
                           and want.finish_reason == got.finish_reason}
    if not row["same_prompt"]:
        k = _first_difference(want_ids, got_ids)
        row["prompt_first_difference"] = {"position": k, "run": want_ids[k: k + 8], "artefact": got_ids[k: k + 8],
                                          "run_text": loaded_tokenizer.decode(want_ids[k: k + 8]),
                                          "artefact_text": loaded_tokenizer.decode(got_ids[k: k + 8])}
    if not row["same_answer"]:
        k = _first_difference(want.token_ids, got.token_ids)
        row["answer_first_difference"] = {"position": k, "run": want.token_ids[k: k + 1],
                                          "artefact": got.token_ids[k: k + 1]}
        row["run_answer"], row["artefact_answer"] = want.text, got.text
        row["run_finish"], row["artefact_finish"] = want.finish_reason, got.finish_reason
    return row


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _markdown(report: dict[str, Any]) -> str:
    verdict = "all artefacts agree with the run" if report["ok"] else "DIFFERENCES FOUND"
    lines = [f"# Export parity check: {verdict}", "",
             f"{report['prompts']} prompts from {report['data']}, greedy, max_new_tokens {report['max_new_tokens']}.",
             "", "| artefact | prompts with equal token ids | equal greedy answers |", "|---|---|---|"]
    for name in report["artefacts"]:
        rows = [r for r in report["rows"] if r["artefact"] == name]
        lines.append(f"| {name} | {sum(r['same_prompt'] for r in rows)}/{len(rows)} | "
                     f"{sum(r['same_answer'] for r in rows)}/{len(rows)} |")
    for row in report["rows"]:
        if row["same_prompt"] and row["same_answer"]:
            continue
        lines += ["", f"## {row['artefact']}, prompt {row['index']} ({row['source']})"]
        if "prompt_first_difference" in row:
            d = row["prompt_first_difference"]
            lines.append(f"- prompt tokens differ from position {d['position']}: run {d['run']} "
                         f"({d['run_text']!r}), artefact {d['artefact']} ({d['artefact_text']!r})")
        if "answer_first_difference" in row:
            d = row["answer_first_difference"]
            lines.append(f"- answer tokens differ from position {d['position']}: run {d['run']}, artefact "
                         f"{d['artefact']}")
            lines.append(f"- run answer ({row['run_finish']}): {row['run_answer']!r}")
            lines.append(f"- artefact answer ({row['artefact_finish']}): {row['artefact_answer']!r}")
    return "\n".join(lines) + "\n"


def _print(console: Any, report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"parity check on {report['prompts']} prompts ({report['data']})")
    for column in ("artefact", "equal prompt ids", "equal greedy answers"):
        table.add_column(column)
    for name in report["artefacts"]:
        rows = [r for r in report["rows"] if r["artefact"] == name]
        same_p, same_a = sum(r["same_prompt"] for r in rows), sum(r["same_answer"] for r in rows)
        style = "green" if same_p == same_a == len(rows) else "red"
        table.add_row(name, f"[{style}]{same_p}/{len(rows)}[/{style}]", f"[{style}]{same_a}/{len(rows)}[/{style}]")
    console.print(table)
    console.print(f"details: {report['report']}")
