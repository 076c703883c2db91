"""What one server answers as: a run or model, the base model under a LoRA run, and more LoRA adapters on
that same base, each named by the request's `model` field. The base weights are loaded once; every adapter
is a peft adapter on the one PeftModel, switched on per batch (`activate`), or all off for the base. Each name
answers through its run's modality (runs.load's, or an adapter's own: runs.modality_of), so on a vision-language
base every name reads image parts, each with the processor saved in its own run folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftune import runs
from sftune.errors import UserError
from sftune.templates import Template

if TYPE_CHECKING:
    from sftune.modality import Modality


@dataclass(frozen=True)
class Served:
    """One name a request can ask for: the adapter switched on for it (None: none), its template and its modality."""

    name: str
    adapter: str | None
    template: Template
    stop_token_ids: tuple[int, ...]
    modality: Modality | None = None  # how its prompts become the model's inputs (None: the server tokenizer's text)

    @property
    def processor(self) -> Any:
        """A vision-language run's processor (None: text only)."""
        return self.modality.processor if self.modality is not None else None


class AdapterError(UserError, RuntimeError):
    """An --adapter that cannot be served beside the main run; the message says why and what to do."""


def served_name(run_or_model: str) -> str:
    """The id a model is served as: a run folder's name, else the model name as given."""
    return Path(run_or_model).name if runs.is_run(run_or_model) else str(run_or_model)


def load(run_or_model: str, adapters: dict[str, str] | None = None, template: str | None = None,
         template_kwargs: dict | None = None) -> tuple[Any, Any, dict[str, Served]]:
    """(model, tokenizer, the names it answers as) for a run or model plus named LoRA adapter runs."""
    from sftune import methods

    adapters = adapters or {}
    loaded = runs.load(run_or_model, template=template, template_kwargs=template_kwargs)
    stops = tuple(loaded.stop_token_ids)
    primary = served_name(run_or_model)
    if loaded.run_dir is not None and not loaded.is_adapter and adapters:
        raise AdapterError(f"{run_or_model} is a {loaded.method} run with full weights; --adapter adds LoRA adapters "
                           "to a base model. Serve a LoRA run, or the base model itself, with the adapters.")
    base = loaded.base if loaded.is_adapter else str(run_or_model)
    base_load = methods.load_kwargs(loaded.config.method) if loaded.is_adapter else {}
    names: dict[str, Served] = {}
    if loaded.is_adapter:
        names[primary] = Served(primary, "default", loaded.template, stops, loaded.modality)
        names[base] = Served(base, None, loaded.template, stops, loaded.modality)
    else:
        names[primary] = Served(primary, None, loaded.template, stops, loaded.modality)
    model = loaded.model
    for name, folder in adapters.items():
        if name in names:
            raise AdapterError(f"--adapter {name}={folder}: the name {name!r} is taken (served names: "
                               f"{', '.join(names)}); pick another name.")
        template_, cfg = _check_adapter(name, folder, base, base_load, loaded.tokenizer)
        model = runs.attach_adapter(model, folder, name=name)
        names[name] = Served(name, name, template_, tuple(template_.stop_token_ids(loaded.tokenizer)),
                             runs.modality_of(folder))
    model.eval()
    return model, loaded.tokenizer, names


def _check_adapter(name: str, folder: str, base: str, base_load: dict, tokenizer: Any) -> tuple[Template, Any]:
    """An adapter run trained on the same base, loaded the same way, with the same vocabulary; its template."""
    from sftune import methods

    where = f"--adapter {name}={folder}"
    run_dir = Path(folder).expanduser()
    if not (run_dir / runs.ADAPTER_CONFIG).is_file() or not (run_dir / runs.RUN_CONFIG).is_file():
        raise AdapterError(f"{where}: not a LoRA run folder (it needs {runs.RUN_CONFIG} and {runs.ADAPTER_CONFIG}). "
                           "Point at the output.dir of a `sftune train` run with method lora.")
    cfg = runs.run_config(run_dir)
    if not _same_model(cfg.model.name, base):
        raise AdapterError(f"{where}: trained on {cfg.model.name!r}, but the server's base model is {base!r}; "
                           "adapters must share the base model. Serve that run in a server of its own.")
    if not same_loading(methods.load_kwargs(cfg.method), base_load):
        raise AdapterError(f"{where}: a {cfg.method.name} run, whose base is loaded otherwise than the server's "
                           "(4-bit for qlora); serve adapters of one kind together.")
    own, template = runs.run_tokenizer(run_dir, cfg)
    if own.get_vocab() != tokenizer.get_vocab():
        raise AdapterError(f"{where}: its tokenizer's vocabulary differs from the base model's; it cannot share "
                           "the base. Serve it in a server of its own.")
    return template, cfg


def same_loading(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two sets of `from_pretrained` keyword arguments load a base the same way. A quantization config is
    compared by its fields (two equal BitsAndBytesConfig objects are not `==`)."""
    def fields(kwargs: dict[str, Any]) -> dict[str, Any]:
        return {key: value.to_dict() if hasattr(value, "to_dict") else value for key, value in kwargs.items()}

    return fields(a) == fields(b)


def _same_model(a: str, b: str) -> bool:
    """Two model names are one model: equal, or the same folder on disk."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def activate(model: Any, adapter: str | None) -> None:
    """Switch the adapter a batch runs with on (None: all adapters off, the base model answers)."""
    if not hasattr(model, "peft_config"):
        return
    if adapter is None:
        model.base_model.disable_adapter_layers()
    else:
        model.base_model.enable_adapter_layers()
        model.set_adapter(adapter)
