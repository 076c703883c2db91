"""Training methods: which parameters learn, through peft where an adapter is involved.

`full` trains every weight; `freeze` trains the last N decoder layers and/or named modules;
`lora` / `qlora` add low-rank adapters (qlora on a 4-bit NF4 base loaded through bitsandbytes);
`prompt_tuning`, `prefix_tuning` and `p_tuning_v2` learn virtual tokens:

- prompt_tuning: virtual input embeddings before the first token (Lester et al. 2021).
- prefix_tuning: virtual keys and values in every layer, produced by a small MLP from a learned
  embedding during training (the reparameterization of Li & Liang 2021); the MLP is folded into
  plain keys/values when the adapter is saved.
- p_tuning_v2: the same deep prompts on every layer, learned directly, without the MLP
  (Liu et al. 2021). In peft both are `PrefixTuningConfig`; sftune names them apart by
  `prefix_projection` (on for prefix_tuning, off for p_tuning_v2).

The engine asks `load_kwargs` what `from_pretrained` needs, `apply_method` for the trainable model,
and `packing_supported` / `gradient_checkpointing_supported` what the method allows.
"""

from __future__ import annotations

import fnmatch
import os
from typing import TYPE_CHECKING, Any

from sftune.config import MethodConfig
from sftune.hardware import cuda_bf16
from sftune.models import keep_4bit_layout

if TYPE_CHECKING:  # torch is imported where it is used
    import torch

PROMPT_METHODS = ("prompt_tuning", "prefix_tuning", "p_tuning_v2")
PREFIX_METHODS = ("prefix_tuning", "p_tuning_v2")  # virtual keys/values in every layer

# Learning rates that work for each method (the usual values in the papers and peft examples);
# the engine uses them when the configuration names none.
DEFAULT_LEARNING_RATE: dict[str, float] = {
    "full": 2e-5,
    "freeze": 5e-5,
    "lora": 2e-4,
    "qlora": 2e-4,
    "prompt_tuning": 3e-2,
    "prefix_tuning": 5e-4,  # the MLP reparametrization diverges at 1e-2 (demo: held-out loss 0.49 -> 5.7)
    "p_tuning_v2": 1e-2,
}

# Attention implementations that keep packed sequences apart from `position_ids` alone
# (transformers' masking utilities, and flash-attention's varlen path).
PACKING_ATTENTION = ("sftune_varlen", "sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


def _shards() -> bool:
    from sftune.distributed import shards_weights

    return shards_weights()


def load_kwargs(method: MethodConfig, device: str | torch.device | None = None) -> dict[str, Any]:
    """Keyword arguments for `from_pretrained` that the method needs (QLoRA: the 4-bit quantization).

    For QLoRA this first checks that bitsandbytes runs 4-bit forward and backward on `device`
    (default: the GPU when there is one, else the CPU), so an unsupported machine fails here,
    before any model is loaded.
    """
    if method.name != "qlora":
        return {}
    import torch
    from transformers import BitsAndBytesConfig

    device = process_device(torch.device(device) if device is not None else _default_device())
    compute_dtype = _compute_dtype(method.compute_dtype, device)
    _check_4bit_runs(device, compute_dtype, method)
    kwargs: dict[str, Any] = {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=method.quant_type,
            bnb_4bit_use_double_quant=method.double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
            # FSDP / ZeRO-3 split every parameter evenly: 4-bit weights stored in the compute dtype can be
            bnb_4bit_quant_storage=compute_dtype if _shards() else torch.uint8,
        )
    }
    if device.type == "cuda":  # each process quantizes its own copy onto its own GPU
        kwargs["device_map"] = {"": device.index}
    return kwargs


def process_device(device: torch.device, environ: Any = None) -> torch.device:
    """`device` with this process's GPU named: a bare "cuda" becomes cuda:LOCAL_RANK. Before the Trainer calls
    torch.cuda.set_device, "cuda" means cuda:0 in every process, so each process of a launch would put its
    4-bit check (and its CUDA context) on the first GPU."""
    import torch

    env = os.environ if environ is None else environ
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(env.get("LOCAL_RANK", 0)))
    return device


