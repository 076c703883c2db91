"""The training configuration: one typed YAML file with sections model / data / method / train /
eval / output, where every key can be overridden on the command line as `section.key=value`.

    config = load("examples/lora.yaml", ["train.lr=1e-4", "method.r=8"])
    print(to_yaml(config))

An unknown key is an error that names it and suggests the closest known one.

Relative paths that a run reads (model.name when it is a folder, data.train / data.eval, train.resume_from)
are made absolute here: those written in a YAML file are looked up next to that file first, then in the
working directory; those given on the command line (or in a dict) are relative to the working directory.
A path found nowhere stays as written (it may be a hub id; reading it names the key). output.dir, the
folder a run writes, is always relative to the working directory, as in transformers' TrainingArguments.
"""

from __future__ import annotations

import difflib
import glob
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from sftune.errors import UserError

MethodName = Literal["full", "freeze", "lora", "qlora", "prompt_tuning", "prefix_tuning", "p_tuning_v2"]

# Which options belong to which method; setting another method's option is an error.
OPTIONS: dict[str, tuple[str, ...]] = {
    "full": (),
    "freeze": ("trainable_layers", "trainable_modules"),
    "lora": ("r", "alpha", "dropout", "target_modules", "rslora", "dora"),
    "qlora": ("r", "alpha", "dropout", "target_modules", "rslora", "dora", "quant_type", "double_quant", "compute_dtype"),
    "prompt_tuning": ("num_virtual_tokens", "init_text"),
    "prefix_tuning": ("num_virtual_tokens", "prefix_projection", "projection_hidden_size", "init_text"),
    "p_tuning_v2": ("num_virtual_tokens", "init_text"),
}


class ConfigError(UserError, ValueError):
    """The configuration file or an override is wrong; the message says where and how to fix it."""


class MethodConfig(BaseModel):
    """The `method:` section of a training configuration."""

    model_config = ConfigDict(extra="forbid")

    name: MethodName = "lora"
    # freeze
    trainable_layers: int = Field(2, ge=0, description="freeze: train the last N decoder layers")
    trainable_modules: list[str] = Field(
        default_factory=list,
        description="freeze: also train parameters whose name matches one of these patterns (fnmatch, e.g. '*.mlp.*', 'lm_head*')",
    )
    # lora / qlora
    r: int = Field(16, ge=1, description="lora: rank")
    alpha: float = Field(32, gt=0, description="lora: scaling numerator (alpha / r, or alpha / sqrt(r) with rslora)")
    dropout: float = Field(
        0.0, ge=0, lt=1, description="lora: dropout on the adapter input; 0 = off, as in peft, LLaMA-Factory and "
        "Unsloth (on a CPU, 0.05 costs ~15% of the step time and stores a dropped copy of each adapter's input)",
    )
    target_modules: str | list[str] = Field(
        "all-linear", description="lora: module names, or 'all-linear' (every linear layer except the output layer)"
    )
    rslora: bool = False
    dora: bool = False
    # qlora
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="qlora: dtype of the 4-bit matmuls; auto = bfloat16 on GPUs that have it, else float16 on GPU, float32 on CPU"
    )
    # prompt_tuning / prefix_tuning / p_tuning_v2
    num_virtual_tokens: int = Field(20, ge=1)
    init_text: str | None = Field(
        None, description="prompt_tuning: start the virtual tokens from this text's embeddings; prefix_tuning / "
        "p_tuning_v2: from the keys and values the model computes for this text (default: PREFIX_INIT_TEXT)",
    )
    prefix_projection: bool = Field(True, description="prefix_tuning: learn the prefix through an MLP (off = p_tuning_v2)")
    projection_hidden_size: int | None = Field(None, ge=1, description="prefix_tuning: MLP width (default: the model's hidden size)")

    @model_validator(mode="after")
    def _options_match_method(self) -> MethodConfig:
        # Another method's option set to its default passes, so a dumped configuration loads back.
        foreign = sorted(
            field
            for field in self.model_fields_set - {"name"} - set(OPTIONS[self.name])
            if getattr(self, field) != type(self).model_fields[field].get_default(call_default_factory=True)
        )
        if foreign:
            owners = {opt: [m for m, opts in OPTIONS.items() if opt in opts] for opt in foreign}
            detail = "; ".join(f"'{opt}' is an option of {', '.join(ms)}" for opt, ms in owners.items())
            allowed = ", ".join(OPTIONS[self.name]) or "none"
            raise ValueError(
                f"method '{self.name}' does not use {', '.join(repr(o) for o in foreign)} ({detail}). "
                f"Options of '{self.name}': {allowed}. Remove them or change method.name."
            )
        return self


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelSection(_Section):
    name: str = Field("smollm2-135m-instruct", description="embedded model name, checkpoint folder or hub id")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype; auto = the half dtype of a frozen base trained in bf16 or fp16 (adapter "
        "methods), else float32"
    )
    attn_implementation: str = Field(
        "auto",
        description="auto = sftune's varlen attention (each packed sequence attends to itself only, no mask "
        "built; torch's varlen_attn on a GPU) when packing, else transformers' default (sdpa, or eager for "
        "models that refuse sdpa); or any transformers name: sdpa, eager, flash_attention_2 ...",
    )
    trust_remote_code: bool = False


