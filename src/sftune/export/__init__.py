"""`sftune export`: a run folder as deployable artefacts, each answering as the run does.

    summary = export("runs/lora", "exported/", gguf="f16", ollama=True, check=True)

merge.py folds a LoRA into the base weights and writes a plain transformers folder (safetensors, the
tokenizer with the training template, a generation_config that stops at the end-of-turn token);
gguf.py writes that model as one GGUF file (gguf/model.gguf) for llama.cpp / Ollama; ollama.py writes
a Modelfile beside it;
check.py renders held-out prompts through each artefact as a runtime would and compares with the run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftune.export.gguf import GGUF_DIR, GGUF_NAME
from sftune.export.merge import NOT_MERGEABLE, ExportError, merge_run

__all__ = ["ExportError", "NOT_MERGEABLE", "export", "merge_run"]



def export(
    run: str | Path,
    out_dir: str | Path,
    *,
    gguf: str | None = None,
    ollama: bool = False,
    check: bool = False,
    check_data: str | Path | None = None,
    check_count: int = 8,
    check_max_new_tokens: int = 32,
    dtype: str = "float32",
    console: Any = None,
) -> dict[str, Any]:
    """Write the merged folder to `out_dir` (plus model.gguf and a Modelfile when asked), then check them.

    Returns the summary also written to `out_dir`/export.json.
    """
    out_dir = Path(out_dir)
    summary, model, tokenizer, template, stops = merge_run(run, out_dir, dtype=dtype)
    if gguf or ollama:
        from sftune.export.gguf import write_gguf

        summary["gguf"] = write_gguf(model, tokenizer, template, stops, out_dir / GGUF_DIR / GGUF_NAME,
                                     outtype=gguf or "f16")
    if ollama:
        from sftune.export.ollama import write_modelfile

        summary["ollama"] = str(write_modelfile(out_dir / GGUF_DIR, template, tokenizer, stops, GGUF_NAME))
    del model
    _write_summary(out_dir, summary)
    if check:
        from sftune.export.check import check_export

        report = check_export(run, out_dir, data=check_data, count=check_count,
                              max_new_tokens=check_max_new_tokens, console=console)
        summary["check"] = {"ok": report["ok"], "report": report["report"]}
        _write_summary(out_dir, summary)
    return summary


def _write_summary(out_dir: Path, summary: dict[str, Any]) -> None:
    (out_dir / "export.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
