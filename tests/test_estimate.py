"""sftune.estimate: parameter counts equal the real models', each part follows its formula on small
hand-computed cases, sharding divides the right parts, and the prediction stays within a stated bound
of the peak memory (RSS) measured while training in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sftune import estimate as E
from sftune import methods
from sftune.config import ConfigError, load
from sftune.methods import MethodConfig
from tests.conftest import tiny_config, tiny_model

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20

METHODS = [
    MethodConfig(name="full"),
    MethodConfig(name="lora", r=4),
    MethodConfig(name="lora", r=4, dora=True, target_modules=["q_proj", "v_proj"]),
    MethodConfig(name="freeze", trainable_layers=1, trainable_modules=["model.embed_tokens*"]),
    MethodConfig(name="prompt_tuning", num_virtual_tokens=5),
    MethodConfig(name="prefix_tuning", num_virtual_tokens=5),
    MethodConfig(name="p_tuning_v2", num_virtual_tokens=5),
]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name + ("-dora" if m.dora else ""))
def test_parameter_counts_equal_the_real_models(tiny_arch, method):
    shape = E.model_shape(tiny_config(tiny_arch))
    model = methods.apply_method(tiny_model(tiny_arch), method, verbose=False)
    trainable, total = methods.count_parameters(model)
    counts = E.parameters(shape, method)
    assert counts["trainable"] == trainable
    assert counts["base"] + counts["adapter"] == total


def test_smollm2_parameters_from_its_config_equal_its_checkpoint():
    """The meta-device build of SmolLM2's config.json counts what its safetensors hold (lm_head tied)."""
    from safetensors import safe_open

    from sftune import models

    folder = models.resolve(models.DEFAULT_MODEL)
    shape = E.model_shape(E.model_config(models.DEFAULT_MODEL))
    stored = 0
    for file in Path(folder).glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():  # noqa: SIM118 - safetensors' handle is not a dict
                n = 1
                for d in f.get_slice(key).get_shape():
                    n *= d
                stored += n
    assert shape.total == stored == 134_515_008
    assert (shape.hidden, shape.layers, shape.vocab, shape.kv_heads) == (576, 30, 49152, 3)


def test_qlora_counts_the_4bit_linear_layers():
    shape = E.model_shape(tiny_config("llama"))
    counts = E.parameters(shape, MethodConfig(name="qlora", r=4))
    # 2 layers x (q 64x64, k 64x32, v 64x32, o 64x64, gate/up 64x128, down 128x64); the embedding stays
    assert counts["quantized"] == 2 * (64 * 64 * 2 + 64 * 32 * 2 + 64 * 128 * 3)
    assert E.quantized_bytes_per_param(False) == 0.5 + 4 / 64
    assert E.quantized_bytes_per_param(True) == pytest.approx(0.5 + 1 / 64 + 4 / (64 * 256))


# ------------------------------------------------------------------------ hand-computed small cases

TINY = {"vocab": 49152, "H": 64, "I": 128, "L": 2, "q": 64, "kv": 32}


def _config(**train):
    return load({"model": {"name": "unused"}, "method": {"name": "full"},
                 "data": {"max_len": 128, "packing": True},
                 "train": {"batch_size": 1, "precision": "fp32", **train}})


def test_full_fine_tuning_parts_follow_the_formulas():
    shape = E.model_shape(tiny_config("llama"))
    P, T, H, I, L, V = shape.total, 128, TINY["H"], TINY["I"], TINY["L"], TINY["vocab"]
    est = E.estimate(_config(), shape, device="cuda")  # kept tensors only (see the CPU test below)
    assert est.parts["weights"] == 4 * P
    assert est.parts["gradients"] == 4 * P
    assert est.parts["optimizer states"] == 8 * P  # AdamW: two fp32 moments
    per_token_layer = 4 * (4 * H) + 4 * (3 * TINY["q"] + 2 * TINY["kv"] + 4 * I)  # 4096 bytes
    assert per_token_layer == 4096
    outside_layers = T * (3 * H + 2 * (H + I)) * 4
    assert est.parts["activations"] == T * L * 4096 + outside_layers == 1_343_488
    # fp32 logits of all 128 tokens (fewer than one 682-row chunk; cross-entropy works in place over it),
    # hidden + its gradient, d(output layer)
    assert est.parts["logits and loss"] == 128 * V * 4 + 2 * T * H * 4 + V * H * 4