class DataEntry(_Section):
    """One dataset of data.train / data.eval with its own options, mixed by weight or by ratio."""

    path: str | list[str] = Field(description="files, globs or folders, a LLaMA-Factory dataset_info.json, or a "
                                  "Hugging Face Hub dataset hub:ORG/NAME[/SUBSET][:SPLIT]")
    format: str | None = Field(None, description="this dataset's format (default: data.format, else detected)")
    columns: dict[str, str] | None = Field(None, description="this dataset's column mapping")
    datasets: list[str] | None = Field(None, description="the entries of a dataset_info.json to read (default: all)")
    weight: float | None = Field(None, ge=0, description="size multiplier: 2 = every example twice, 0.5 = half")
    ratio: float | None = Field(None, ge=0, description="share of the mix (then every entry needs one)")

    @model_validator(mode="after")
    def _weight_or_ratio(self) -> "DataEntry":
        if self.weight is not None and self.ratio is not None:
            raise ValueError("give a dataset a weight or a ratio, not both")
        return self


class ReplaySection(_Section):
    """data.replay: pairs the base model writes itself (instruction and answer), mixed into the training data
    so that its general behaviour is rehearsed while it learns the task (sftune.training.replay)."""

    ratio: float = Field(0.0, ge=0, lt=1, description="share of the training set that is replay pairs; 0 = off")
    count: int | None = Field(None, ge=1, description="replay pairs to generate (default: as many as the ratio "
                              "needs; fewer are repeated to reach the ratio)")
    max_new_tokens: int = Field(256, ge=8, description="longest answer generated (instructions: at most 64 tokens)")
    seed: int = Field(0, description="seed of the instruction sampling")


