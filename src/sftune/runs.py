"""A run folder (or a plain model) loaded for inference exactly as training saw it.

    loaded = runs.load("runs/demo")          # base + adapter, the run's tokenizer and template
    loaded = runs.load("smollm2-135m-instruct", template="chatml")

A run folder is what `sftune train` writes: config.yaml, the tokenizer with the training template
saved as its `chat_template`, and either an adapter (adapter_config.json, loaded on its base model)
or full weights (config.json). The template is rebuilt from the run's config exactly as training
built it and checked against the tokenizer's saved template, so inference renders what training
rendered; generation stops at the template's end-of-turn token and EOS. `load` decides the model's
modality once (sftune.modality): a vision-language run (its base loads with AutoModelForImageTextToText) gets
the processor saved in its folder, a plain vision-language model folder its own processor, and chat, generate,
serve and the web UI answer through the Loaded (`prompt`, `generate`, `stream`), images or not:

    [answer] = loaded.generate([[{"role": "user", "content": "Hi"}]], GenerationOptions(max_new_tokens=64))
    pieces = loaded.stream(messages, options)        # text pieces while they are generated

`load_weights` is the one loader of a text run's weights, tokenizer and template, for every use: inference
(`load`), continued training (a preference run from an SFT run), merging (export) and serving (`run_tokenizer`
and `attach_adapter` for more adapters on one base).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from sftune import models, templates
from sftune.config import DataSection, path_found
from sftune.encode import options as encode_options
from sftune.encode.options import EncodeOptions
from sftune.errors import UserError

if TYPE_CHECKING:
    from sftune.generation import Completion, GenerationOptions
    from sftune.modality import Modality

RUN_CONFIG = "config.yaml"
ADAPTER_CONFIG = "adapter_config.json"


class RunError(UserError, RuntimeError):
    """A run folder is incomplete or inconsistent; the message says what is missing and what to do."""


@dataclass
class Loaded:
    """A model ready to answer: weights, tokenizer, the training template, its stop tokens and its modality (how a
    prompt, images or not, becomes the model's inputs: the text one when not given)."""

    name: str  # what the user named: a run folder, an embedded name, a model folder or a hub id
    model: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    template: templates.Template = field(repr=False)
    stop_token_ids: list[int]
    base: str | None = None  # the base model of a run (what `--base` defaults to)
    run_dir: Path | None = None
    method: str | None = None  # the run's training method; None for a plain model
    config: Any = field(default=None, repr=False)  # the run's sftune Config
    modality: Modality = field(default=None, repr=False)  # type: ignore[assignment]  # None: the text modality

    def __post_init__(self) -> None:
        if self.modality is None:
            from sftune import modality

            self.modality = modality.text(self.tokenizer)

    @property
    def processor(self) -> Any:
        """A vision-language model's processor (None: text only)."""
        return self.modality.processor

    @property
    def is_vision(self) -> bool:
        """Whether the model reads images (its modality's reads_images)."""
        return self.modality.reads_images

    def prompt(self, messages: Any, *, tools: list[dict] | None = None,
               read_images: Callable[[list[str]], list[Any]] | None = None) -> tuple[list[int], dict[str, Any]]:
        """(prompt ids, what the model takes beside them: an image prompt's pixels, as arrays) of a conversation
        (OpenAI messages or a Conversation) in the training template, as training encoded it."""
        return self.modality.prompt(messages, self.template, tools=tools, read_images=read_images)

    def generate(self, conversations: Sequence[Any], options: GenerationOptions | None = None, *,
                 batch_size: int = 16, progress: bool = False, console: Any = None) -> list[Completion]:
        """The answers to conversations (Conversations or message lists, with images for a vision-language model),
        in order, batched, stopped at the run's stop tokens and at stop strings."""
        from sftune.generation import GenerationOptions

        return self.modality.generate(self.model, self.template, list(conversations), options or GenerationOptions(),
                                      stop_token_ids=self.stop_token_ids, batch_size=batch_size, progress=progress,
                                      console=console)

    def stream(self, messages: Any, options: GenerationOptions | None = None, *, tools: list[dict] | None = None,
               special_tokens: bool = False) -> Iterator[str]:
        """The answer to one conversation as text pieces while it is generated (chat); `special_tokens` keeps
        them in the pieces (a reasoning family's channels are written in them)."""
        from sftune import generation

        ids, extra = self.prompt(messages, tools=tools)
        return generation.stream(self.model, self.tokenizer, ids, options or generation.GenerationOptions(),
                                 stop_token_ids=self.stop_token_ids, special_tokens=special_tokens,
                                 model_inputs=generation.model_inputs(extra, self.model) if extra else None)

    @property
    def is_adapter(self) -> bool:
        return self.run_dir is not None and (self.run_dir / ADAPTER_CONFIG).exists()

    @property
    def encode_options(self) -> EncodeOptions:
        """How training encoded its data (evaluation encodes the same way): the run's encode_options.json, else
        its config's data section (runs from before the file); a plain model: the defaults of the data section."""
        return encode_options.for_run(self.run_dir, self.config.data if self.config is not None else DataSection())


def is_run(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder written by `sftune train` (it holds config.yaml next to weights)."""
    folder = Path(path).expanduser()
    return (folder / RUN_CONFIG).is_file() and (
        (folder / ADAPTER_CONFIG).is_file() or (folder / "config.json").is_file()
    )


def run_config(run_dir: str | os.PathLike):
    """The sftune Config a run was trained with (its config.yaml), its paths resolved: output.dir is the folder
    it is read from now, and a relative path names something inside the run (see write_config), so a run
    folder loads after it was moved or copied, from any working directory."""
    from sftune import config as config_module

    path = Path(run_dir).expanduser() / RUN_CONFIG
    if not path.is_file():
        raise RunError(f"{path.parent} is not a run folder: it has no {RUN_CONFIG}. Point at the folder that "
                       "`sftune train` wrote (its output.dir), or at a model folder / embedded model name.")
    cfg = config_module.load(path)
    cfg.output.dir = str(path.parent.absolute())
    return _map_paths(cfg, lambda value: _inside(value, path.parent))


def write_config(run_dir: str | os.PathLike, cfg: Any) -> None:
    """Write a run's config.yaml so that the folder can move: a path inside the run relative to it, every other
    local path absolute (as the working directory of training resolved it), names (embedded models, hub
    ids) as they are. output.dir is written absolute: `sftune train RUN/config.yaml` resumes in place."""
    from sftune import config as config_module

    run_dir = Path(run_dir).absolute()
    cfg = cfg.model_copy(deep=True)
    cfg.output.dir = str(run_dir)
    cfg = _map_paths(cfg, lambda value: _portable(value, run_dir))
    (run_dir / RUN_CONFIG).write_text(config_module.to_yaml(cfg), encoding="utf-8")


def _map_paths(cfg: Any, change) -> Any:
    """cfg with `change` applied to every path it holds besides output.dir: model.name, data.train / data.eval
    (each entry's path), train.resume_from."""
    if cfg.model.name not in models.EMBEDDED:
        cfg.model.name = change(cfg.model.name)
    for entries in (cfg.data.train, cfg.data.eval):
        for k, entry in enumerate(entries):
            if isinstance(entry, str):
                entries[k] = change(entry)
            elif isinstance(entry.path, str):
                entry.path = change(entry.path)
            else:
                entry.path = [change(p) for p in entry.path]
    if cfg.train.resume_from not in (None, "last"):
        cfg.train.resume_from = change(cfg.train.resume_from)
    return cfg


def _portable(value: str, run_dir: Path) -> str:
    """A local path as config.yaml keeps it: relative to the run folder inside it, else absolute; a name that
    is no local path (a hub id) unchanged."""
    path = Path(value).expanduser()
    if not path_found(path):
        return value
    path = path.absolute()
    return str(path.relative_to(run_dir)) if path.is_relative_to(run_dir) else str(path)


def _inside(value: str, run_dir: Path) -> str:
    """A relative path of config.yaml read from the run folder when it is there; else as written (a name, or a
    path relative to the working directory, as runs trained before config.yaml was portable kept them)."""
    if Path(value).expanduser().is_absolute() or not path_found(run_dir / value):
        return value
    return str(run_dir.absolute() / value)


def base_model_of(run_or_model: str | os.PathLike) -> str | None:
    """The base model a run was trained from (config.yaml's model.name); None for a plain model."""
    return run_config(run_or_model).model.name if is_run(run_or_model) else None


def load(
    run_or_model: str | os.PathLike,
    *,
    template: str | dict | None = None,
    template_kwargs: dict[str, Any] | None = None,
    dtype: Any = None,
    device_map: Any = None,
    merge: bool = False,
) -> Loaded:
    """Load a run folder or a model for inference, in eval mode, on the GPU when there is one (see placement).

    A run gets its own template (from its config, checked against its saved tokenizer); `template`
    overrides it only for plain models (a run trained with one template answers with that one), with its switches
    `template_kwargs` (a run's are its data.template_kwargs, written into its saved template).
    `merge=True` folds a LoRA adapter into the base weights (faster generation, same outputs).
    `dtype` and `device_map` override placement's choice.
    """
    from sftune.modality import text as text_modality
    from sftune.vision.modality import image_text

    name = str(run_or_model)
    if not is_run(name):
        from sftune.vision import models as vision_models

        options = load_options(*placement(dtype=dtype), device_map)
        if vision_models.is_vision_model(models.resolve(name)):  # a vision-language model folder
            model, processor = vision_models.load(models.resolve(name), **options)
            kind = image_text(processor, model)
        else:
            model, tokenizer = models.load(name, **options)
            kind = text_modality(tokenizer)
        chosen = templates.get(template, kind.tokenizer, template_kwargs)
        return Loaded(name, model.eval(), kind.tokenizer, chosen, stop_token_ids(chosen, kind.tokenizer, model),
                      modality=kind)

    run_dir = Path(name).expanduser()
    cfg = run_config(run_dir)
    from sftune.vision.models import is_vision_model

    if template is not None and template != cfg.data.template:
        raise RunError(f"{run_dir} was trained with template {_template_name(cfg)}; a run answers "
                       "with the template it was trained with. Drop the template option.")
    if template_kwargs and template_kwargs != cfg.data.template_kwargs:
        raise RunError(f"{run_dir} was trained with data.template_kwargs {cfg.data.template_kwargs or '{}'}; a run "
                       "answers in the mode it was trained in. Drop the template kwargs option.")
    device, dtype = placement(cfg.train.precision, dtype)
    if is_vision_model(run_dir) or is_vision_model(models.resolve(cfg.model.name)):
        model, processor = _load_vision_run(run_dir, cfg, device, dtype, device_map, merge)
        kind = image_text(processor, model)
        chosen = run_template(run_dir, cfg, kind.tokenizer)
    else:  # the base as training loaded it (4-bit for qlora); merging into a 4-bit base would round: lora only
        model, tokenizer, chosen = load_weights(run_dir, cfg, merge=merge and cfg.method.name == "lora",
                                                **load_options(device, dtype, device_map, cfg.method))
        kind = text_modality(tokenizer)
    return Loaded(name, model.eval(), kind.tokenizer, chosen, stop_token_ids(chosen, kind.tokenizer, model, run_dir),
                  base=cfg.model.name, run_dir=run_dir, method=cfg.method.name, config=cfg, modality=kind)


def placement(trained: str | None = None, dtype: Any = None, *, cuda: bool | None = None,
              bf16: bool | None = None) -> tuple[str, Any]:
    """(device, dtype) a model answers in. On a GPU: bf16 where it computes bf16 natively (compute capability
    8.0 and later), else fp16; fp32 for a run trained in fp32 (`trained`: its train.precision). On the CPU:
    fp32 (bf16 matmuls are far slower there without bf16 units). An explicit `dtype` is kept. `cuda` and
    `bf16` are this machine's facts unless given."""
    import torch

    from sftune import hardware

    cuda = torch.cuda.is_available() if cuda is None else cuda
    if dtype is not None or not cuda:
        return ("cuda" if cuda else "cpu"), (torch.float32 if dtype is None else dtype)
    if trained == "fp32":
        return "cuda", torch.float32
    bf16 = hardware.cuda_bf16() if bf16 is None else bf16
    return "cuda", torch.bfloat16 if bf16 else torch.float16


def load_options(device: str, dtype: Any, device_map: Any = None, method: Any = None) -> dict[str, Any]:
    """`from_pretrained` arguments for inference: the dtype, the method's own (QLoRA: the 4-bit quantization,
    on `device`) and one device_map: the caller's, else the method's (a 4-bit base on its GPU), else the
    whole model on `device` (None on the CPU: loaded as before, in place)."""
    from sftune import methods

    options = {"dtype": dtype, "device_map": None if device == "cpu" else {"": device}}
    if method is not None:
        options.update(methods.load_kwargs(method, device=device))
    if device_map is not None:
        options["device_map"] = device_map
    return options


def write_generation_config(run_dir: str | os.PathLike, model: Any, stop_ids: list[int]) -> None:
    """generation_config.json in the run folder: the model's own, stopping at the stops training trained
    (the template's end-of-turn, EOS, the model's eos ids; stops.audit), for an adapter run too."""
    from transformers import GenerationConfig

    own = getattr(model, "generation_config", None)
    config = GenerationConfig.from_dict(own.to_dict()) if own is not None else GenerationConfig()
    config.eos_token_id = list(stop_ids) if len(stop_ids) > 1 else stop_ids[0]
    config.save_pretrained(str(run_dir))


def stop_token_ids(template: templates.Template, tokenizer: Any, model: Any, run_dir: Path | None = None
                   ) -> list[int]:
    """What generation stops at: the template's end-of-turn and EOS, the model's generation_config eos ids
    and, for a run, its saved generation_config's (a stop sftune appended while training, GLM's `<|user|>`)."""
    from sftune.templates.stops import eos_ids

    found = set(template.stop_token_ids(tokenizer)) | set(eos_ids(model))
    return sorted(found | set(eos_ids(run_dir)) if run_dir is not None else found)


def run_template(run_dir: Path, cfg: Any, tokenizer: Any) -> templates.Template:
    """The template a run was trained with (from its config), checked against its tokenizer's saved one."""
    chosen = templates.get(cfg.data.template, tokenizer, cfg.data.template_kwargs)
    saved = tokenizer.chat_template
    if saved and chosen.to_jinja() != saved:
        raise RunError(f"{run_dir}: the tokenizer's saved chat_template differs from the template in config.yaml "
                       f"({_template_name(cfg)}); was one of them edited after training? Restore "
                       "the folder as `sftune train` wrote it, or train again.")
    return chosen


def _template_name(cfg: Any) -> str:
    return repr(cfg.data.template) if cfg.data.template else "the model's own"


def load_weights(run_dir: str | os.PathLike, cfg: Any = None, *, trainable: bool = False, merge: bool = False,
                 **options: Any) -> tuple[Any, Any, templates.Template]:
    """(model, tokenizer, template) of a text run folder: what inference, continued training, merging and
    serving load. An adapter run is its base model (cfg.model.name, loaded with `options`: the caller's dtype,
    device and quantization) with the adapter on it, trainable or not, folded into the base with `merge`; a
    full run is its own weights (loaded with `options`). The tokenizer is the run's own (run_tokenizer: its
    saved template checked). `cfg`: the run's config when the caller has read it."""
    run_dir = Path(run_dir).expanduser()
    cfg = run_config(run_dir) if cfg is None else cfg
    if not (run_dir / ADAPTER_CONFIG).is_file():
        model, tokenizer = models.load(run_dir, **options)
        return model, tokenizer, run_template(run_dir, cfg, tokenizer)
    base, _ = models.load(cfg.model.name, **options)
    tokenizer, template = run_tokenizer(run_dir, cfg, trust_remote_code=options.get("trust_remote_code", False))
    return attach_adapter(base, run_dir, trainable=trainable, merge=merge), tokenizer, template


def run_tokenizer(run_dir: str | os.PathLike, cfg: Any = None, *, trust_remote_code: bool = False
                  ) -> tuple[Any, templates.Template]:
    """(the tokenizer saved in a run folder, the template the run was trained with): loaded like any model's
    (models.load: the pad-token default) and checked against each other (run_template)."""
    run_dir = Path(run_dir).expanduser()
    cfg = run_config(run_dir) if cfg is None else cfg
    _, tokenizer = models.load(run_dir, tokenizer_only=True, trust_remote_code=trust_remote_code)
    return tokenizer, run_template(run_dir, cfg, tokenizer)


def attach_adapter(model: Any, run_dir: str | os.PathLike, *, name: str = "default", trainable: bool = False,
                   merge: bool = False) -> Any:
    """`model` with the adapter of run folder `run_dir` on it under `name`: a PeftModel around a plain model,
    one more adapter on a PeftModel (a server's adapters share one base); `trainable` to continue training it,
    `merge` to fold it into the base weights (peft's merge_and_unload: a plain model again)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model.load_adapter(str(run_dir), adapter_name=name, is_trainable=trainable)
    else:
        model = PeftModel.from_pretrained(model, str(run_dir), adapter_name=name, is_trainable=trainable)
    return model.merge_and_unload() if merge else model


def _load_vision_run(run_dir: Path, cfg: Any, device: str, dtype: Any, device_map: Any, merge: bool):
    """A vision-language run: its base loaded as training loaded it plus the adapter (or the run's full
    weights), and the processor saved in the run folder (its tokenizer carries the training template)."""
    from sftune.vision import models as vision_models

    processor = vision_models.load_processor(run_dir)
    trust = cfg.model.trust_remote_code
    if not (run_dir / ADAPTER_CONFIG).is_file():
        model, _ = vision_models.load(run_dir, trust_remote_code=trust, **load_options(device, dtype, device_map))
        return model, processor
    model, _ = vision_models.load(models.resolve(cfg.model.name), trust_remote_code=trust,
                                  **load_options(device, dtype, device_map, cfg.method))
    return attach_adapter(model, run_dir, merge=merge and cfg.method.name == "lora"), processor


def tokenizer_and_processor(model: str | os.PathLike) -> tuple[Any, Any]:
    """(tokenizer, processor) of a model name, model folder or run folder: a vision-language model's
    processor (its tokenizer with a pad token), else (the model's tokenizer, None); see modality_of."""
    kind = modality_of(model)
    return kind.tokenizer, kind.processor


def modality_of(model: str | os.PathLike) -> Modality:
    """How data is encoded for a model name, model folder or run folder without loading its weights (what
    `sftune data inspect` and the web UI's Data tab encode with, and a served adapter's prompts): the image-text
    Modality of a vision-language model or run (its processor), else the text one (its tokenizer)."""
    from sftune import modality
    from sftune.vision.models import is_vision_model, load_processor
    from sftune.vision.modality import image_text

    source = models.resolve(model)
    if is_vision_model(source) or _is_vision_run(source):
        return image_text(load_processor(source))
    return modality.text(models.load(model, tokenizer_only=True)[1])


def _is_vision_run(folder: str | os.PathLike) -> bool:
    """A LoRA run folder whose base model is a vision-language model (its processor is saved beside the adapter)."""
    from sftune.vision.models import is_vision_model

    return is_run(folder) and is_vision_model(models.resolve(run_config(folder).model.name))
