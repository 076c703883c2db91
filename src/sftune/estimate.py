"""Peak memory per device of a training run, predicted from the configuration and the model's config
alone (the model is built on the meta device: no weight is read), so a user knows before a run
whether it fits, what takes the memory, and the largest micro-batch that fits.

Every part is a formula over the model's shapes; docs/estimate.md derives them and gives the error
measured against real peaks. The parts are summed (the peak of a step is taken as all of them at
once), which makes the estimate an upper bound up to the allocator's own overhead.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from sftune import scratch
from sftune.config import Config, ConfigError

GiB = 1024**3
SHARDINGS = ("none", "ddp", "zero2", "zero3", "fsdp")
# Optimizer state bytes per trained parameter: AdamW keeps two fp32 moments; 8-bit AdamW two 8-bit ones
# (plus per-block scales, ~1%); SGD without momentum and Adafactor's factored moments next to nothing.
OPTIMIZER_BYTES = {"adamw": 8.0, "adam": 8.0, "8bit": 2.04, "sgd": 0.0, "adafactor": 0.0, "lion": 4.0}
PHASE_PARTS = ("activations", "logits and loss", "gradients", "DDP gradient buckets", "optimizer step")
CUDA_CONTEXT = int(0.5 * GiB)  # CUDA context, cuBLAS workspace: outside torch's allocator, typical size


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a model, read from its config and a meta-device build."""

    total: int  # parameters (tied ones once)
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    output_trainable_with: str  # parameter name of the output layer's weight (the embedding when tied)
    linears: tuple[tuple[str, int, int, bool], ...]  # (name, in, out, has bias) of every Linear but the output
    layer_params: int  # parameters of one decoder layer (the unit ZeRO-3 / FSDP gathers at a time)
    last_layers_params: tuple[int, ...]  # parameters per decoder layer, in order
    named: tuple[tuple[str, int], ...] = field(repr=False, default=())  # (parameter name, numel)
    tied: bool = False  # the output layer shares the input embedding's weight


@dataclass
class Estimate:
    """Bytes per device by part (and on the host, for what is offloaded), with what they were computed at."""

    parts: dict[str, int]
    host: dict[str, int]
    trainable: int
    total_params: int
    tokens: int
    micro_batch: int
    device: str
    precision: str
    notes: list[str]
    weights_dtype: str = "float32"  # the dtype training loads the base weights in (training.run.weights_dtype)

    accumulating: bool = False  # gradients persist across micro-batches (grad_accum or batch > micro-batch)

    @property
    def phases(self) -> dict[str, int]:
        """Bytes held in the two moments a step peaks: during forward/backward (activations, logits; gradients
        only when they accumulate over micro-batches) and at the end of backward and the optimizer step."""
        common = {k: v for k, v in self.parts.items() if k not in PHASE_PARTS}
        grads = sum(self.parts.get(k, 0) for k in ("gradients", "DDP gradient buckets"))
        forward = sum(self.parts.get(k, 0) for k in ("activations", "logits and loss")) + (grads if self.accumulating else 0)
        step = grads + self.parts.get("optimizer step", 0)
        base = sum(common.values())
        return {"forward and backward": base + forward, "optimizer step": base + step}

    @property
    def total(self) -> int:
        """The peak: the larger of the two moments."""
        return max(self.phases.values())

    @property
    def host_total(self) -> int:
        return sum(self.host.values())


# --------------------------------------------------------------------------------------------- model


def model_config(name: str, trust_remote_code: bool = False) -> Any:
    """The model's transformers config (config.json of a folder, an embedded model or a cached hub id);
    never its weights."""
    from transformers import AutoConfig

    from sftune import models

    if name in models.EMBEDDED and not models.is_materialized(name):
        spec = models.EMBEDDED[name]
        if not spec.installed():
            raise models.ModelNotAvailableError(f"Embedded model '{name}' is not installed. Install it with: {spec.install}")
        with scratch.folder(prefix="sftune-estimate-") as work:
            gguf = spec.locate_gguf(work)
            return AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    source = models.resolve(name)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise models.ModelNotAvailableError(
            f"model.name={name}: no config.json could be read ({err}). Point model.name at a folder with a "
            "Hugging Face checkpoint, an embedded model, or a hub id cached on this machine."
        ) from err