class DataSection(_Section):
    train: list[str | DataEntry] = Field(
        default_factory=list, description="files, globs or folders of SFT data (relative to the config file's "
        "folder, else the working directory), hub datasets (hub:ORG/NAME[/SUBSET][:SPLIT], read through "
        "datasets.load_dataset and its cache), or entries {path, weight | ratio, format, columns, datasets}"
    )
    eval: list[str | DataEntry] = Field(default_factory=list, description="held-out data, as train; empty = split "
                                        "from train")
    val_ratio: float = Field(0.1, ge=0, lt=1, description="share of train held out when eval is empty")
    format: str | None = Field(None, description="force a data format (default: detected per file)")
    columns: dict[str, str] | None = Field(None, description="explicit column mapping, e.g. {instruction: query}")
    on_error: Literal["raise", "skip"] = "raise"
    template: str | dict[str, Any] | None = Field(
        None, description="chat template name or definition; default: the model's own, else chatml"
    )
    template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="switches the chat template reads, e.g. {thinking: true} (DeepSeek-V3.1), "
        "{enable_thinking: false} (Qwen3), {reasoning_effort: low} (gpt-oss): written into the model's own template "
        "(saved with the run), applied by a built-in that renders them, refused otherwise")
    policy: Literal["assistant", "last", "all"] = "assistant"
    reasoning: Literal["think_and_answer", "answer_only", "think_last_turn"] = Field(
        "think_and_answer", description="with a reasoning template (qwen3, qwen3.5, qwen3.6, qwen3.8, deepseek_r1, "
        "deepseek_v3.1, glm4.5, gpt-oss, nemotron3, gemma4, magistral, or a model's own that writes think blocks): "
        "train the think block and the answer, the answer only, or the think block of the last turn only")
    train_empty_think: bool = Field(False, description="train empty <think></think> blocks (off: a model taught "
                                    "them learns to skip thinking)")
    split_reasoning_turns: bool = Field(True, description="one example per exchange whose reasoning the template "
                                        "drops later (qwen3, qwen3.5, qwen3.6, deepseek_r1, deepseek_v3.1, glm4.5, "
                                        "gpt-oss, nemotron3, gemma4), so each reply's reasoning is trained")
    max_len: int = Field(1024, ge=8, description="tokens per sequence (longer ones are truncated)")
    max_record_mb: float = Field(64, gt=0, description="a record (one line of JSONL, CSV or text) over this many MiB "
                                 "is rejected by its line, never held whole")
    max_unpacked_gb: float = Field(100, gt=0, description="a compressed data file stops with an error once it has "
                                   "unpacked this many GiB")
    max_ratio: float = Field(1000, gt=0, description="a compressed data file stops with an error once it has unpacked "
                             "this many times its size on disk (counted past 16 MiB; a decompression bomb)")
    max_turns: int = Field(10_000, ge=1, description="a conversation with more messages is skipped at encoding, "
                           "counted as too_many_turns")
    packing: bool = Field(True, description="padding-free best-fit-decreasing packing into rows of max_len")
    seed: int = 0
    instruction_position: Literal["before", "after"] = Field(
        "before", description="records with an instruction and an input (alpaca, multitask): the user turn is "
        "instruction, blank line, input (before) or input, blank line, instruction (after, Post-Ins)")
    replay: ReplaySection = Field(default_factory=ReplaySection, description="forgetting mitigation: the base "
                                  "model's own instruction/answer pairs mixed in, {ratio, count, max_new_tokens, seed}")

    @model_validator(mode="before")
    @classmethod
    def _paths_as_lists(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for key in ("train", "eval"):
                if key in values and values[key] is None:  # `data.eval=null` on the command line: none
                    values[key] = []
                if isinstance(values.get(key), (str, os.PathLike, dict)):
                    values[key] = [values[key]]
                if isinstance(values.get(key), list):
                    values[key] = [str(v) if isinstance(v, os.PathLike) else v for v in values[key]]
        return values


class BatchSelectionSection(_Section):
    """train.batch_selection: online batch selection (sftune.training.selection): each forward pass reads
    micro_batch_size / ratio candidate sequences (packed rows with packing) and back-propagates the best
    micro_batch_size sequences (the best ratio of the sequences in those rows, repacked, with packing)."""

    method: Literal["none", "uds", "random"] = Field(
        "none", description="uds = utility-diversity scores from the model's logits; random = a random subset "
        "(the control at equal compute); none = train on every sequence")
    ratio: float = Field(0.5, gt=0, le=1, description="share of each candidate batch that is trained")
    alpha: float = Field(2.5e-3, ge=0, description="UDS weight of inter-sample diversity against the nuclear norm")
    memory: int = Field(1024, ge=1, description="UDS: past selections kept (FIFO) for inter-sample diversity")


class ChordSettings(_Section):
    """train.chord: CHORD's mix of the expert (SFT) loss and an on-policy GRPO-style loss, and its samples."""

    mu_peak: float = Field(0.5, ge=0, le=1, description="the highest weight mu of the expert loss, reached after "
                           "mu_warmup_steps (L = (1 - mu) L_GRPO + mu L_SFT)")
    mu_valley: float = Field(0.05, ge=0, le=1, description="the floor mu decays to on a cosine")
    mu_warmup_steps: int = Field(0, ge=0, description="optimizer steps over which mu rises linearly from 0 to mu_peak")
    mu_decay_steps: int = Field(20, ge=0, description="optimizer steps of the cosine from mu_peak down to mu_valley")
    phi: bool = Field(True, description="weight the expert loss by phi = p(1 - p), detached (false: plain "
                      "cross-entropy)")
    reward: str = Field("sftune.training.objectives.chord:exact_match_reward", description="module:function "
                        "called as f(prompts=[...], completions=[...], references=[...]) -> one float per completion; "
                        "the default is 1 where the answer equals the reference (as JSON when the reference is JSON)")
    samples_per_prompt: int = Field(4, ge=2, description="G, on-policy answers sampled per prompt (one group)")
    prompts_per_step: int | None = Field(None, ge=1, description="prompts sampled from per optimizer step (the "
                                         "first of each micro-batch); None = every sequence of the step")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the on-policy answers")
    max_new_tokens: int = Field(64, ge=1, description="longest on-policy answer")


class TrainSection(_Section):
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs)")
    batch_size: int = Field(
        4, ge=1, description="per process and optimizer step (times grad_accum): packed rows (packing on) "
        "or sequences (packing off)"
    )
    micro_batch_size: int | None = Field(
        None, ge=1, description="rows or sequences per forward pass; the rest of batch_size is accumulated, "
        "with the same loss and gradients and less memory. None = 1 packed row on CPU (faster there), "
        "batch_size on GPU",
    )
    grad_accum: int = Field(1, ge=1, description="batches of batch_size accumulated into one optimizer step")
    lr: float | None = Field(None, gt=0, description="learning rate; default: the method's usual value")
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup: float = Field(0.05, ge=0, description="warm-up: a share of the steps if < 1, else a step count")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping; 0 = off")
    optim: str = Field("auto", description="a transformers optimizer name; auto = transformers' default (fused "
                       "AdamW) on a CUDA GPU, adamw_torch elsewhere")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto = bf16 on GPUs with bf16, else fp16 on GPU; on a CPU bf16 where it has AMX, else fp32 (sftune.hardware)"
    )
    gradient_checkpointing: bool = False
    kernels: Literal["torch", "liger"] = Field(
        "torch", description="liger = Liger Kernel's fused RMSNorm, RoPE and SwiGLU for the model types it covers "
        "(CUDA only; pip install liger-kernel); sftune's own chunked loss head either way")
    compile: bool = Field(False, description="torch.compile each decoder layer (cache in SFTUNE_HOME/inductor); "
                          "the first step takes minutes on a CPU, later ones are faster: for long runs")
    neftune_alpha: float | None = Field(None, gt=0, description="NEFTune noise alpha (e.g. 5); None = off")
    seed: int = 42
    logging_steps: int = Field(1, ge=1, description="log the training loss every N optimizer steps (metrics.jsonl, "
                               "curves.png, report_to); the default logs every step")
    save_steps: int | None = Field(None, ge=1, description="checkpoint every N steps; None = each epoch")
    save_total_limit: int | None = Field(2, ge=1, description="checkpoints kept (the best one is kept too)")
    resume_from: str | None = Field(None, description="'last' or a checkpoint folder")
    report_to: list[str] = Field(default_factory=lambda: ["none"], description="tensorboard, wandb, mlflow ...")
    dataloader_workers: int | None = Field(None, ge=0, description="processes that read and collate batches; "
                                           "None = up to 4 per process on a CUDA GPU (the CPUs allowing), 0 elsewhere")
    batch_selection: BatchSelectionSection = Field(
        default_factory=BatchSelectionSection, description="online batch selection {method: none | uds | random, "
        "ratio, alpha, memory}; with packing each sequence of the packed rows is scored and the kept ones repacked")
    loss: Literal["ce", "gem", "dft", "phi", "chord"] = Field(
        "ce", description="training objective: cross-entropy, GEM (diversity-preserving), DFT (probability-scaled), "
        "phi (p(1-p)-scaled), or CHORD (phi SFT + on-policy GRPO, see train.chord); docs/objectives.md")
    gem_beta: float = Field(0.7, gt=0, description="GEM's temperature beta of q = softmax(logits / beta)")
    chord: ChordSettings = Field(default_factory=ChordSettings, description="train.loss=chord: mu schedule, "
                                 "reward and sampling")