def test_checkpointing_keeps_each_layer_input_and_one_layer():
    shape = E.model_shape(tiny_config("llama"))
    est = E.estimate(_config(gradient_checkpointing=True), shape, device="cuda")
    T, H, I, L = 128, TINY["H"], TINY["I"], TINY["L"]
    assert est.parts["activations"] == T * H * 4 * L + T * 4096 + T * (3 * H + 2 * (H + I)) * 4 == 884_736
    without = E.estimate(_config(), shape, device="cuda").parts["activations"]
    assert without - est.parts["activations"] == (L - 1) * T * 4096 - L * T * H * 4


def test_on_a_cpu_the_forward_temporaries_count_and_the_peak_is_the_larger_moment():
    shape = E.model_shape(tiny_config("llama"))
    H, q, kv, T, L = 64, 64, 32, 128, 2
    cpu, gpu = E.estimate(_config(), shape), E.estimate(_config(), shape, device="cuda")
    assert cpu.parts["activations"] - gpu.parts["activations"] == T * L * 4 * int(6 * H + 5.5 * q + 4.5 * kv)
    # AdamW on a CPU: two temporaries of the largest tensor (the embedding); the tied embedding's two gradients
    assert cpu.parts["optimizer step"] == 2 * 49152 * 64 * 4 + 2 * 49152 * 64 * 4
    weights, states = cpu.parts["weights"], cpu.parts["optimizer states"]
    assert cpu.phases == {
        "forward and backward": weights + states + cpu.parts["activations"] + cpu.parts["logits and loss"],
        "optimizer step": weights + states + cpu.parts["gradients"] + cpu.parts["optimizer step"]}
    assert cpu.total == max(cpu.phases.values())
    accumulating = E.estimate(_config(batch_size=2, micro_batch_size=1), shape)
    assert accumulating.phases["forward and backward"] == cpu.phases["forward and backward"] + cpu.parts["gradients"]


def test_activations_grow_with_the_micro_batch_and_logits_are_chunked():
    shape = E.model_shape(tiny_config("llama"))
    one = E.estimate(_config(), shape, micro_batch=1)
    four = E.estimate(_config(), shape, micro_batch=4)
    assert four.tokens == 4 * one.tokens == 512
    assert four.parts["activations"] == 4 * one.parts["activations"]
    # 512 tokens, but one chunk of 2**25 // 49152 = 682 rows is the most logits held: still all 512
    assert four.parts["logits and loss"] - one.parts["logits and loss"] == (512 - 128) * (49152 * 4 + 2 * 64 * 4)
    eight = E.estimate(_config(), shape, micro_batch=8)  # 1024 tokens: capped at the chunk
    assert eight.parts["logits and loss"] == 682 * 49152 * 4 + 2 * 1024 * 64 * 4 + 49152 * 64 * 4
    # the other token losses (dft, ...) keep a second fp32 chunk beside the logits
    dft = E.estimate(_config(loss="dft"), shape, micro_batch=8)
    assert dft.parts["logits and loss"] - eight.parts["logits and loss"] == 682 * 49152 * 4


def test_lora_and_qlora_weights_and_states():
    shape = E.model_shape(tiny_config("llama"))
    cfg = load({"model": {"name": "unused"}, "method": {"name": "lora", "r": 4}, "data": {"max_len": 128},
                "train": {"batch_size": 1, "precision": "fp32"}})
    est = E.estimate(cfg, shape)
    adapter = E.parameters(shape, cfg.method)["adapter"]
    assert est.parts["weights"] == 4 * (shape.total + adapter)
    assert est.parts["gradients"] == 4 * adapter and est.parts["optimizer states"] == 8 * adapter
    assert "logits and loss" in est.parts and est.parts["logits and loss"] == 128 * 49152 * 4 + 2 * 128 * 64 * 4
    q = load({"model": {"name": "unused"}, "method": {"name": "qlora", "r": 4}, "data": {"max_len": 128},
              "train": {"batch_size": 1, "precision": "fp32"}})
    quantized = E.parameters(shape, q.method)["quantized"]
    assert E.estimate(q, shape).parts["weights"] == int(
        quantized * E.quantized_bytes_per_param(True) + (shape.total - quantized) * 4 + adapter * 4)