def apply_method(model: Any, method: MethodConfig, tokenizer: Any = None, verbose: bool = True) -> Any:
    """Return the model ready to train with `method`: adapters added or parameters frozen.

    `tokenizer` is needed only for prompt_tuning with `init_text` (peft loads it again by its
    path). Prints trainable and total parameters unless `verbose=False`.
    """
    if method.name == "full":
        for param in model.parameters():
            param.requires_grad_(True)
    elif method.name == "freeze":
        _freeze_all_but(model, method)
    else:
        from peft import get_peft_model

        if method.name == "qlora":
            model = _prepare_4bit(model)
        model = get_peft_model(model, peft_config(model, method, tokenizer))
        if method.name in PREFIX_METHODS and tokenizer is not None:
            init_prefix_from_text(model, tokenizer, method.init_text or PREFIX_INIT_TEXT)
    if verbose:
        print(trainable_summary(model))
    return model


# The prefix methods start from the keys and values of real text, so that before training the model
# behaves as if this text came before each example (Li & Liang 2021 found real-activation starts
# train far better). peft's default, random N(0, 1) keys and values, is far from the scale of real
# ones: measured on the demo, SmolLM2's held-out loss went from 0.47 to 12.0 before any training.
PREFIX_INIT_TEXT = (
    "You are a helpful assistant. Read the request carefully and answer it accurately, in the form the "
    "user asks for, without extra words."
)


def init_prefix_from_text(model: Any, tokenizer: Any, text: str) -> None:
    """Set a prefix_tuning / p_tuning_v2 adapter's virtual keys and values to those the frozen model
    computes for `text` (its tokens repeated or cut to the number of virtual tokens).

    Without the projection MLP, the learned table holds the keys and values themselves and is set
    exactly. With it (prefix_tuning), the MLP's last layer gets zero weights and the mean key/value
    as its bias, so every virtual token starts as that average token.
    """
    import torch

    with torch.no_grad():
        config = model.active_peft_config
        encoder = model.prompt_encoder[model.active_adapter]
        n = config.num_virtual_tokens
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
        ids = (ids * (n // len(ids) + 1))[:n]
        base = model.get_base_model()
        device = next(base.parameters()).device
        with model.disable_adapter():
            cache = base(input_ids=torch.tensor([ids], device=device), use_cache=True).past_key_values
        layers = [(cache.layers[i].keys, cache.layers[i].values) for i in range(config.num_layers)]
        # peft reads the table as [tokens, layers * 2 (key, value), kv heads, head dim]
        table = torch.stack([torch.stack(kv) for kv in layers])  # [layers, 2, 1, heads, n, head dim]
        table = table[:, :, 0].permute(3, 0, 1, 2, 4).reshape(n, -1)
        if getattr(encoder, "prefix_projection", False):
            last = encoder.transform[-1]
            last.weight.zero_()
            last.bias.copy_(table.mean(0).to(last.bias.dtype))
        else:
            encoder.embedding.weight.copy_(table.to(encoder.embedding.weight.dtype))


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as the values they hold, not their bytes, and weights
    DeepSpeed ZeRO-3 split as they loaded (empty here) as their whole size."""
    trainable = total = 0
    for param in model.parameters():
        n = getattr(param, "ds_numel", None) or param.numel()
        if param.__class__.__name__ == "Params4bit":  # two 4-bit values per byte of storage
            n *= 2 * param.quant_storage.itemsize
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def trainable_summary(model: Any) -> str:
    """One line for logs: trainable / total parameters, and what is trained."""
    trainable, total = count_parameters(model)
    share = 100 * trainable / total if total else 0.0
    line = f"trainable parameters: {trainable:,} of {total:,} ({share:.4g}%)"
    peft_config = getattr(model, "peft_config", {}).get("default")
    if peft_config is None:
        return line + "; trained: " + ("everything" if trainable == total else ", ".join(_trained_modules(model)))
    kind = peft_config.peft_type.value.lower()
    if kind == "prefix_tuning":
        kind += " with projection MLP" if peft_config.prefix_projection else " without projection (p_tuning_v2)"
    if getattr(peft_config, "use_dora", False):
        kind += " (dora)"
    if getattr(peft_config, "target_modules", None):
        kind += " on " + ", ".join(sorted({str(t).rsplit(".", 1)[-1] for t in peft_config.target_modules}))
    if getattr(peft_config, "num_virtual_tokens", None):
        kind += f", {peft_config.num_virtual_tokens} virtual tokens"
    return line + "; " + kind


def _trained_modules(model: Any) -> list[str]:
    """Trained parameters named by their highest module whose parameters are all trained."""
    totals: dict[str, int] = {}
    trained: dict[str, int] = {}
    names = []
    for name, param in model.named_parameters():
        parts = name.split(".")
        prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
        for prefix in prefixes:
            totals[prefix] = totals.get(prefix, 0) + 1
            trained[prefix] = trained.get(prefix, 0) + int(param.requires_grad)
        if param.requires_grad:
            names.append(prefixes)
    shown = {next(p for p in prefixes if trained[p] == totals[p]) for prefixes in names}
    return sorted(shown)


def packing_supported(method: MethodConfig, model: Any = None) -> tuple[bool, str]:
    """Whether padding-free packed batches train this method correctly, and if not, why.

    Packing is correct when each sequence in a pack sees exactly what it would see alone. For the
    virtual-token methods that is not the case with peft 0.21 / transformers 5:
    prompt_tuning prepends its virtual tokens once per row and peft drops `position_ids`, and the
    prefix methods pass their keys/values as a cache, which turns off transformers' detection of
    packed sequences; either way later sequences attend to earlier ones.
    """
    if method.name == "prompt_tuning":
        return False, (
            "prompt_tuning prepends its virtual tokens once per row, and peft ignores position_ids, "
            "so in a packed row only the first sequence sees the prompt and the sequences attend to each other"
        )
    if method.name in PREFIX_METHODS:
        return False, (
            f"{method.name} passes its virtual keys/values as a cache, and transformers keeps packed "
            "sequences apart only without one, so the sequences in a packed row would attend to each other"
        )
    attention = None if model is None else getattr(model.config, "_attn_implementation", None)
    if model is not None and attention not in PACKING_ATTENTION:
        return False, (
            f"attention implementation {attention!r} is not known to keep packed sequences apart; "
            f"load the model with one of {', '.join(PACKING_ATTENTION)}"
        )
    return True, ""


def gradient_checkpointing_supported(method: MethodConfig) -> tuple[bool, str]:
    """Whether gradient checkpointing works with this method, and if not, why.

    transformers drops `past_key_values` inside checkpointed layers, which is where the prefix
    methods put their virtual keys/values: the forward pass then fails on a shape mismatch.
    """
    if method.name in PREFIX_METHODS:
        return False, (
            f"{method.name} passes its virtual keys/values as past_key_values, which transformers "
            "drops inside checkpointed layers; train it without gradient checkpointing"
        )
    return True, ""


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The trained parameters by name, as they are during training, for checkpoints that resume
    exactly. `save_pretrained` writes the adapter for inference instead, and for prefix_tuning that
    folds the projection MLP into plain keys/values, from which training cannot go on."""
    return {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}


def load_trainable_state(model: Any, state: dict[str, torch.Tensor]) -> None:
    """Put back what `trainable_state` took; the names must match the model's trained parameters."""
    import torch

    params = {name: param for name, param in model.named_parameters() if param.requires_grad}
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"the checkpoint's trained parameters do not match this model's: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}; resume with the same model and method configuration it was saved with."
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name])