class EvalSection(_Section):
    steps: int | None = Field(None, ge=1, description="evaluate every N steps; None = each epoch")
    batch_size: int | None = Field(None, ge=1, description="default: train's micro-batch size")
    early_stopping_patience: int | None = Field(None, ge=1, description="stop after N evaluations without gain")
    early_stopping_threshold: float = Field(
        0.0, ge=0, description="the least drop in eval loss that counts as a gain for early stopping"
    )
    keep_best: bool | str = Field(
        True, description="load the best checkpoint at the end: true = by eval loss, or a generation metric "
        "(bleu, rouge1, rouge2, rougeL, exact_match, token_f1) that eval.generate_metrics computes"
    )
    on_start: bool = Field(False, description="also evaluate before the first step (the baseline)")
    generate_metrics: list[Literal["bleu", "rouge", "exact_match", "token_f1"]] = Field(
        default_factory=list, description="at each evaluation, generate answers to validation examples and score "
        "them: eval_bleu, eval_rouge1/2/L, eval_exact_match, eval_token_f1 in metrics.jsonl"
    )
    generate_max_examples: int = Field(64, ge=1, description="validation examples generated per evaluation")
    generate_max_new_tokens: int = Field(128, ge=1, description="longest answer generated per example")


class OutputSection(_Section):
    dir: str = Field("runs/sftune", description="the run folder (relative to the working directory)")
    overwrite: bool = Field(False, description="allow reusing a run folder that already has a model")
    push_to_hub: str | None = Field(None, description="a Hugging Face Hub model repository ORG/NAME: the run folder "
                                    "(without checkpoints/) is uploaded to it at the end; token from HF_TOKEN or "
                                    "`hf auth login`")
    hub_private: bool = Field(True, description="create the push_to_hub repository as private (false: public)")


