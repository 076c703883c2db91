"""A merged model as one GGUF file (llama.cpp, Ollama, LM Studio), written with the `gguf` package.

Supported: the families sftune trains, llama (SmolLM2, Llama 3), qwen2 and gemma3. The file holds the
architecture's hyperparameters, the tokenizer (tokens, scores, types, merges, special ids), the
training template as `tokenizer.chat_template` (with the run's data.template_kwargs written into it: a runtime
renders the mode training used without being told) and the weights under llama.cpp's names, taken from
gguf's own name map (the one transformers' GGUF loader reads back). Two value changes llama.cpp
expects: llama's q/k rows are permuted to its rotary layout, gemma's norm weights are stored as 1 + w.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sftune.export.merge import ExportError

# transformers model_type -> GGUF architecture name
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "gemma3_text": "gemma3", "gemma3": "gemma3"}
OUTTYPES = ("f16", "q8_0", "f32")
# The GGUF goes alone into its own folder, as llama.cpp / Ollama get it (no tokenizer.json beside it to mix up).
GGUF_DIR, GGUF_NAME = "gguf", "model.gguf"


def write_gguf(model: Any, tokenizer: Any, template: Any, stop_ids: list[int], path: str | Path,
               outtype: str = "f16") -> dict[str, Any]:
    """Write `model` + `tokenizer` (+ the template's jinja) to `path`; returns what was written."""
    import gguf

    if outtype not in OUTTYPES:
        raise ExportError(f"--gguf {outtype!r} is not supported; pick one of {', '.join(OUTTYPES)}")
    config = model.config
    arch = ARCHITECTURES.get(config.model_type)
    if arch is None:
        raise ExportError(f"GGUF export knows the architectures {', '.join(sorted(set(ARCHITECTURES.values())))}; "
                          f"this model is {config.model_type!r}. Export without --gguf and convert the merged folder "
                          "with llama.cpp's convert_hf_to_gguf.py")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(Path(str(getattr(config, "_name_or_path", "") or "model")).name or "model")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(_rope_theta(config))
    if arch == "gemma3":
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        if getattr(config, "sliding_window", None):
            writer.add_sliding_window(config.sliding_window)
    else:
        writer.add_rope_dimension_count(head_dim)
    vocab_size = model.get_input_embeddings().weight.shape[0]
    writer.add_vocab_size(vocab_size)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype])
    _add_tokenizer(writer, tokenizer, vocab_size, stop_ids)
    writer.add_chat_template(template.to_jinja())
    count = _add_tensors(writer, model, arch, outtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"file": str(path), "architecture": arch, "outtype": outtype, "tensors": count,
            "bytes": path.stat().st_size}


def _rope_theta(config: Any) -> float:
    theta = getattr(config, "rope_theta", None)
    params = getattr(config, "rope_parameters", None) or {}
    if theta is None and isinstance(params, dict):
        theta = params.get("rope_theta") or (params.get("full_attention") or {}).get("rope_theta")
    return float(theta if theta is not None else 10000.0)


def _add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int, stop_ids: list[int]) -> None:
    """Tokens, scores, types and merges as llama.cpp reads them, padded to the embedding's rows."""
    import gguf

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state["model"]
    byte_level = "ByteLevel" in json.dumps([state.get("pre_tokenizer"), state.get("decoder")])
    if model.get("type") != "BPE":
        raise ExportError(f"GGUF export reads BPE tokenizers (byte-level or sentencepiece-style); this one is "
                          f"{model.get('type')!r}. Export without --gguf and convert with llama.cpp's converter")
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        elif not byte_level and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            tokens.append(token)
            types.append(gguf.TokenType.BYTE)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    if len(by_id) > vocab_size:
        raise ExportError(f"the tokenizer has {len(by_id)} tokens but the model's embedding only {vocab_size} rows; "
                          "resize the embedding (model.resize_token_embeddings) before exporting")
    writer.add_tokenizer_model("gpt2" if byte_level else "llama")
    writer.add_tokenizer_pre(_pre_tokenizer(state) if byte_level else "default")
    writer.add_token_list(tokens)
    writer.add_token_scores([-float(i) for i in range(vocab_size)])  # earlier tokens first, as BPE ranks them
    writer.add_token_types(types)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if merges:
        writer.add_token_merges(merges)
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else stop_ids[0]
    writer.add_eos_token_id(eos)
    if stop_ids and stop_ids[0] != eos:
        writer.add_eot_token_id(stop_ids[0])  # the end-of-turn token: llama.cpp stops there too
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(tokenizer.unk_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    with_special = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(with_special) and with_special[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(with_special) and with_special[-1] == tokenizer.eos_token_id
                             and len(with_special) > 1)


def _pre_tokenizer(state: dict[str, Any]) -> str:
    """llama.cpp's name for how a byte-level tokenizer splits text before BPE."""
    text = json.dumps(state.get("pre_tokenizer"))
    if '"individual_digits": true' in text:
        return "smollm"  # digits one by one, then GPT-2's split (SmolLM, SmolLM2)
    if "\\\\p{N}{1,3}" in text or "\\p{N}{1,3}" in text:
        return "llama-bpe"
    if "\\\\p{N}" in text and "(?i:'s" in text:
        return "qwen2"
    return "gpt-2"


def _add_tensors(writer: Any, model: Any, arch: str, outtype: str) -> int:
    """Every weight under its llama.cpp name, 2-D ones in `outtype`, norms and biases in f32."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(_arch_enum(arch), config.num_hidden_layers)
    state = model.state_dict()
    tied = getattr(config, "tie_word_embeddings", False)
    count = 0
    for hf_name, tensor in state.items():
        if tied and hf_name == "lm_head.weight":
            continue
        base, suffix = hf_name.rsplit(".", 1)
        gguf_name = names.get_name(base)
        if gguf_name is None:
            raise ExportError(f"no GGUF name for weight {hf_name!r} of this {arch} model; it cannot be exported to "
                              "GGUF with this version of the gguf package")
        data = tensor.detach().float().cpu().numpy()
        if arch == "llama" and base.endswith("self_attn.q_proj"):
            data = _permute(data, config.num_attention_heads, config.num_attention_heads)
        elif arch == "llama" and base.endswith("self_attn.k_proj"):
            data = _permute(data, config.num_attention_heads, config.num_key_value_heads)
        if arch == "gemma3" and hf_name.endswith("norm.weight"):
            data = data + 1.0  # Gemma's RMSNorm scales by (1 + w); llama.cpp stores the scale itself
        _add(writer, f"{gguf_name}.{suffix}", data, outtype)
        count += 1
    return count


def _arch_enum(arch: str):
    import gguf

    return next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == arch)


def _permute(weights: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """Rows of q/k from HF's rotate-half layout to llama.cpp's interleaved pairs (its converter's permute)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _add(writer: Any, name: str, data: np.ndarray, outtype: str) -> None:
    import gguf

    if data.ndim < 2 or outtype == "f32":
        writer.add_tensor(name, data.astype(np.float32))
    elif outtype == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        quantized = gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        writer.add_tensor(name, data.astype(np.float16))