def model_shape(config: Any) -> ModelShape:
    """Build the model on the meta device (shapes only, no memory) and read its parameter counts."""
    import torch
    from transformers import AutoModelForCausalLM

    from sftune.methods import decoder_layers

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    output = model.get_output_embeddings()
    output_name = next(n for n, p in model.named_parameters() if p is output.weight)
    linears = tuple(
        (name, m.in_features, m.out_features, m.bias is not None)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not output
    )
    try:
        layers = decoder_layers(model)
    except ValueError as error:
        raise ValueError(f"{error} to estimate its memory") from None
    per_layer = tuple(sum(p.numel() for p in layer.parameters()) for layer in layers)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return ModelShape(
        total=sum(p.numel() for p in model.parameters()),
        hidden=text.hidden_size,
        intermediate=getattr(text, "intermediate_size", None) or 4 * text.hidden_size,
        layers=text.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        vocab=output.weight.shape[0],
        output_trainable_with=output_name,
        linears=linears,
        layer_params=max(per_layer),
        last_layers_params=per_layer,
        named=tuple((n, p.numel()) for n, p in model.named_parameters()),
        tied=output.weight is model.get_input_embeddings().weight,
    )


# ------------------------------------------------------------------------------------------ parameters


def lora_targets(shape: ModelShape, target_modules: str | list[str]) -> list[tuple[str, int, int, bool]]:
    """The Linear layers LoRA adapts, chosen as peft chooses them ('all-linear', a list of name ends,
    or a regular expression over full names)."""
    if target_modules == "all-linear":
        return list(shape.linears)
    if isinstance(target_modules, str):
        return [lin for lin in shape.linears if re.fullmatch(target_modules, lin[0])]
    return [lin for lin in shape.linears if any(lin[0] == t or lin[0].endswith("." + t) for t in target_modules)]


def parameters(shape: ModelShape, method: Any) -> dict[str, int]:
    """{'base': parameters of the model, 'trainable': parameters that learn (the base's or an adapter's),
    'adapter': parameters added by the method, 'quantized': base parameters held in 4 bits}."""
    name = method.name
    out = {"base": shape.total, "adapter": 0, "trainable": 0, "quantized": 0}
    if name == "full":
        out["trainable"] = shape.total
    elif name == "freeze":
        out["trainable"] = _frozen_method_trainable(shape, method)
    elif name in ("lora", "qlora"):
        targets = lora_targets(shape, method.target_modules)
        if not targets:
            raise ConfigError(f"method.target_modules={method.target_modules!r} matches no linear layer of this model")
        adapter = sum(method.r * (i + o) + (o if method.dora else 0) for _, i, o, _ in targets)
        out["adapter"] = out["trainable"] = adapter
        if name == "qlora":
            out["quantized"] = sum(i * o for _, i, o, _ in shape.linears)
    elif name == "prompt_tuning":
        out["adapter"] = out["trainable"] = method.num_virtual_tokens * shape.hidden
    else:  # prefix_tuning / p_tuning_v2: keys and values of n virtual tokens in every layer
        kv = shape.kv_heads * shape.head_dim
        table = shape.layers * 2 * kv
        if name == "prefix_tuning" and method.prefix_projection:
            width = method.projection_hidden_size or shape.hidden
            adapter = method.num_virtual_tokens * kv + (kv * width + width) + (width * table + table)
        else:
            adapter = method.num_virtual_tokens * table
        out["adapter"] = out["trainable"] = adapter
    return out


def _frozen_method_trainable(shape: ModelShape, method: Any) -> int:
    return sum(n for name, n in shape.named if _freeze_trains(name, shape, method))


def _freeze_trains(name: str, shape: ModelShape, method: Any) -> bool:
    """Whether method 'freeze' trains this parameter: in the last N decoder layers, or named by a pattern."""
    import fnmatch

    index = re.search(r"\.layers\.(\d+)\.", name)
    if index is not None and int(index.group(1)) >= shape.layers - method.trainable_layers:
        return True
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*") for p in method.trainable_modules)


def quantized_bytes_per_param(double_quant: bool, block: int = 64) -> float:
    """NF4/FP4: half a byte per value, plus the absmax of each block of 64 (fp32; with double
    quantization 8 bits, themselves scaled by one fp32 per 256 blocks)."""
    return 0.5 + ((1 + 4 / 256) / block if double_quant else 4 / block)


# ------------------------------------------------------------------------------------------ activations