def test_bf16_on_gpu_halves_an_adapter_base_and_deepspeed_keeps_fp32_master_weights():
    shape = E.model_shape(tiny_config("llama"))
    cfg = load({"model": {"name": "unused"}, "method": {"name": "lora", "r": 4}, "data": {"max_len": 128},
                "train": {"batch_size": 1, "precision": "bf16"}})
    adapter = E.parameters(shape, cfg.method)["adapter"]
    assert E.estimate(cfg, shape, device="cuda").parts["weights"] == 2 * shape.total + 4 * adapter
    full = load({"model": {"name": "unused"}, "method": {"name": "full"}, "data": {"max_len": 128},
                 "train": {"batch_size": 1, "precision": "bf16"}})
    ds = E.estimate(full, shape, device="cuda", gpus=1, sharding="zero2")
    assert ds.parts["weights"] == 2 * shape.total and ds.parts["master weights"] == 4 * shape.total


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("method", ["full", "freeze", "lora", "qlora", "prompt_tuning"])
def test_the_estimate_loads_the_weights_in_the_dtype_training_does(monkeypatch, method, precision, device):
    """One rule (training.run.weights_dtype) for the frozen base, whatever this machine has: an fp16 adapter run
    and a bf16 one on a CPU hold a half base in the estimate as in training. The weights part follows it."""
    from sftune.training.run import weights_dtype

    monkeypatch.setattr("torch.cuda.is_available", lambda: device == "cuda")  # the machine the run would have
    shape = E.model_shape(tiny_config("llama"))
    for dtype in ("auto", "float32", "bfloat16"):
        cfg = load({"model": {"name": "unused", "dtype": dtype}, "method": {"name": method}, "data": {"max_len": 128},
                    "train": {"batch_size": 1, "precision": precision}})
        est = E.estimate(cfg, shape, device=device)
        trained = weights_dtype(cfg, precision)
        assert est.weights_dtype == str(trained).removeprefix("torch."), (dtype, est.weights_dtype, trained)
        if method in ("full", "lora"):
            adapter = E.parameters(shape, cfg.method)["adapter"]
            assert est.parts["weights"] == shape.total * trained.itemsize + adapter * (4 if method == "lora" else 0)


# ------------------------------------------------------------------------------------------ sharding


def test_sharding_divides_the_right_parts():
    shape = E.model_shape(tiny_config("llama"))
    cfg, n = _config(), 4
    one = E.estimate(cfg, shape).parts
    ddp = E.estimate(cfg, shape, gpus=n, sharding="ddp").parts
    zero2 = E.estimate(cfg, shape, gpus=n, sharding="zero2").parts
    zero3 = E.estimate(cfg, shape, gpus=n, sharding="zero3").parts
    fsdp = E.estimate(cfg, shape, gpus=n, sharding="fsdp").parts
    # DDP: every process holds everything, plus its gradient buckets
    assert {k: v for k, v in ddp.items() if k != "DDP gradient buckets"} == one
    assert ddp["DDP gradient buckets"] == one["gradients"]
    # ZeRO-2: gradients and optimizer states sharded; weights whole
    assert zero2["weights"] == one["weights"]
    assert zero2["gradients"] == _ceil(n, one["gradients"]) and zero2["optimizer states"] == _ceil(n, one["optimizer states"])
    # ZeRO-3 / FSDP: the weights too, plus two whole decoder layers gathered at a time
    for parts in (zero3, fsdp):
        assert parts["weights"] == _ceil(n, one["weights"])
        assert parts["gathered layers"] == 2 * shape.layer_params * 4
    # activations and logits are per device, never divided
    for parts in (ddp, zero2, zero3, fsdp):
        assert parts["activations"] == one["activations"]
        assert parts["logits and loss"] == one["logits and loss"]


