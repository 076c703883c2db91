"""One preference run, top to bottom: configuration -> model (from a base or an SFT run folder), pairs,
reference log-probs, PreferenceTrainer -> the same run folder as SFT (model or adapter, tokenizer with
its template, config.yaml, metrics.jsonl, curves.png, summary.json, checkpoints/)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.markup import escape
from transformers import TrainerCallback, set_seed

from sftune import attention, data, methods, models, publish, runs, templates
from sftune.config import Config, ConfigError
from sftune.distributed import launch_precision
from sftune.hardware import resolve_precision
from sftune.packing import packing_refused
from sftune.preference.batches import collate_pairs
from sftune.preference.encode import encode_pairs
from sftune.preference.losses import NEEDS_REFERENCE, Settings
from sftune.preference.reference import add_reference_logps
from sftune.preference.trainer import PreferenceTrainer
from sftune.templates import stops
from sftune.training.arguments import arguments_for_loading, training_arguments
from sftune.training.callbacks import MetricsFileCallback, RichProgressCallback, close_progress
from sftune.training.checkpoints import CheckpointCompleteCallback
from sftune.data.entries import read_entries
from sftune.training.plot import plot_curves
from sftune.training.records import ResumeScheduleCheck, write_environment
from sftune.training.run import (TrainResult, final_evaluation, is_main_process, packing_decision, peak_memory_mb,
                                 start_or_resume, weights_dtype)


def train_preference(cfg: Config, *, console, callbacks: list[TrainerCallback] | None = None) -> TrainResult:
    """Run one preference training (stage: preference) of a loaded and checked Config (sftune.recipes.train); write
    the run folder; return it."""
    run_dir = Path(cfg.output.dir)
    publish.check(cfg)  # output.push_to_hub: its token, before hours of training
    resume = start_or_resume(cfg, run_dir, console)
    precision = launch_precision(resolve_precision(cfg.train.precision), cfg.train.precision,
                                 torch.cuda.is_available())
    set_seed(cfg.train.seed)
    loading = arguments_for_loading(cfg, run_dir, precision=precision)  # ZeRO-3 init / FSDP low-RAM loading
    setup = setup_model(cfg, precision, console)
    del loading  # the model is loaded: its DeepSpeed config may go
    model, tokenizer, packing = setup.model, setup.tokenizer, setup.packing
    # the config saved with the run names what was trained: an SFT run's base under its continued adapter, and
    # the SFT run's template when data.template named none
    saved = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": setup.base}),
                                   "data": cfg.data.model_copy(update={"template": setup.template_name,
                                                                      "template_kwargs": setup.template_kwargs})})
    checked = stops.audit(setup.template, tokenizer, stops.eos_ids(model))  # every answer ends in a trained stop
    template = checked.template
    console.print(checked.summary(), highlight=False)

    train_pairs, eval_pairs = read_pairs(cfg)
    sets, reports = {}, {}
    for name, pairs in (("train", train_pairs), ("eval", eval_pairs)):
        sets[name], reports[name] = encode_pairs(pairs, tokenizer, template, max_len=cfg.data.max_len) if pairs \
            else (None, None)
        if reports[name] and reports[name].skipped:
            console.print(f"[yellow]{name}: skipped {reports[name].skipped} of {reports[name].total} pairs: "
                          f"{reports[name].skipped_by_reason}[/yellow]")
    if sets["train"] is None or len(sets["train"]) == 0:
        raise ConfigError("no training pair is left after reading and encoding data.train; see the report above")

    settings = Settings(**cfg.preference.model_dump())
    shared = packing and getattr(model.config, "_attn_implementation", None) == attention.NAME
    why = packing_refused(model, branches=True) if shared else None  # a branch == its prompt + answer alone
    if why:
        console.print(f"[yellow]shared prompts off: {escape(why)}; each pair's two sequences pack whole[/yellow]")
        shared = False
    collate = functools.partial(collate_pairs, packing=packing, pad_token_id=tokenizer.pad_token_id,
                                shared_prompt=shared)
    args = training_arguments(cfg, run_dir, precision=precision, has_eval=sets["eval"] is not None, packing=True,
                              resumed=resume is not None)
    if NEEDS_REFERENCE[settings.loss]:
        fresh_adapter = hasattr(model, "disable_adapter") and not setup.continued
        for name in ("train", "eval"):
            if sets[name] is not None:
                sets[name] = add_reference_logps(model, sets[name], collate, batch_size=args.per_device_eval_batch_size,
                                                 adapter_off=fresh_adapter, device=args.device,
                                                 precision=precision)

    run_dir.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        runs.write_config(run_dir, saved)  # paths that survive moving the folder
    templates.save_to_tokenizer(template, tokenizer)
    own = [CheckpointCompleteCallback(), MetricsFileCallback(run_dir / "metrics.jsonl"), RichProgressCallback(console)]
    own += [ResumeScheduleCheck(resume, console)] if resume is not None else []
    trainer = PreferenceTrainer(model=model, args=args, train_dataset=sets["train"], eval_dataset=sets["eval"],
                                data_collator=collate, processing_class=tokenizer,
                                callbacks=own + list(callbacks or []), settings=settings)
    if trainer.is_world_process_zero():
        write_environment(run_dir, precision=precision, resumed_from=resume)
    try:
        output = trainer.train(resume_from_checkpoint=resume)
    finally:
        close_progress(trainer)
    final_eval = final_evaluation(trainer) if sets["eval"] is not None else {}
    trainer.save_model(str(run_dir))
    if trainer.is_world_process_zero():
        runs.write_generation_config(run_dir, model, checked.stop_ids)  # inference stops where training did
    trainable, total = methods.count_parameters(model)
    summary = {
        "stage": "preference", "loss": settings.loss, "model": setup.base, "started_from": cfg.model.name,
        "method": cfg.method.name, "precision": precision, "processes": trainer.accelerator.num_processes,
        "packing": packing, "shared_prompt": shared,
        "steps": trainer.state.global_step, "epochs": trainer.state.epoch,
        "train_pairs": len(sets["train"]), "eval_pairs": 0 if sets["eval"] is None else len(sets["eval"]),
        "skipped": {name: reports[name].skipped if reports[name] else 0 for name in ("train", "eval")},
        "trained_tokens": trainer.trained_tokens,
        "trained_tokens_per_second": round(trainer.trained_tokens / max(trainer.train_seconds, 1e-9), 2),
        "train_loss": output.training_loss, "train_seconds": round(trainer.wall_seconds, 3),
        "pairs_per_second": round(len(sets["train"]) * (trainer.state.epoch or 1) / max(trainer.train_seconds, 1e-9), 3),
        "peak_memory_mb": round(peak_memory_mb(), 1), "trainable_parameters": trainable,
        "total_parameters": total, "resumed_from": resume, **final_eval,
    }
    if trainer.is_world_process_zero():
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
        publish.finish(saved, run_dir, console)  # the model card (over peft's template); output.push_to_hub
    return TrainResult(run_dir=run_dir, summary=summary, model=trainer.model, tokenizer=tokenizer)


def read_pairs(cfg: Config) -> tuple[list, list]:
    """(train pairs, held-out pairs) from data.train / data.eval (or a val_ratio split), read as preference data."""
    d = cfg.data
    if not d.train:
        raise ConfigError("data.train is empty: give the preference data files, e.g. data.train=[data/pairs.jsonl]")
    options = {"format": d.format, "columns": d.columns, "on_error": d.on_error, "preference": True}
    pairs = read_entries(cfg, "train", options)
    if d.eval:
        return pairs, read_entries(cfg, "eval", options)
    if d.val_ratio > 0 and len(pairs) > 1:
        return data.split(pairs, val_ratio=d.val_ratio, seed=d.seed)
    return pairs, []


@dataclass
class Setup:
    """What setup_model loaded and resolved: the model and its tokenizer and template, whether it packs, whether an
    SFT run's adapter is continued, and the names the run's saved config gives: `base`, the model the weights
    start from (an SFT run's base under its continued adapter, else model.name), and `template_name`, data.template
    (an SFT run's own when none was given), and `template_kwargs` likewise."""

    model: Any
    tokenizer: Any
    template: Any
    packing: bool
    continued: bool
    base: str
    template_name: str | None
    template_kwargs: dict = field(default_factory=dict)


def setup_model(cfg: Config, precision: str, console) -> Setup:
    """The model with the method applied, and what was resolved on the way (see Setup); `cfg` is left as it is.

    model.name may be an SFT run folder: its full weights, or its adapter on its base model (continued
    when method is lora / qlora, merged into the weights for full / freeze); its template is used.
    """
    name = base = cfg.model.name
    template_name, kwargs = cfg.data.template, cfg.data.template_kwargs
    packing, _ = packing_decision(cfg)  # the method's answer before loading: the attention implementation follows
    options = {"dtype": weights_dtype(cfg, precision),
               "attn_implementation": attention.resolve(cfg.model.attn_implementation, packing=packing),
               "trust_remote_code": cfg.model.trust_remote_code, **methods.load_kwargs(cfg.method)}
    continued = False
    if runs.is_run(name):
        run_cfg = runs.run_config(name)
        continued = (Path(name) / runs.ADAPTER_CONFIG).is_file() and cfg.method.name in ("lora", "qlora")
        model, tokenizer, template = runs.load_weights(name, run_cfg, trainable=continued, merge=not continued,
                                                       **options)
        if continued:
            base = run_cfg.model.name  # the adapter goes on the SFT run's base, as runs.load reads it
        template_name = template_name or run_cfg.data.template
        kwargs = cfg.data.template_kwargs or run_cfg.data.template_kwargs
    else:
        model, tokenizer = models.load(name, **options)
        template = templates.get(cfg.data.template, tokenizer, kwargs)
    if not continued:
        model = methods.apply_method(model, cfg.method, tokenizer, verbose=False)
    console.print(f"[bold]{cfg.stage} ({cfg.preference.loss})[/bold], {cfg.method.name} on {name}"
                  f"{' (continuing its adapter)' if continued else ''}: {methods.trainable_summary(model)}")
    packing, why = packing_decision(cfg, model)  # the method on this model; its packed rows == its sequences alone
    if why:
        console.print(f"[yellow]packing off: {escape(why)}; pairs are padded batches[/yellow]")
    return Setup(model, tokenizer, template, packing, continued, base=base, template_name=template_name,
                 template_kwargs=kwargs)