def activation_elements_per_token(shape: ModelShape, *, lora_rank: int = 0, lora_targets_per_layer: int = 0,
                                  lora_dropout_inputs: int = 0, resident_temporaries: bool = False) -> tuple[int, int]:
    """(residual-stream elements, other elements) that autograd keeps per token and decoder layer.

    With `resident_temporaries` (a CPU: glibc's malloc keeps the forward's freed temporaries resident
    between the kept tensors, measured 1.7x the kept bytes) the forward's temporaries count too.

    Llama-style layer without dropout, attention by a fused kernel (no [s x s] matrix kept):
    2 RMSNorms keep their input and output (4H, in the residual dtype); attention keeps the rotated
    query, key, value, its output and the o_proj input (3 q + 2 kv); the SwiGLU MLP keeps gate, up,
    act(gate) and their product (4I); each LoRA adapter keeps its rank-r hidden (and a dropped copy of
    its input when dropout > 0).
    """
    q = shape.heads * shape.head_dim
    kv = shape.kv_heads * shape.head_dim
    residual = 4 * shape.hidden
    other = 3 * q + 2 * kv + 4 * shape.intermediate + lora_rank * lora_targets_per_layer + lora_dropout_inputs
    if resident_temporaries:
        # what the forward allocates and frees: the norms' squares and scaled copies (4H), query and key before
        # RoPE and RoPE's three partial products (4.5 q + 4.5 kv), the joined attention output (q), the o_proj
        # and down_proj outputs before their residual adds (2H)
        other += 6 * shape.hidden + 5.5 * q + 4.5 * kv
    return residual, int(other)


# ------------------------------------------------------------------------------------------------ main


def resolve_device(gpus: int | None) -> str:
    """'cuda' when GPUs are named or present, else 'cpu'."""
    if gpus:
        return "cuda"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _precision(cfg: Config, device: str) -> str:
    if cfg.train.precision != "auto":
        return cfg.train.precision
    import torch

    from sftune.hardware import auto_precision

    if device == "cuda" and not torch.cuda.is_available():
        return "bf16"  # estimating for GPUs from a machine without one: today's GPUs train in bf16
    return auto_precision(cuda=device == "cuda")