def _ceil(n: int, x: int) -> int:
    return -(-x // n)


def test_offload_moves_states_to_the_host():
    shape = E.model_shape(tiny_config("llama"))
    cfg = _config()
    z2 = E.estimate(cfg, shape, gpus=2, sharding="zero2", offload=True)
    assert "optimizer states" not in z2.parts and "weights" in z2.parts
    assert z2.host["optimizer states"] == 8 * shape.total // 2
    z3 = E.estimate(cfg, shape, gpus=2, sharding="zero3", offload=True)
    assert "weights" not in z3.parts and z3.host["weights"] == 4 * shape.total // 2
    with pytest.raises(ConfigError, match="zero2, zero3 or fsdp"):
        E.estimate(cfg, shape, offload=True)


def test_largest_micro_batch_is_the_last_that_fits():
    shape = E.model_shape(tiny_config("llama"))
    cfg = _config()
    memory = E.estimate(cfg, shape, micro_batch=7).total + 1
    assert E.largest_micro_batch(cfg, shape, memory) == 7
    assert E.largest_micro_batch(cfg, shape, E.estimate(cfg, shape, micro_batch=1).total - 1) == 0


# ------------------------------------------------------------------------------ command and warning


def test_estimate_command_prints_the_breakdown_and_what_fits(tmp_path, smollm2_tokenizer):
    from typer.testing import CliRunner

    from sftune.cli import app

    folder = tmp_path / "tiny"
    tiny_model("llama", vocab_size=len(smollm2_tokenizer)).save_pretrained(folder)
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{name: {folder}}}\nmethod: {{name: full}}\ndata: {{max_len: 128}}\n")
    runner = CliRunner()
    result = runner.invoke(app, ["estimate", str(config), "train.precision=fp32", "--memory", "1"])
    assert result.exit_code == 0, result.output
    for part in ("weights", "gradients", "optimizer states", "activations", "logits and loss", "peak"):
        assert part in result.output
    shape = E.model_shape(E.model_config(str(folder)))
    cfg = load(str(config), ["train.precision=fp32"])
    fits = E.largest_micro_batch(cfg, shape, E.GiB)
    assert f"Largest micro-batch that fits: {fits} packed rows" in " ".join(result.output.split())
    bad = runner.invoke(app, ["estimate", str(config), "--offload"])
    assert bad.exit_code == 2 and "zero2, zero3 or fsdp" in bad.output


def test_train_warning_names_the_numbers_and_what_to_change(tmp_path, smollm2_tokenizer):
    folder = tmp_path / "tiny"
    tiny_model("llama", vocab_size=len(smollm2_tokenizer)).save_pretrained(folder)
    cfg = load({"model": {"name": str(folder)}, "method": {"name": "full"}, "data": {"max_len": 512},
                "train": {"batch_size": 8, "micro_batch_size": 8, "precision": "fp32"}})
    shape = E.model_shape(E.model_config(str(folder)))
    est = E.estimate(cfg, shape, device="cpu")
    memory = E.estimate(cfg, shape, device="cpu", micro_batch=3).total + 1
    warning = E.fit_warning(cfg, memory=memory)
    assert warning is not None
    assert f"{est.total / E.GiB:.2f} GiB" in warning and f"{memory / E.GiB:.2f} GiB" in warning
    assert "train.micro_batch_size=3" in warning
    assert "train.gradient_checkpointing=true" in warning and "method.name=lora" in warning
    assert E.fit_warning(cfg, memory=2 * est.total) is None


# ---------------------------------------------------------------------------- against measured peaks


def measure(config: dict, mode: str, tmp_path: Path) -> dict:
    """Peak RSS of a child that trains `config` (mode 'train') or only imports and encodes ('baseline')."""
    path = tmp_path / f"config-{mode}-{abs(hash(json.dumps(config, sort_keys=True)))}.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "tests.estimate_peak", str(path), mode], check=False, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PEAK ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1][5:])