class PreferenceSection(_Section):
    """Preference training (stage: preference): the loss and its settings (docs/preference.md)."""

    loss: Literal["dpo", "ipo", "simpo", "orpo"] = Field("dpo", description="dpo (sigmoid), ipo, simpo or orpo "
                                                         "(the last two need no reference)")
    beta: float = Field(0.1, gt=0, description="dpo / simpo: inverse temperature; ipo: its regularization tau")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="dpo / simpo: the share of pairs assumed "
                                   "mislabelled (conservative DPO); 0 = off")
    simpo_gamma: float = Field(0.5, ge=0, description="simpo: the target reward margin gamma")
    orpo_lambda: float = Field(0.1, gt=0, description="orpo: the weight of the odds-ratio term")
    rpo_alpha: float = Field(0.0, ge=0, description="the weight of an SFT term on the chosen answer (RPO: its "
                             "mean token NLL) added to the loss; 0 = off")


class VisionSection(_Section):
    """Vision-language models (a model folder that AutoModelForImageTextToText loads): what trains besides
    the language model. The vision tower is frozen by default; `full` trains the projector too."""

    train_projector: bool = Field(False, description="lora / qlora: also train the projector (image features -> "
                                  "language model) fully, saved with the adapter")
    train_vision_tower: bool = Field(False, description="also train the vision tower (every method), fully")


