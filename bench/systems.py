"""Each benchmarked system as a function that builds a ready-to-train `transformers.Trainer`.

Every function gets the same loaded model, tokenizer and encoded examples (input_ids + labels,
response-only), and returns a Trainer whose collator and callbacks carry the harness's Meter.
What differs is only what the label says: each system's own defaults for precision, activation
checkpointing, padding and packing.
"""

from __future__ import annotations

from typing import Any, Callable

from bench.workload import MAX_LENGTH, Meter, Workload, lora_settings

# name -> (label shown in the table, builder); filled by @system below.
SYSTEMS: dict[str, tuple[str, Callable[..., Any]]] = {}


def system(name: str, label: str):
    def register(build):
        SYSTEMS[name] = (label, build)
        return build

    return register


def _lora():
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **lora_settings())


def _dataset(encoded: list[dict[str, list[int]]]):
    from datasets import Dataset

    return Dataset.from_list(encoded)


def _packs(encoded: list[dict[str, list[int]]]) -> int:
    """How many bins TRL's best-fit-decreasing packing makes of these examples."""
    from trl.data_utils import pack_dataset

    return len(pack_dataset(_dataset(encoded), MAX_LENGTH, "bfd"))


def _trl(work: Workload, model, tokenizer, encoded, meter: Meter, out: str, **overrides):
    import torch
    from trl import SFTConfig, SFTTrainer

    batch = work.batch
    if overrides.get("packing"):
        # A packed row holds several examples: keep the examples per optimizer step the same.
        batch = max(1, round(work.batch * _packs(encoded) / len(encoded)))
    config = SFTConfig(
        output_dir=out,
        per_device_train_batch_size=batch,
        max_length=MAX_LENGTH,
        num_train_epochs=1,
        seed=work.seed,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        # TRL's default bf16=True refuses to start on a machine without a GPU unless use_cpu is set.
        use_cpu=not torch.cuda.is_available(),
        **overrides,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=_dataset(encoded),
        processing_class=tokenizer,
        peft_config=_lora(),
        callbacks=[meter.callback()],
    )
    trainer.data_collator = meter.wrap(trainer.data_collator)
    return trainer


@system("trl_defaults", "TRL SFTTrainer, defaults")
def trl_defaults(work, model, tokenizer, encoded, meter, out):
    """TRL 1.x defaults: bf16 autocast on, activation checkpointing on, padded batches, no packing."""
    return _trl(work, model, tokenizer, encoded, meter, out)


@system("trl_packed", "TRL padding_free + packing")
def trl_packed(work, model, tokenizer, encoded, meter, out):
    """TRL defaults plus best-fit-decreasing packing into padding-free rows (bf16 and checkpointing stay on)."""
    return _trl(work, model, tokenizer, encoded, meter, out, packing=True, padding_free=True)


def machine_has_bf16() -> bool:
    """bf16 units: a GPU with bf16, or a CPU with AVX512-BF16 or AMX."""
    import torch

    from sftune.hardware import cpu_bf16_units, cuda_bf16

    if torch.cuda.is_available():
        return cuda_bf16()
    return cpu_bf16_units() is not None


@system("trl_best", "TRL best for this machine")
def trl_best(work, model, tokenizer, encoded, meter, out):
    """TRL as an expert sets it up for the machine: packing + padding-free, no checkpointing (a 135M model
    fits), bf16 where the CPU or GPU has bf16 units, fp32 where not."""
    return _trl(work, model, tokenizer, encoded, meter, out, packing=True, padding_free=True,
                bf16=machine_has_bf16(), gradient_checkpointing=False)


@system("trl_best_fp32", "TRL best, fp32")
def trl_best_fp32(work, model, tokenizer, encoded, meter, out):
    """On a machine with bf16 units, TRL's best settings in fp32 too: bf16 units are not always faster
    (an Intel Xeon with AVX512-BF16 and no AMX ran bf16 matmuls at 0.6x fp32)."""
    return _trl(work, model, tokenizer, encoded, meter, out, packing=True, padding_free=True,
                bf16=False, gradient_checkpointing=False)


@system("trl_best_unpacked", "TRL best, no packing")
def trl_best_unpacked(work, model, tokenizer, encoded, meter, out):
    """TRL's best precision for the machine without packing: padded batches of whole examples."""
    return _trl(work, model, tokenizer, encoded, meter, out, bf16=machine_has_bf16(), gradient_checkpointing=False)


@system("trl_liger", "TRL best + Liger kernels")
def trl_liger(work, model, tokenizer, encoded, meter, out):
    """TRL best settings on a GPU plus Liger's fused kernels (fused linear cross-entropy etc.)."""
    return _trl(work, model, tokenizer, encoded, meter, out, packing=True, padding_free=True,
                bf16=True, gradient_checkpointing=False, use_liger_kernel=True)


@system("tutorial", "Tutorial: HF Trainer, pad to 512")
def tutorial(work, model, tokenizer, encoded, meter, out):
    """The recipe most tutorials teach: plain Trainer, every example padded to max_length=512,
    attention mask over the padding, prompt and padding masked out of the labels."""
    from peft import get_peft_model
    from transformers import Trainer, TrainingArguments, default_data_collator

    pad = tokenizer.pad_token_id
    padded = []
    for e in encoded:
        n = MAX_LENGTH - len(e["input_ids"])
        padded.append({
            "input_ids": e["input_ids"] + [pad] * n,
            "attention_mask": [1] * len(e["input_ids"]) + [0] * n,
            "labels": e["labels"] + [-100] * n,
        })
    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=work.batch,
        num_train_epochs=1,
        seed=work.seed,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    return Trainer(
        model=get_peft_model(model, _lora()),
        args=args,
        train_dataset=_dataset(padded),
        data_collator=meter.wrap(default_data_collator),
        callbacks=[meter.callback()],
    )
