"""Training methods: each one trains, saves and loads back, and its claims about packing and
gradient checkpointing hold against the reference (the same sequence run alone, without checkpointing)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from sftune import methods
from sftune.methods import MethodConfig, apply_method, count_parameters, packing_supported

from .conftest import tiny_model

VOCAB = 512
ADAPTER_METHODS = {  # name -> the options that make it
    "lora": {"name": "lora"},
    "dora": {"name": "lora", "dora": True},
    "prompt_tuning": {"name": "prompt_tuning", "num_virtual_tokens": 4},
    "prefix_tuning": {"name": "prefix_tuning", "num_virtual_tokens": 4},
    "p_tuning_v2": {"name": "p_tuning_v2", "num_virtual_tokens": 4},
}
ALL_METHODS = {"full": {"name": "full"}, "freeze": {"name": "freeze", "trainable_layers": 1}, **ADAPTER_METHODS}
# Learning rates for a few dozen steps on a tiny random model (higher than real-model defaults).
TEST_LR = {"full": 3e-3, "freeze": 3e-3, "lora": 1e-2, "qlora": 1e-2, "prompt_tuning": 0.3, "prefix_tuning": 1e-2, "p_tuning_v2": 0.1}
# Random weights at a trained model's scale: at the default 0.02 a tiny model's logits hardly move
# whatever the context, so methods that only add context (virtual tokens) could not show learning.
LEARNABLE = {"initializer_range": 0.1}


@pytest.fixture(autouse=True)
def _quiet_single_thread():
    """Tiny models run fastest on one thread (and do not fight the other test processes); peft and
    transformers deprecation chatter is not what these tests check."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    torch.set_num_threads(threads)


def make(options: dict, arch: str = "llama", **model_overrides):
    return apply_method(tiny_model(arch, VOCAB, **model_overrides), MethodConfig(**options), verbose=False)


def task_batch(seed: int = 0):
    """A right-padded batch of counting sequences (next token = previous + stride), lengths 12..16."""
    g = torch.Generator().manual_seed(seed)
    lengths = [16, 14, 12, 15]
    input_ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, n in enumerate(lengths):
        start, stride = torch.randint(10, 200, (1,), generator=g).item(), row + 1
        input_ids[row, :n] = start + stride * torch.arange(n)
        attention_mask[row, :n] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return input_ids, attention_mask, labels


