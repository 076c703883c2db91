"""One SFT run (stage: sft), top to bottom: model, data, method, trainer -> the run folder. A peer of
sftune.preference.recipe; sftune.recipes.train loads and checks the configuration and picks the stage's recipe.

The run folder (output.dir) holds the model or adapter, the tokenizer with the chat template used
(inference sees exactly what training saw), config.yaml, encode_options.json (how the data was labelled, for
evaluation), metrics.jsonl, curves.png, summary.json, and checkpoints/ to resume from.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch
from rich.markup import escape
from transformers import EarlyStoppingCallback, TrainerCallback, set_seed

from sftune import attention, distributed, methods, models, publish, runs, templates
from sftune.config import Config, ConfigError
from sftune.hardware import resolve_precision
from sftune.modality import Modality, text as text_modality
from sftune.templates import stops
from sftune.training.arguments import arguments_for_loading, micro_batch_size, training_arguments
from sftune.training.callbacks import MetricsFileCallback, RichProgressCallback, close_progress
from sftune.training.checkpoints import CheckpointCompleteCallback
from sftune.training.compile import compile_layers, inductor_cache
from sftune.training.data import EncodedData, batches, prepare_data, read_conversations
from sftune.training.generate_eval import generation_metrics
from sftune.training.kernels import apply_kernels
from sftune.training.objectives import objective_for
from sftune.training.plot import plot_curves
from sftune.training.records import ResumeScheduleCheck, write_environment
from sftune.training.replay import replay_pairs
from sftune.training.run import (TrainResult, final_evaluation, is_main_process, packing_decision, peak_memory_mb,
                                 start_or_resume, weights_dtype)
from sftune.training.selection import candidates, selector_for
from sftune.training.trainer import SFTTrainer
from sftune.vision import models as vision_models


def train_sft(cfg: Config, *, console, callbacks: list[TrainerCallback] | None = None) -> TrainResult:
    """Run one SFT training (stage: sft) of a loaded and checked Config (sftune.recipes.train); write the run folder;
    return it. `callbacks`: extra `transformers.TrainerCallback`s, run after sftune's own."""
    run_dir = Path(cfg.output.dir)
    resume = start_or_resume(cfg, run_dir, console)
    cuda = torch.cuda.is_available()
    precision = distributed.launch_precision(resolve_precision(cfg.train.precision), cfg.train.precision, cuda)
    distributed.check_launch(cfg, cuda=cuda)  # before anything is loaded
    publish.check(cfg)  # output.push_to_hub: its token, before hours of training

    set_seed(cfg.train.seed)  # adapters are initialized randomly: the same seed, the same run
    loading = arguments_for_loading(cfg, run_dir, precision=precision)  # ZeRO-3 init / FSDP low-RAM loading
    if vision_models.is_vision_model(models.resolve(cfg.model.name)):  # the one place a run's modality is decided
        model, modality, packing = setup_vision_model(cfg, precision, console)
        tokenizer = modality.tokenizer
    else:
        model, tokenizer, packing = setup_model(cfg, precision, console)
        modality = text_modality(tokenizer)
    template = templates.get(cfg.data.template, tokenizer, cfg.data.template_kwargs)
    checked = stops.audit(template, tokenizer, stops.eos_ids(model))  # every reply ends in a trained stop
    template = checked.template
    console.print(checked.summary(), highlight=False)

    read = read_conversations(cfg, template)  # every process reads the same rows in the same order
    if (dropped := templates.dropped_reasoning(template, read[0])) is not None:  # never silently
        console.print(f"[yellow]{escape(dropped)}[/yellow]", highlight=False)
    selector = selector_for(cfg, keep=micro_batch_size(cfg.train, packing=packing, cuda=cuda))  # train.batch_selection
    args = training_arguments(cfg, run_dir, precision=precision, has_eval=bool(read[1]), packing=packing,
                              resumed=resume is not None,  # each forward pass reads K / ratio candidates, trains ~K
                              candidates=candidates(selector.keep, selector.ratio) if selector else None)
    del loading  # the real arguments hold the launch's DeepSpeed config from here on
    replay = None  # data.replay: the base model's own pairs, generated once (cached in the run folder)
    if cfg.data.replay.ratio > 0:
        replay = functools.partial(replay_pairs, cfg, model, tokenizer, template, run_dir=run_dir, console=console)
    # The first process of each machine encodes (under the cache's file lock: one writer even when several
    # machines share the disk); the others then memory-map its cache. Each process reads the same rows in the same
    # order, and the Trainer's sampler gives each its own share of every step (see docs/distributed.md).
    with args.main_process_first(local=True, desc="reading and encoding data"):
        encoded = prepare_data(cfg, tokenizer, template, console=console, modality=modality, replay=replay,
                               read=read)

    run_dir.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        runs.write_config(run_dir, cfg)  # paths that survive moving the folder
        encoded.options.save(run_dir)  # evaluation encodes as training did (sftune.encode.options)
    templates.save_to_tokenizer(template, tokenizer)  # inference uses exactly the training template
    own = [ResumeScheduleCheck(resume, console)] if resume is not None else []
    trainer = setup_trainer(cfg, model, tokenizer, template, encoded, args, packing=packing, console=console,
                            callbacks=own + list(callbacks or []), modality=modality, batch_selector=selector)
    if trainer.is_world_process_zero():
        write_environment(run_dir, precision=precision, resumed_from=resume)  # versions, command line, revision

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        output = trainer.train(resume_from_checkpoint=resume)
    finally:
        close_progress(trainer)
    final_eval = final_evaluation(trainer) if trainer.eval_dataset is not None else {}

    trainer.save_model(str(run_dir))  # model or adapter, plus the tokenizer with its chat template
    if trainer.is_world_process_zero():
        runs.write_generation_config(run_dir, model, checked.stop_ids)  # inference stops where training did
    if trainer.is_world_process_zero():
        modality.save(run_dir, tokenizer)  # an image-text run: its processor beside the tokenizer
    trainable, total = methods.count_parameters(model)
    summary = {
        **run_summary(cfg, trainer, encoded, precision=precision, packing=packing),
        "train_loss": output.training_loss,
        "train_seconds": round(trainer.wall_seconds, 3),  # both clocks add up the resumed sessions
        "train_seconds_excluding_eval": round(trainer.train_seconds, 3),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "resumed_from": resume,
        **({"batch_selection": selector.summary()} if selector is not None else {}),
        **final_eval,
    }
    if trainer.is_world_process_zero():
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
        publish.finish(cfg, run_dir, console)  # the model card (over peft's template); output.push_to_hub
    return TrainResult(run_dir=run_dir, summary=summary, model=trainer.model, tokenizer=tokenizer)