class Config(_Section):
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    output: OutputSection = Field(default_factory=OutputSection)
    stage: Literal["sft", "preference"] = Field("sft", description="sft, or preference: train on chosen / "
                                                "rejected pairs with the preference: section")
    preference: PreferenceSection = Field(default_factory=PreferenceSection)
    vision: VisionSection = Field(default_factory=VisionSection)
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)  # path key -> the file that named it, or CLI

    def named_in(self, key: str) -> str:
        """Where the path key was set and what its relative paths are relative to (for error messages)."""
        origin = self._origins.get(key)
        if origin == COMMAND_LINE:
            return f"given on the command line: relative to the working directory {os.getcwd()}"
        if origin:
            return (f"named in {origin}: a relative path there is looked up next to that file, then in the "
                    f"working directory {os.getcwd()}")
        return f"relative to the working directory {os.getcwd()}"


# The keys whose values name files or folders a run reads (output.dir, written, is the working directory's).
PATH_KEYS = ("model.name", "data.train", "data.eval", "train.resume_from")
COMMAND_LINE = "the command line"


# ---------------------------------------------------------------------------------------------


def load(source: str | os.PathLike | dict | None = None, overrides: list[str] | None = None) -> Config:
    """A Config from a YAML file (or a dict, or None for the defaults) plus `a.b=value` overrides."""
    try:
        return _load(source, overrides)
    except RecursionError:
        where = str(source) if isinstance(source, (str, os.PathLike)) else "the configuration"
        raise ConfigError(f"{where}: nests mappings or lists too deeply to read (thousands of levels); a "
                          "configuration is a few levels deep: fix the file") from None


def _load(source: str | os.PathLike | dict | None, overrides: list[str] | None) -> Config:
    where = "configuration"
    origins: dict[str, str] = {}
    if source is None:
        raw: dict[str, Any] = {}
    elif isinstance(source, dict):
        raw = _deep_copy(source)
        resolve_paths(raw, Path.cwd())
    else:
        path = Path(source)
        where = str(path)
        if path.is_dir():
            raise ConfigError(f"{path}: is a folder, not a configuration file; name its YAML file")
        if not path.is_file():
            raise ConfigError(f"{path}: no such configuration file")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections ({', '.join(Config.model_fields)})")
        resolve_paths(raw, path.absolute().parent)
        origins = {key: str(path) for key in PATH_KEYS if _has_key(raw, key)}
    for override in overrides or []:
        key = apply_override(raw, override, base=Path.cwd())
        origins.update({p: COMMAND_LINE for p in PATH_KEYS if p == key or p.startswith(key + ".")})
    check_keys(raw, Config, where)
    try:
        config = Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_explain(err, where)) from None
    config.output.dir = os.path.abspath(os.path.expanduser(config.output.dir))  # the working directory's
    config._origins = origins
    return config


def apply_override(raw: dict[str, Any], override: str, base: Path | None = None) -> str:
    """Set `section.key=value` (any depth) in the raw mapping; the value is read as YAML. With `base`,
    relative paths in the value are resolved against it (see resolve_paths). Returns the dotted key."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} needs the form key=value, e.g. train.lr=1e-4")
    key, text = override.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {override!r} has no key; use e.g. train.lr=1e-4")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    if base is not None:
        wrapped = value
        for part in reversed(parts):
            wrapped = {part: wrapped}
        resolve_paths(wrapped, base)
        for part in parts:
            wrapped = wrapped[part]
        value = wrapped
    node = raw
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return ".".join(parts)


def resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make the relative paths of a raw configuration absolute, in place (the rule is in the module doc).

    model.name is resolved only when it is a folder (or starts with ./ or ../), never when it is an
    embedded model name, so hub ids and embedded names pass through as written.
    """
    from sftune.models import EMBEDDED

    model, data, train = (raw.get(s) if isinstance(raw.get(s), dict) else {} for s in ("model", "data", "train"))
    if isinstance(model.get("name"), (str, os.PathLike)) and str(model["name"]) not in EMBEDDED:
        model["name"] = _input_path(model["name"], base)
    for key in ("train", "eval"):
        if key in data:
            data[key] = _data_paths(data[key], base)
    if isinstance(train.get("resume_from"), (str, os.PathLike)) and train["resume_from"] != "last":
        train["resume_from"] = _input_path(train["resume_from"], base)