def output_offset(model) -> int:
    """Virtual positions the model puts before the real ones in its outputs (prompt_tuning: the
    virtual tokens), so `logits[:, output_offset(model):]` lines up with `input_ids`."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is None or peft_config.peft_type.value != "PROMPT_TUNING":
        return 0
    return peft_config.num_virtual_tokens


def loss_of(model, input_ids, attention_mask, labels, **kwargs) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions, outputs aligned by `output_offset`."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs).logits
    logits = logits[:, output_offset(model) :]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


def train(model, lr: float, steps: int = 30) -> tuple[float, float]:
    """A plain torch loop on the task batch; returns (first loss, last loss)."""
    batch = task_batch()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        loss = loss_of(model, *batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        final = loss_of(model, *batch).item()
    return losses[0], final


# --- configuration ---------------------------------------------------------------------------


def test_defaults_are_lora_on_all_linear_layers():
    config = MethodConfig()
    assert (config.name, config.r, config.alpha, config.target_modules) == ("lora", 16, 32, "all-linear")


def test_unknown_option_is_an_error():
    with pytest.raises(ValidationError, match="rank"):
        MethodConfig(name="lora", rank=8)


def test_option_of_another_method_is_an_error_naming_its_owner():
    with pytest.raises(ValidationError) as err:
        MethodConfig(name="prompt_tuning", r=8)
    assert "'r' is an option of lora, qlora" in str(err.value)
    assert "num_virtual_tokens" in str(err.value)


def test_a_dumped_configuration_loads_back():
    """The engine saves the resolved configuration (every field) and must be able to read it."""
    config = MethodConfig(name="prefix_tuning", num_virtual_tokens=8, prefix_projection=False)
    assert MethodConfig.model_validate(config.model_dump()) == config


# --- every method learns -----------------------------------------------------------------------


LEARNING_CASES = [(m, "llama") for m in ALL_METHODS if m not in methods.PROMPT_METHODS] + [
    (m, arch) for m in methods.PROMPT_METHODS for arch in ("llama", "qwen2", "gemma")  # peft builds gemma's cache apart
]


@pytest.mark.parametrize("method, arch", LEARNING_CASES)
def test_method_reduces_loss(method, arch):
    model = make(ALL_METHODS[method], arch, **LEARNABLE)
    first, last = train(model, TEST_LR[ALL_METHODS[method]["name"]])
    assert last < 0.95 * first, f"{method} on {arch}: loss {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("method", ["lora", "prompt_tuning", "prefix_tuning", "p_tuning_v2"])
def test_only_adapter_parameters_are_trained(method):
    model = make(ALL_METHODS[method])
    trainable, total = count_parameters(model)
    base_total = sum(p.numel() for p in tiny_model("llama", VOCAB).parameters())
    assert trainable == total - base_total > 0
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n and "prompt_encoder" not in n)


def test_count_parameters_matches_peft():
    model = make(ALL_METHODS["lora"])
    assert count_parameters(model) == model.get_nb_trainable_parameters()


def test_freeze_trains_last_layers_and_named_modules_only():
    model = make({"name": "freeze", "trainable_layers": 1, "trainable_modules": ["model.norm", "*.layers.0.mlp.*"]})
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {
        n
        for n, _ in model.named_parameters()
        if n.startswith(("model.layers.1.", "model.layers.0.mlp.")) or n == "model.norm.weight"
    }
    assert trained == expected
    assert "trained: model.layers.0.mlp, model.layers.1, model.norm" in methods.trainable_summary(model)


def test_freeze_pattern_that_matches_nothing_is_an_error():
    with pytest.raises(ValueError, match=r"'\*\.ffn\.\*' matches no parameter.*model\.embed_tokens\.weight"):
        make({"name": "freeze", "trainable_modules": ["*.ffn.*"]})
    with pytest.raises(ValueError, match="has 2 decoder layers"):
        make({"name": "freeze", "trainable_layers": 3})


def test_summary_names_lora_targets_and_counts():
    summary = methods.trainable_summary(make(ALL_METHODS["dora"]))
    trainable, total = count_parameters(make(ALL_METHODS["dora"]))
    assert f"{trainable:,} of {total:,}" in summary
    assert "lora (dora) on down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in summary


def test_prefix_tuning_and_p_tuning_v2_differ_by_the_projection_mlp():
    prefix, deep = make(ALL_METHODS["prefix_tuning"]), make(ALL_METHODS["p_tuning_v2"])
    assert prefix.peft_config["default"].prefix_projection and not deep.peft_config["default"].prefix_projection
    layers, kv_width, tokens = 2, 2 * 16, 4  # 2 key/value heads of 16
    assert count_parameters(deep)[0] == tokens * layers * 2 * kv_width  # a key and a value per layer and token
    assert count_parameters(prefix)[0] > count_parameters(deep)[0]


def test_prompt_tuning_starts_from_init_text(smollm2_tokenizer):
    config = MethodConfig(name="prompt_tuning", num_virtual_tokens=6, init_text="Answer the question.")
    base = tiny_model("llama")  # the SmolLM2 vocabulary size
    model = apply_method(base, config, tokenizer=smollm2_tokenizer, verbose=False)
    ids = smollm2_tokenizer("Answer the question.")["input_ids"]
    ids = (ids * 6)[:6]
    expected = model.get_input_embeddings().weight[ids]
    assert torch.equal(model.prompt_encoder["default"].embedding.weight, expected)


# --- packing, padding, checkpointing: the claims hold ------------------------------------------


def packed_and_alone_losses(model) -> tuple[list[float], list[float]]:
    """Per-sequence loss of three sequences packed in one row (position_ids restart, no
    attention_mask) and of each one alone."""
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, VOCAB, (n,), generator=g) for n in (9, 6, 7)]
    packed = torch.cat(seqs)[None]
    position_ids = torch.cat([torch.arange(len(s)) for s in seqs])[None]
    with torch.no_grad():
        logits = model(input_ids=packed, position_ids=position_ids, use_cache=False).logits
        logits = logits[0, logits.shape[1] - packed.shape[1] :]  # drop virtual positions, if any
        in_pack, alone, start = [], [], 0
        for seq in seqs:
            end = start + len(seq)
            in_pack.append(F.cross_entropy(logits[start : end - 1], seq[1:]).item())
            own = model(input_ids=seq[None], use_cache=False).logits[0, output_offset(model) :]
            alone.append(F.cross_entropy(own[:-1], seq[1:]).item())
            start = end
    return in_pack, alone


@pytest.mark.parametrize("method", list(ALL_METHODS))
def test_packing_supported_tells_the_truth(method):
    """Where packing is said to be supported, each sequence's loss in a pack equals its loss alone;
    where it is refused, packing really mixes the sequences."""
    config = MethodConfig(**ALL_METHODS[method])
    model = make(ALL_METHODS[method])
    if method in ("lora", "dora"):  # make the adapter do something
        train(model, TEST_LR["lora"], steps=2)
    supported, reason = packing_supported(config, model)
    in_pack, alone = packed_and_alone_losses(model)
    equal = torch.allclose(torch.tensor(in_pack), torch.tensor(alone), atol=1e-5)
    assert equal == supported, f"{method}: packing_supported={supported} ({reason}), in pack {in_pack} vs alone {alone}"
    assert supported or method in methods.PROMPT_METHODS


def test_packing_refused_for_unknown_attention():
    model = tiny_model("llama", VOCAB)
    model.config._attn_implementation = "my_kernel"
    supported, reason = packing_supported(MethodConfig(), model)
    assert not supported and "my_kernel" in reason


@pytest.mark.parametrize("method", list(methods.PROMPT_METHODS))
def test_virtual_token_methods_handle_right_padded_batches(method, tiny_arch):
    """Each row of a padded batch gets the loss it gets alone, and peft's own loss (for
    prompt_tuning: labels shifted past the virtual tokens) agrees with the loss aligned by
    `output_offset`. (peft also trains the last virtual token to predict the first real one; SFT
    never trains the first token, so its label is -100 here as in sftune's data.)"""
    model = make(ALL_METHODS[method], tiny_arch)
    input_ids, attention_mask, labels = task_batch()
    labels[:, 0] = -100
    with torch.no_grad():
        for row in range(len(input_ids)):
            n = int(attention_mask[row].sum())
            in_batch = loss_of(model, input_ids, attention_mask, labels.where(torch.arange(4)[:, None] == row, -100))
            alone = loss_of(model, input_ids[row : row + 1, :n], attention_mask[row : row + 1, :n], labels[row : row + 1, :n])
            torch.testing.assert_close(in_batch, alone, atol=1e-5, rtol=1e-5)
        peft_loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False).loss
    torch.testing.assert_close(peft_loss, loss_of(model, input_ids, attention_mask, labels), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["lora", "prompt_tuning", "prefix_tuning", "p_tuning_v2"])