def setup_model(cfg: Config, precision: str, console) -> tuple[Any, Any, bool]:
    """(model with the method applied, tokenizer, packing on or off for this method and model)."""
    packing, _ = packing_decision(cfg)  # the method's answer before loading: the attention implementation follows
    model, tokenizer = models.load(
        cfg.model.name,
        dtype=weights_dtype(cfg, precision),
        attn_implementation=attention.resolve(cfg.model.attn_implementation, packing=packing),
        trust_remote_code=cfg.model.trust_remote_code,
        **methods.load_kwargs(cfg.method),
    )
    applied = apply_kernels(model, cfg.train.kernels)
    if applied:
        console.print(applied)
    model = methods.apply_method(model, cfg.method, tokenizer, verbose=False)
    console.print(f"[bold]{cfg.method.name}[/bold] on {cfg.model.name}: {methods.trainable_summary(model)}")
    packing, why = packing_decision(cfg, model)  # the method on this model; its packed rows == its sequences alone
    if why:
        console.print(f"[yellow]packing off: {escape(why)}; batch_size now counts sequences[/yellow]")
    if cfg.train.gradient_checkpointing:
        ok, why = methods.gradient_checkpointing_supported(cfg.method)
        if not ok:
            raise ConfigError(f"train.gradient_checkpointing=true: {why}")
    if cfg.train.compile:
        count = compile_layers(model)
        console.print(f"train.compile: {count} decoder layers compiled at their first step "
                      f"(cache {inductor_cache()}; minutes on a CPU with a cold cache)")
    return model, tokenizer, packing