def estimate(cfg: Config, shape: ModelShape, *, gpus: int = 1, sharding: str = "none", offload: bool = False,
             device: str = "cpu", micro_batch: int | None = None, trained_tokens: int | None = None) -> Estimate:
    """Peak bytes per device for `cfg` on `gpus` devices with `sharding` (and optimizer/parameter offload).

    `trained_tokens`: the most trained (loss) tokens in one micro-batch, when known from the data;
    default: every token is trained (the upper bound: prompts count as trained).
    """
    from sftune import methods
    from sftune.training.arguments import micro_batch_size
    from sftune.training.loss import chunk_size_for
    from sftune.training.run import weights_dtype

    if sharding not in SHARDINGS:
        raise ConfigError(f"--sharding {sharding!r}: choose one of {', '.join(SHARDINGS)}")
    if offload and sharding not in ("zero2", "zero3", "fsdp"):
        raise ConfigError("--offload moves optimizer states (and with zero3/fsdp the weights) to the CPU: it needs "
                          "--sharding zero2, zero3 or fsdp")
    n = max(gpus, 1)
    m, t, d = cfg.method, cfg.train, cfg.data
    notes: list[str] = []
    precision = _precision(cfg, device)
    half = precision in ("bf16", "fp16")
    adapter_method = m.name not in ("full", "freeze")
    dtype = weights_dtype(cfg, precision, cuda=device == "cuda")  # as training loads the weights
    wbytes = dtype.itemsize
    deepspeed_half = sharding in ("zero2", "zero3") and half  # DeepSpeed holds half weights + fp32 master copy
    if deepspeed_half:
        wbytes = 2
    act_bytes = 2 if half or wbytes == 2 else 4

    counts = parameters(shape, m)
    trainable = counts["trainable"]
    packing = d.packing and methods.packing_supported(m)[0]
    micro = micro_batch or micro_batch_size(t, packing=packing, cuda=device == "cuda")
    tokens = micro * d.max_len
    if m.name == "prompt_tuning":
        tokens += micro * m.num_virtual_tokens

    parts: dict[str, int] = {}
    # weights: a 4-bit base keeps its non-linear parameters (embeddings, norms) upcast to fp32 by peft
    if m.name == "qlora":
        quantized = counts["quantized"]
        base = quantized * quantized_bytes_per_param(m.double_quant) + (shape.total - quantized) * 4
    else:
        base = shape.total * wbytes
    trainable_bytes = 4 if adapter_method else wbytes  # peft keeps adapters in fp32 over a half base
    parts["weights"] = int(base + counts["adapter"] * trainable_bytes)
    parts["master weights"] = trainable * 4 if deepspeed_half else 0
    grad_bytes = trainable_bytes
    parts["gradients"] = trainable * grad_bytes
    parts["optimizer states"] = int(trainable * _optimizer_bytes(t.optim))
    if sharding == "ddp" and n > 1:
        parts["DDP gradient buckets"] = trainable * grad_bytes
    # the optimizer step's temporaries: torch's AdamW on a CPU makes two of each tensor in turn (the largest
    # counts); on a GPU its foreach path one fp32 copy of all of them
    largest = _largest_trained_tensor(shape, m)
    step = 2 * largest * 4 if device == "cpu" else trainable * 4
    if _output_trained(shape, m) and shape.tied:
        # the tied embedding gets the output layer's gradient and its own, and their sum
        step += 2 * shape.vocab * shape.hidden * grad_bytes
    parts["optimizer step"] = int(step if _optimizer_bytes(t.optim) else 0)

    # activations
    targets = lora_targets(shape, m.target_modules) if m.name in ("lora", "qlora") else []
    per_layer_targets = len(targets) // shape.layers if targets else 0
    dropout_inputs = sum(i for _, i, _, _ in targets) // shape.layers if targets and m.dropout > 0 else 0
    residual, other = activation_elements_per_token(
        shape, lora_rank=m.r if targets else 0, lora_targets_per_layer=per_layer_targets,
        lora_dropout_inputs=dropout_inputs, resident_temporaries=device == "cpu")
    res_bytes = 4 if wbytes == 4 or m.name == "qlora" else 2
    layer_bytes = tokens * (residual * res_bytes + other * act_bytes)
    if m.name in methods.PREFIX_METHODS:  # virtual keys and values in every layer, for every row
        layer_bytes += micro * m.num_virtual_tokens * 2 * shape.kv_heads * shape.head_dim * act_bytes
    if cfg.model.attn_implementation == "eager":  # the [s x s] probabilities are kept for backward
        layer_bytes += micro * shape.heads * d.max_len**2 * (4 + act_bytes)
        notes.append("eager attention keeps each layer's [heads x s x s] attention probabilities")
    if t.gradient_checkpointing:
        # each layer keeps only its input; one layer's activations are rebuilt at a time in backward
        parts["activations"] = tokens * shape.hidden * res_bytes * shape.layers + layer_bytes
    else:
        parts["activations"] = layer_bytes * shape.layers
    # the embedding output, the final norm's input and output, and backward's working set
    parts["activations"] += tokens * (3 * shape.hidden + 2 * (shape.hidden + shape.intermediate)) * act_bytes
    if m.name == "qlora":  # one layer's weight dequantized for its matmul
        parts["activations"] += max(i * o for _, i, o, _ in shape.linears) * act_bytes

    # logits and the loss: sftune's loss makes fp32 logits a chunk of rows at a time (training/loss.py);
    # cross-entropy works over the chunk in place, the other token losses take a second fp32 chunk
    trained = tokens if trained_tokens is None else min(trained_tokens, tokens)
    rows = min(trained, chunk_size_for(shape.vocab))
    chunks = 1 if t.loss == "ce" else 2
    logits = rows * shape.vocab * 4 * chunks + (rows * shape.vocab * act_bytes if act_bytes == 2 else 0)
    logits += 2 * trained * shape.hidden * act_bytes  # gathered hidden states and their gradient
    if _output_trained(shape, m):  # the output layer's gradient, built in fp32 during the loss's forward pass
        logits += shape.vocab * shape.hidden * 4
    parts["logits and loss"] = logits

    # sharding over n devices
    host: dict[str, int] = {}
    if sharding in ("zero2", "zero3", "fsdp") and n > 1 or offload:
        sharded = ["gradients", "optimizer states", "master weights", "optimizer step"]
        if sharding in ("zero3", "fsdp"):
            sharded.append("weights")
        for part in sharded:
            parts[part] = -(-parts[part] // n)
        if sharding in ("zero3", "fsdp"):  # the layer being computed and the next one, gathered whole
            gather_bytes = 2 if half else wbytes
            parts["gathered layers"] = 2 * shape.layer_params * gather_bytes
    if offload:
        moved = ["optimizer states", "master weights", "gradients", "optimizer step"]
        if sharding in ("zero3", "fsdp"):
            moved.append("weights")
        for part in moved:
            host[part] = parts[part]
            parts[part] = 0
    if device == "cuda":
        parts["CUDA context"] = CUDA_CONTEXT
    if t.optim not in ("auto", "adamw_torch", "adamw_torch_fused", "adamw_hf", "adamw_apex_fused") and \
            not any(k in t.optim for k in OPTIMIZER_BYTES):
        notes.append(f"optimizer {t.optim!r} is not known here: counted as AdamW (8 bytes per trained parameter)")
    return Estimate(parts={k: int(v) for k, v in parts.items() if v}, host={k: int(v) for k, v in host.items() if v},
                    trainable=trainable, total_params=shape.total + counts["adapter"], tokens=tokens,
                    micro_batch=micro, device=device, precision=precision, notes=notes,
                    weights_dtype=str(dtype).removeprefix("torch."),
                    accumulating=t.grad_accum > 1 or t.batch_size > micro)


def _output_trained(shape: ModelShape, method: Any) -> bool:
    return method.name == "full" or (method.name == "freeze" and _freeze_trains(shape.output_trainable_with, shape, method))


def _largest_trained_tensor(shape: ModelShape, method: Any) -> int:
    if method.name == "full":
        return max(n for _, n in shape.named)
    if method.name == "freeze":
        return max((n for name, n in shape.named if _freeze_trains(name, shape, method)), default=0)
    if method.name in ("lora", "qlora"):
        return max((method.r * max(i, o) for _, i, o, _ in lora_targets(shape, method.target_modules)), default=0)
    return parameters(shape, method)["adapter"]


def _optimizer_bytes(optim: str) -> float:
    optim = optim.lower()
    for key in ("8bit", "adafactor", "sgd", "lion"):
        if key in optim:
            return OPTIMIZER_BYTES[key]
    return OPTIMIZER_BYTES["adamw"]


def largest_micro_batch(cfg: Config, shape: ModelShape, memory: int, limit: int = 4096, **options: Any) -> int:
    """The largest micro-batch (rows or sequences) whose estimate fits `memory` bytes; 0 if none does."""
    if estimate(cfg, shape, micro_batch=1, **options).total > memory:
        return 0
    low, high = 1, 2
    while high <= limit and estimate(cfg, shape, micro_batch=high, **options).total <= memory:
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:
        middle = (low + high) // 2
        if estimate(cfg, shape, micro_batch=middle, **options).total <= memory:
            low = middle
        else:
            high = middle
    return low


def gpu_present() -> bool:
    import torch

    return torch.cuda.is_available()


def device_memory(device: str) -> tuple[int, str]:
    """(bytes, what they are): the first GPU's memory, else the RAM available now (MemAvailable)."""
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return props.total_memory, f"memory of {props.name}"
        raise ConfigError("no GPU on this machine to read its memory from: give it, e.g. --memory 80")
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "RAM available now"
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "RAM"


def for_config(cfg: Config, **options: Any) -> Estimate:
    """The estimate for a configuration, reading its model's config (not its weights)."""
    shape = model_shape(model_config(cfg.model.name, cfg.model.trust_remote_code))
    return estimate(cfg, shape, **options)


def fit_warning(cfg: Config, memory: int | None = None) -> str | None:
    """One line when this run's estimated peak exceeds the memory of the device it will run on (what
    `sftune train` prints before loading anything), else None. `memory`: bytes (default: detected)."""
    device = resolve_device(None)
    shape = model_shape(model_config(cfg.model.name, cfg.model.trust_remote_code))
    est = estimate(cfg, shape, device=device)
    memory, what = (memory, "given") if memory is not None else device_memory(device)
    if est.total <= memory:
        return None
    biggest = max(est.parts, key=est.parts.get)
    fits = largest_micro_batch(cfg, shape, memory, device=device)
    advice = []
    if fits:
        advice.append(f"train.micro_batch_size={fits}")
    if not cfg.train.gradient_checkpointing:
        advice.append("train.gradient_checkpointing=true")
    if cfg.method.name == "full":
        advice.append("method.name=lora")
    advice.append(f"a shorter data.max_len (now {cfg.data.max_len})")
    return (f"estimated peak memory {est.total / GiB:.2f} GiB exceeds the {memory / GiB:.2f} GiB {what} "
            f"(largest part: {biggest} {est.parts[biggest] / GiB:.2f} GiB); try {', '.join(advice)} "
            "(details: sftune estimate)")
