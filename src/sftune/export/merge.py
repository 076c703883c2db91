"""A run as a plain transformers folder: LoRA merged into the base, the training template, right stops.

A LoRA (or QLoRA) adapter is loaded on a full-precision base and folded in with peft's
`merge_and_unload`; QLoRA's 4-bit base is replaced by the original weights in 16/32 bit, so the
merge adds no rounding of its own (the adapter was trained against the 4-bit base: answers can differ
slightly from the run's; export.json says so). Full and freeze runs are saved as they are. The
generation_config's `eos_token_id` holds the template's end-of-turn token and EOS, which runtimes read
to know when a reply ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftune import runs, templates
from sftune.data import files
from sftune.errors import UserError

# Methods whose trained weights are not a change of the base weights: nothing to fold in.
NOT_MERGEABLE = {
    "prompt_tuning": "learned virtual tokens prepended to every prompt",
    "prefix_tuning": "learned key/value prefixes added to every attention layer",
    "p_tuning_v2": "learned key/value prefixes added to every attention layer",
}
DTYPES = ("float32", "bfloat16", "float16")


class ExportError(UserError, RuntimeError):
    """A run that cannot be exported as asked; the message says why and what to do instead."""


def merge_run(run: str | Path, out_dir: str | Path, *, dtype: str = "float32"):
    """Write the merged model, tokenizer and generation_config to `out_dir`.

    Returns (summary dict, model, tokenizer, template, stop token ids).
    """
    import torch

    from sftune import models

    run_dir = Path(run).expanduser()
    if not runs.is_run(run_dir):
        raise ExportError(f"{run_dir} is not a run folder (no config.yaml beside adapter or weights); export takes "
                          "the folder `sftune train` wrote (its output.dir)")
    if dtype not in DTYPES:
        raise ExportError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    cfg = runs.run_config(run_dir)
    base = cfg.model.name
    base_dir = models.materialized_path(base) if base in models.EMBEDDED else Path(base).expanduser()
    # neither the run nor its base model is written over
    files.refuse_overwrite([run_dir, base_dir], folders=True, output=out_dir)
    method = cfg.method.name
    if method in NOT_MERGEABLE:
        raise ExportError(
            f"{run_dir} was trained with {method} ({NOT_MERGEABLE[method]}): that is not a change of the base "
            "weights, so it cannot be merged into a standalone model, GGUF or Ollama file. Use the run folder "
            "itself (`sftune chat`, `sftune generate`, `sftune serve` load the adapter on its base), or train "
            "with method lora, full or freeze to get an exportable model.")
    torch_dtype = getattr(torch, dtype)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"run": str(run_dir), "method": method, "base": cfg.model.name, "dtype": dtype,
                               "merged": False}
    # An adapter's base in full precision (never 4-bit, even for QLoRA), the adapter folded in; full weights as
    # they are. The run's tokenizer, its saved template checked against config.yaml's.
    model, tokenizer, template = runs.load_weights(run_dir, cfg, merge=True, dtype=torch.float32)
    if (run_dir / runs.ADAPTER_CONFIG).is_file():
        summary["merged"] = True
        if method == "qlora":
            summary["note"] = (f"QLoRA: the adapter was merged into the base dequantized to {dtype} (the original "
                               "weights, not the 4-bit ones it was trained against); answers can differ slightly "
                               "from the run's 4-bit ones")
    stops = _stop_ids(template, tokenizer, runs.stop_token_ids(template, tokenizer, model, run_dir))
    templates.save_to_tokenizer(template, tokenizer)
    model = model.to(torch_dtype).eval()
    _set_generation_config(model, tokenizer, stops)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    summary.update(template=template.name, **({"template_kwargs": template.kwargs} if template.kwargs else {}),
                   stop_token_ids=stops,
                   stop_tokens=[tokenizer.convert_ids_to_tokens(i) for i in stops])
    return summary, model, tokenizer, template, stops


def _stop_ids(template: templates.Template, tokenizer: Any, stops: list[int]) -> list[int]:
    """The end-of-turn token first (runtimes that take one id take the first), then the other stops (EOS, the
    model's and the run's generation_config eos ids)."""
    turn = tokenizer(template.stop, add_special_tokens=False)["input_ids"] if template.stop else []
    first = turn[:1] if len(turn) == 1 else []
    return first + [i for i in stops if i not in first]


def _set_generation_config(model: Any, tokenizer: Any, stops: list[int]) -> None:
    """Greedy by default, stopping at the template's end of turn and EOS, padding with the pad token."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=stops if len(stops) > 1 else stops[0],
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0],
    )
    model.generation_config = config