def setup_vision_model(cfg: Config, precision: str, console) -> tuple[Any, Modality, bool]:
    """(vision-language model with the method applied, its image-text Modality, packing on or off): see sftune/vision.
    Qwen2-VL / Qwen2.5-VL rows pack; other families' batches are padded (vision.dataset.packing_refused)."""
    from sftune.vision import methods as vision_methods, modality as vision_modality
    from sftune.vision.dataset import packing_refused

    dtype = weights_dtype(cfg, precision, half_on_cpu=False)
    if cfg.method.name not in ("lora", "qlora", "full"):
        raise ConfigError(f"method.name={cfg.method.name}: vision-language models train with lora, qlora or full")
    folder = models.resolve(cfg.model.name)
    refused = packing_refused(vision_models.model_type(folder) or "")  # the family's rule, then batch selection's
    if refused is None and cfg.train.batch_selection.method != "none":
        refused = f"train.batch_selection={cfg.train.batch_selection.method} selects whole sequences"
    packing, why = packing_decision(cfg, refused=refused)  # before loading: the attention implementation follows
    if why:
        console.print(f"[yellow]packing off: {why}; batches are padded and batch_size counts sequences[/yellow]")
    model, processor = vision_models.load(
        folder, dtype=dtype,
        attn_implementation=attention.resolve(cfg.model.attn_implementation, packing=packing),
        trust_remote_code=cfg.model.trust_remote_code, **methods.load_kwargs(cfg.method))
    model = vision_methods.apply(model, cfg.method, train_projector=cfg.vision.train_projector,
                                 train_vision_tower=cfg.vision.train_vision_tower, tokenizer=processor.tokenizer)
    console.print(f"[bold]{cfg.method.name}[/bold] on {cfg.model.name} (vision-language): "
                  f"{methods.trainable_summary(model)}")
    if packing:
        ok, why = methods.packing_supported(cfg.method, model)
        if not ok:
            console.print(f"[yellow]packing off: {why}; batch_size now counts sequences[/yellow]")
            packing = False
    return model, vision_modality.image_text(processor, model), packing


def setup_trainer(cfg: Config, model: Any, tokenizer: Any, template: Any, encoded: EncodedData, args: Any, *,
                  packing: bool, console, callbacks: list[TrainerCallback] | None,
                  modality: Modality | None = None, batch_selector: Any = None) -> SFTTrainer:
    """The SFTTrainer over the batched data, complete: sftune's callbacks first and the caller's after, train.loss's
    objective, the batch selector (train.batch_selection) and the generation metrics of eval.generate_metrics on
    the first validation conversations. The modality (text when None) gives the batches."""
    modality = modality or text_modality(tokenizer)
    train_rows, collate = batches(encoded.train, packing=packing, max_len=cfg.data.max_len,
                                  pad_token_id=tokenizer.pad_token_id, modality=modality)
    eval_rows, _ = batches(encoded.eval, packing=packing, max_len=cfg.data.max_len,
                           pad_token_id=tokenizer.pad_token_id, modality=modality)
    own = [CheckpointCompleteCallback(), MetricsFileCallback(Path(cfg.output.dir) / "metrics.jsonl"),
           RichProgressCallback(console)]
    if cfg.eval.early_stopping_patience:
        own.append(EarlyStoppingCallback(early_stopping_patience=cfg.eval.early_stopping_patience,
                                         early_stopping_threshold=cfg.eval.early_stopping_threshold))
    e = cfg.eval
    generation_eval = None
    if e.generate_metrics and modality.generation_eval_refused:
        console.print(f"[yellow]eval.generate_metrics left out: {modality.generation_eval_refused}[/yellow]")
    elif e.generate_metrics and encoded.eval_conversations:
        generation_eval = functools.partial(
            generation_metrics, tokenizer=tokenizer, template=template,
            conversations=encoded.eval_conversations[: e.generate_max_examples], names=e.generate_metrics,
            max_new_tokens=e.generate_max_new_tokens, batch_size=e.batch_size or 16)
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        data_collator=collate,
        processing_class=tokenizer,
        callbacks=own + list(callbacks or []),
        objective=objective_for(cfg.train, template.stop_token_ids(tokenizer)),
        batch_selector=batch_selector,
        generation_eval=generation_eval,
    )

def run_summary(cfg: Config, trainer: SFTTrainer, encoded: EncodedData, *, precision: str, packing: bool
                ) -> dict[str, Any]:
    """What was trained, how, and how much: the first part of summary.json."""
    return {
        "model": cfg.model.name,
        "method": cfg.method.name,
        "precision": precision,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "processes": trainer.accelerator.num_processes,
        "packing": packing,
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "train_examples": len(encoded.train),
        "eval_examples": 0 if encoded.eval is None else len(encoded.eval),
        "skipped": {name: encoded.reports[name].skipped if name in encoded.reports else 0
                    for name in ("train", "eval")},
        "trained_tokens": trainer.trained_tokens,
        "trained_tokens_per_second": round(trainer.trained_tokens / max(trainer.train_seconds, 1e-9), 2),
    }


def __getattr__(name: str):
    # `from sftune.training.recipe import train`, as before the stage dispatch moved above both recipes
    if name == "train":
        from sftune.recipes import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