def test_gradient_checkpointing_supported_tells_the_truth(method):
    options = {**ALL_METHODS[method], **({"dropout": 0.0} if method == "lora" else {})}  # same randomness both ways
    config = MethodConfig(**options)
    model = make(options)
    model.train()
    batch = task_batch()

    def gradients():
        model.zero_grad()
        loss_of(model, *batch).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])

    reference = gradients()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    supported, reason = methods.gradient_checkpointing_supported(config)
    try:
        same = torch.allclose(gradients(), reference, atol=1e-6)
    except RuntimeError:
        same = False
    assert same == supported, f"{method}: gradient_checkpointing_supported={supported} ({reason})"


# --- save and load ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", list(ADAPTER_METHODS))
def test_adapter_round_trips(method, tmp_path):
    from peft import PeftModel

    model = make(ALL_METHODS[method])
    train(model, TEST_LR[ALL_METHODS[method]["name"]], steps=3)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model("llama", VOCAB), tmp_path).eval()
    input_ids, attention_mask, _ = task_batch()
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        got = loaded(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["prefix_tuning", "lora"])
def test_trainable_state_restores_the_training_model(method):
    """A checkpoint of the trained parameters restores a fresh model to the same outputs, with the
    parameters still trainable (for prefix_tuning the saved adapter cannot: its MLP is folded)."""
    trained = make(ALL_METHODS[method])
    train(trained, TEST_LR[method], steps=3)
    resumed = make(ALL_METHODS[method]).eval()  # no dropout
    methods.load_trainable_state(resumed, methods.trainable_state(trained))
    input_ids, attention_mask, _ = task_batch()
    with torch.no_grad():
        expected = trained(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        got = resumed(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert count_parameters(resumed)[0] == count_parameters(trained)[0] > 0
    with pytest.raises(ValueError, match="missing"):
        methods.load_trainable_state(make(ALL_METHODS["p_tuning_v2"]), methods.trainable_state(trained))


# --- QLoRA --------------------------------------------------------------------------------------


def test_load_kwargs_are_empty_except_for_qlora():
    assert all(methods.load_kwargs(MethodConfig(**options)) == {} for options in ALL_METHODS.values())


def test_qlora_needs_a_4bit_model():
    with pytest.raises(ValueError, match="load it with from_pretrained"):
        make({"name": "qlora"})


def test_qlora_that_cannot_run_fails_before_loading():
    """A device bitsandbytes has no 4-bit kernels for (here: meta) gives a clear error up front."""
    pytest.importorskip("bitsandbytes")
    with pytest.raises(RuntimeError, match="method 'qlora' cannot run here.*on meta.*or method: lora"):
        methods.load_kwargs(MethodConfig(name="qlora"), device="meta")


def test_qlora_checks_and_loads_on_this_processs_gpu(monkeypatch):
    """Process 3 of a launch runs QLoRA's 4-bit check on cuda:3 and loads its base there, not on cuda:0 (where
    every process's check and CUDA context landed before the Trainer sets the device)."""
    from tests.test_hardware import fake_gpu

    fake_gpu(monkeypatch, (8, 0))
    checked = []
    monkeypatch.setattr(methods, "_check_4bit_runs", lambda device, dtype, method: checked.append(device))
    monkeypatch.setenv("LOCAL_RANK", "3")
    kwargs = methods.load_kwargs(MethodConfig(name="qlora"))
    assert checked == [torch.device("cuda", 3)] and kwargs["device_map"] == {"": 3}
    methods.load_kwargs(MethodConfig(name="qlora"), device="cuda:1")  # a named GPU stays
    assert checked[-1] == torch.device("cuda", 1)
    assert methods.process_device(torch.device("cpu"), {"LOCAL_RANK": "3"}) == torch.device("cpu")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_p_tuning_v2_starts_as_if_its_init_text_came_first(arch, smollm2_tokenizer):
    """p_tuning_v2's virtual keys/values start as the frozen model's own for the init text: before
    training, the model's logits on X equal the base model's logits for X after that text."""
    tokenizer = smollm2_tokenizer
    base = tiny_model(arch)
    text_ids = tokenizer("Answer briefly.", add_special_tokens=False)["input_ids"]
    x = tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        reference = base(input_ids=torch.tensor([text_ids + x]), use_cache=False).logits[0, len(text_ids):]
    method = MethodConfig(name="p_tuning_v2", num_virtual_tokens=len(text_ids), init_text="Answer briefly.")
    model = apply_method(tiny_model(arch), method, tokenizer, verbose=False)
    with torch.no_grad():
        got = model(input_ids=torch.tensor([x]), attention_mask=torch.ones(1, len(x), dtype=torch.long)).logits[0]
    torch.testing.assert_close(got, reference, atol=1e-4, rtol=0)


def test_prefix_tuning_starts_near_the_base_model(smollm2_tokenizer):
    """With the projection MLP, every virtual token starts as the mean key/value of the init text:
    the loss before training stays close to the base model's (peft's random start is far off)."""
    tokenizer = smollm2_tokenizer
    x = torch.tensor([tokenizer("The capital of France is Paris, and", add_special_tokens=False)["input_ids"]])

    def loss(model):
        with torch.no_grad():
            return model(input_ids=x, attention_mask=torch.ones_like(x), labels=x).loss.item()

    base_loss = loss(tiny_model("llama"))
    method = MethodConfig(name="prefix_tuning", num_virtual_tokens=8)
    ours = loss(apply_method(tiny_model("llama"), method, tokenizer, verbose=False))
    peft_default = loss(apply_method(tiny_model("llama"), method, None, verbose=False))
    assert abs(ours - base_loss) < abs(peft_default - base_loss)
    assert abs(ours - base_loss) < 0.1 * base_loss