def check_keys(raw: Any, model: type[BaseModel], where: str, prefix: str = "") -> None:
    """Every key must be a field of its section; otherwise name it and suggest the closest."""
    if not isinstance(raw, dict):
        return
    known = list(model.model_fields)
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.5)
            hint = f"did you mean '{prefix}{close[0]}'? " if close else ""
            raise ConfigError(
                f"{where}: unknown key '{dotted}'. {hint}Known keys"
                f"{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(known)}"
            )
        sub = _section_model(model.model_fields[key].annotation)
        if sub is not None:
            check_keys(value, sub, where, f"{dotted}.")


def to_yaml(config: Config) -> str:
    """The resolved configuration as YAML (what `--print-config` shows and the run folder keeps)."""
    data = config.model_dump(mode="json")
    # Only the chosen method's options: another method's option is an error when read back.
    data["method"] = {k: v for k, v in data["method"].items() if k == "name" or k in OPTIONS[config.method.name]}
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _input_path(value: str | os.PathLike, base: Path) -> str:
    """A path a run reads: next to `base` when it is there (or written ./ or ../), else in the working
    directory when it is there, else as written (a hub id, or a file that is missing: reading it says so)."""
    text = os.path.expanduser(os.fspath(value))
    if os.path.isabs(text):
        return text
    near = os.path.abspath(os.path.join(base, text))
    if text.startswith(("./", "../")) or path_found(near):
        return near
    here = os.path.abspath(text)
    return here if path_found(here) else os.fspath(value)


def path_found(path: str | os.PathLike) -> bool:
    """A file, a folder, or a glob that matches one (data paths may be globs)."""
    return os.path.exists(path) or bool(glob.glob(os.fspath(path), recursive=True))


def _data_paths(value: Any, base: Path) -> Any:
    """data.train / data.eval as written (a path, a list of paths, entries {path: ...}) with paths resolved."""
    if isinstance(value, list):
        return [_data_paths(item, base) for item in value]
    if isinstance(value, dict) and "path" in value:
        return {**value, "path": _data_paths(value["path"], base)}
    if isinstance(value, (str, os.PathLike)):
        return _input_path(value, base)
    return value


def _has_key(raw: dict[str, Any], dotted: str) -> bool:
    section, key = dotted.split(".")
    return isinstance(raw.get(section), dict) and key in raw[section]


def json_schema() -> dict[str, Any]:
    """The configuration's JSON schema for editors (`sftune config-schema`, docs/sftune-config.schema.json).

    Generated from the models above; data.train and data.eval also take one path or entry where a list is
    expected, as load() does."""
    schema = Config.model_json_schema()
    data = schema["$defs"]["DataSection"]["properties"]
    for key in ("train", "eval"):
        field = data[key]
        variants = field.pop("anyOf", None) or [{"type": field.pop("type"), "items": field.pop("items")}]
        listed = next(variant for variant in variants if variant.get("type") == "array")
        field["anyOf"] = [*listed["items"].get("anyOf", [listed["items"]]), *variants]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "sftune training configuration",
            **{k: v for k, v in schema.items() if k != "title"}}


def _section_model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _explain(err: ValidationError, where: str) -> str:
    lines = [f"{where}: invalid configuration"]
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        got = item.get("input")
        shown = f" (got {got!r})" if not isinstance(got, dict) and got is not None else ""
        lines.append(f"  {key}: {item['msg']}{shown}")
    return "\n".join(lines)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