def peft_config(model: Any, method: MethodConfig, tokenizer: Any):
    """The peft config of a method on this model (vision.methods builds a vision-language model's from it)."""
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType

    if method.name in ("lora", "qlora"):
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=method.r,
            lora_alpha=method.alpha,
            lora_dropout=method.dropout,
            target_modules=method.target_modules,
            use_rslora=method.rslora,
            use_dora=method.dora,
        )
    if method.name == "prompt_tuning":
        if method.init_text is None:
            return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=method.num_virtual_tokens)
        return PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=method.num_virtual_tokens,
            prompt_tuning_init="TEXT",
            prompt_tuning_init_text=method.init_text,
            tokenizer_name_or_path=_tokenizer_path(model, tokenizer),
        )
    projection = method.name == "prefix_tuning" and method.prefix_projection
    return PrefixTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=method.num_virtual_tokens,
        prefix_projection=projection,
        encoder_hidden_size=method.projection_hidden_size or _text_config(model).hidden_size,
    )


def _tokenizer_path(model: Any, tokenizer: Any) -> str:
    path = getattr(tokenizer, "name_or_path", None) or getattr(model, "name_or_path", None)
    if not path or not (os.path.isdir(path) or _hub_id_like(path)):
        raise ValueError(
            "method.init_text needs the tokenizer, which peft loads again from its folder: pass "
            "apply_method(model, method, tokenizer=tokenizer) with a tokenizer loaded from a folder, "
            "or remove method.init_text to start the virtual tokens at random."
        )
    return path