def compare(base_config: dict, method: str, checkpointing: bool, tmp_path: Path, baseline: int) -> float:
    cfg = json.loads(json.dumps(base_config))
    cfg["method"] = {"name": method}
    cfg["train"]["gradient_checkpointing"] = checkpointing
    run = measure(cfg, "train", tmp_path)
    assert run["steps"] == cfg["train"]["max_steps"] and run["longest_row"] == cfg["data"]["max_len"]
    measured = run["maxrss"] - baseline
    predicted = E.for_config(load(cfg), device="cpu", trained_tokens=run["trained_tokens"]).total
    error = (predicted - measured) / measured
    print(f"{method} checkpointing={checkpointing}: measured {measured / MiB:.1f} MiB, "
          f"predicted {predicted / MiB:.1f} MiB, error {100 * error:+.1f}%")
    return error


def _run_config(tmp_path: Path, model: str, max_len: int, micro: int, n_train: int) -> dict:
    from sftune.demo import write_dataset

    train, _ = write_dataset(tmp_path / "data", n_train=n_train, n_eval=4)
    return {"model": {"name": model}, "data": {"train": str(train), "val_ratio": 0, "max_len": max_len},
            "train": {"max_steps": 2, "batch_size": micro, "micro_batch_size": micro, "logging_steps": 100,
                      "lr": 1e-4, "precision": "fp32"},
            "output": {"dir": str(tmp_path / "run")}}


# |relative error| allowed, per (method, checkpointing). Measured on AMD EPYC AVX512-BF16, 2 cores, loaded
# (docs/estimate.md): tiny +6.7, +2.4, +0.7, -20.1%; SmolLM2 +1.2, +0.2, -0.9, -38.0%. LoRA with
# checkpointing is under-estimated on a CPU: the checkpointed forward leaves ~4I per token and layer
# resident that the formula does not explain yet (see "What it does not know").
# The tiny model's peak is ~150-280 MiB, so a few MiB of allocator state move it by percents: on one commit, Intel
# Xeon without bf16 units, full without checkpointing measured 249 and 278 MiB in two runs (-8% and -18%), LoRA with
# checkpointing -26% to -35%. The SmolLM2 cases below (slow) hold the formula to the tighter bounds.
TINY_BOUNDS = {("full", False): 0.25, ("full", True): 0.25, ("lora", False): 0.25, ("lora", True): 0.45}
SMOLLM2_BOUNDS = {("full", False): 0.10, ("full", True): 0.10, ("lora", False): 0.10, ("lora", True): 0.45}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, smollm2_tokenizer):
    tmp = tmp_path_factory.mktemp("estimate-tiny")
    folder = tmp / "model"
    tiny_model("llama", vocab_size=len(smollm2_tokenizer), hidden_size=128, intermediate_size=512,
               num_hidden_layers=4).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    config = _run_config(tmp, str(folder), max_len=256, micro=4, n_train=200)
    return config, measure(config, "baseline", tmp)["maxrss"], tmp


@pytest.mark.parametrize("method,checkpointing", [("full", False), ("full", True), ("lora", False), ("lora", True)])
def test_estimate_is_near_the_measured_peak_of_a_tiny_model(tiny_run, method, checkpointing):
    config, baseline, tmp = tiny_run
    assert abs(compare(config, method, checkpointing, tmp, baseline)) <= TINY_BOUNDS[method, checkpointing]


@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory):
    from sftune import models

    tmp = tmp_path_factory.mktemp("estimate-smollm2")
    config = _run_config(tmp, models.DEFAULT_MODEL, max_len=256, micro=2, n_train=120)
    return config, measure(config, "baseline", tmp)["maxrss"], tmp


@pytest.mark.slow
# Two of the four cases on the real model (each trains it in a child process: minutes on 2 cores); the tiny model
# covers all four. LoRA + checkpointing under-estimates by about 38% on SmolLM2 (docs/estimate.md).
@pytest.mark.parametrize("method,checkpointing", [("full", True), ("lora", False)])
def test_estimate_is_near_the_measured_peak_of_smollm2(smollm2_run, method, checkpointing):
    config, baseline, tmp = smollm2_run
    assert abs(compare(config, method, checkpointing, tmp, baseline)) <= SMOLLM2_BOUNDS[method, checkpointing]