def _hub_id_like(path: str) -> bool:
    return path.count("/") == 1 and not path.startswith((".", "/"))


def _freeze_all_but(model: Any, method: MethodConfig) -> None:
    try:
        layers = decoder_layers(model)
    except ValueError as error:
        raise ValueError(f"{error}; use method.trainable_modules with name patterns instead of "
                         "trainable_layers.") from None
    if method.trainable_layers > len(layers):
        raise ValueError(
            f"method.trainable_layers is {method.trainable_layers} but the model has {len(layers)} "
            f"decoder layers; use a number from 0 to {len(layers)}."
        )
    if method.trainable_layers == 0 and not method.trainable_modules:
        raise ValueError(
            "method 'freeze' with trainable_layers: 0 and no trainable_modules trains nothing; "
            "set trainable_layers (the last N layers) and/or trainable_modules (name patterns)."
        )
    for param in model.parameters():
        param.requires_grad_(False)
    first = len(layers) - method.trainable_layers
    for layer in list(layers)[first:]:
        for param in layer.parameters():
            param.requires_grad_(True)
    names = [name for name, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    for pattern in method.trainable_modules:
        matched = [n for n in names if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n, pattern + ".*")]
        if not matched:
            examples = ", ".join(names[:6])
            raise ValueError(
                f"method.trainable_modules pattern {pattern!r} matches no parameter of this model. "
                f"Parameter names look like: {examples} (patterns are fnmatch, e.g. '*.mlp.*', 'model.norm')."
            )
        for name in matched:
            params[name].requires_grad_(True)


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The stack of decoder layers: the ModuleList as long as the model's layer count (under peft
    wrappers too). Used by method 'freeze', by train.compile and by sftune.estimate."""
    import torch

    count = _text_config(model).num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"could not find the {count} decoder layers of {type(model).__name__}")


def _text_config(model: Any):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _prepare_4bit(model: Any) -> Any:
    from peft import prepare_model_for_kbit_training

    if not any(type(m).__name__ == "Linear4bit" for m in model.modules()):
        raise ValueError(
            "method 'qlora' needs a model loaded in 4-bit: load it with "
            "from_pretrained(..., **sftune.methods.load_kwargs(method)) (or use method: lora)."
        )
    keep_4bit_layout(model)
    # Gradient checkpointing is the engine's choice (train.gradient_checkpointing), not peft's default.
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def _default_device() -> torch.device:
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return torch.device("xpu")
    return torch.device("cpu")


def _compute_dtype(name: str, device: torch.device) -> torch.dtype:
    import torch

    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if cuda_bf16() else torch.float16
    return torch.float32  # CPUs without bf16 units run bf16 matmuls far slower than fp32


def _check_4bit_runs(device: torch.device, dtype: torch.dtype, method: MethodConfig) -> None:
    """Run one tiny 4-bit layer forward and backward on `device`; raise a clear error if it cannot."""
    import torch

    try:
        import bitsandbytes as bnb
    except ImportError as err:
        raise RuntimeError(
            "method 'qlora' needs bitsandbytes: pip install 'sftune[qlora]' "
            "(bitsandbytes>=0.50 runs 4-bit on CPU and CUDA), or use method: lora."
        ) from err
    try:
        layer = bnb.nn.Linear4bit(
            64, 64, bias=False, compute_dtype=dtype, quant_type=method.quant_type, compress_statistics=method.double_quant
        ).to(device)
        x = torch.randn(2, 64, device=device, dtype=dtype, requires_grad=True)
        layer(x).float().sum().backward()
        if getattr(layer.weight, "quant_state", None) is None or x.grad is None:
            raise RuntimeError("the layer was not quantized or gave no gradient")
    except Exception as err:
        raise RuntimeError(
            f"method 'qlora' cannot run here: bitsandbytes {bnb.__version__} failed to run a 4-bit "
            f"{method.quant_type} layer forward and backward on {device} with {str(dtype).removeprefix('torch.')} "
            f"compute ({type(err).__name__}: {err}). Use a CUDA GPU or a CPU that bitsandbytes supports, "
            "another method.compute_dtype, or method: lora."
        ) from err
