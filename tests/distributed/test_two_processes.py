"""2 CPU processes over gloo against 1 process with the same global batch: the same loss curve and a saved
model (adapter, or the gathered full weights) that plain transformers / peft load and that gives the same logits.

Loss curves agree within 1e-5 relative and logits within 1e-5 absolute (fp32; measured: identical to ~1e-7).
Each launch: OMP_NUM_THREADS=1, loopback, a free port, 4 optimizer steps, a 300 s timeout.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_model

from tests.preference.test_recipe import PAIRS

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("worker.py")
BIN = Path(sys.executable).parent
LOSS_RTOL, LOGITS_ATOL = 1e-5, 1e-5
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed is not installed (extra `distributed`)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(kind: str, args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the worker as one process, or as 2 processes under torchrun / accelerate launch."""
    port = str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
           "PYTHONPATH": f"{REPO / 'src'}:{REPO}", "TOKENIZERS_PARALLELISM": "false"}
    if kind == "single":
        command = [sys.executable, str(WORKER)]
    elif kind == "torchrun":
        command = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                   port, str(WORKER)]
    else:  # an accelerate config of examples/accelerate
        command = [str(BIN / "accelerate"), "launch", "--config_file", str(REPO / "examples/accelerate" / kind),
                   "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", port, str(WORKER)]
    return subprocess.run(command + args, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random llama with the real SmolLM2 tokenizer, the demo data and a config for it."""
    import yaml

    from sftune import models
    from sftune.demo import write_dataset

    root = tmp_path_factory.mktemp("two-processes")
    _, tokenizer = models.load(models.DEFAULT_MODEL, tokenizer_only=True)
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    train_path, eval_path = write_dataset(root / "data", n_train=48, n_eval=8)
    config = {"model": {"name": str(root / "model")},
              "data": {"train": str(train_path), "eval": str(eval_path), "max_len": 128},
              "method": {"name": "lora", "r": 4},
              # fp32 everywhere: DeepSpeed on CPU trains in fp32, and one process must compute alike to compare
              "train": {"max_steps": 4, "batch_size": 4, "logging_steps": 1, "lr": 5e-3, "save_steps": 100,
                        "precision": "fp32"},
              "eval": {"steps": 100}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    (root / "config-full.yaml").write_text(yaml.safe_dump({**config, "method": {"name": "full"},
                                                           "train": {**config["train"], "lr": 1e-3}}))
    # held out: 3 examples in batches of 2, which 2 processes cannot share evenly (sequences, not packed rows)
    eval3 = root / "data" / "eval3.jsonl"
    eval3.write_text("".join(eval_path.read_text(encoding="utf-8").splitlines(keepends=True)[:3]), encoding="utf-8")
    (root / "config-eval.yaml").write_text(yaml.safe_dump({
        **config, "data": {**config["data"], "eval": str(eval3), "packing": False},
        "eval": {**config["eval"], "batch_size": 2}}))
    # preference pairs: 12 to train on (3 whole steps of 4: a last step of 3 would be evened out to 4 over 2
    # processes), 3 held out (2 processes cannot share them evenly); no warm-up, so that the first update already
    # moves the weights
    pairs = root / "data" / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    held_out = root / "data" / "pairs-eval.jsonl"
    held_out.write_text("".join(json.dumps({"prompt": f"Say a word about {w}.", "chosen": f"{w.capitalize()}! Done.",
                                            "rejected": f"I will not talk of {w}."}) + "\n"
                                for w in ("moss", "ice", "fern")))
    (root / "config-dpo.yaml").write_text(yaml.safe_dump({
        **config, "stage": "preference", "preference": {"loss": "dpo", "beta": 0.1}, "method": {"name": "full"},
        "data": {"train": str(pairs), "eval": str(held_out), "max_len": 128},
        "train": {**config["train"], "max_steps": 3, "lr": 1e-3, "warmup": 0}}))
    return root


CONFIGS = {"lora": "config.yaml", "full": "config-full.yaml", "dpo": "config-dpo.yaml",
           "eval": "config-eval.yaml"}


def run(setup: Path, kind: str, method: str) -> Path:
    out = setup / f"{kind}-{method}"
    processes = 1 if kind == "single" else 2
    config = setup / CONFIGS[method]
    result = launch(kind, [str(config), f"output.dir={out}", f"train.batch_size={4 // processes}"])  # the same global batch
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return out


@pytest.fixture(scope="module")
def reference(setup):
    """1-process runs, LoRA and full fine-tuning."""
    return {"lora": run(setup, "single", "lora"), "full": run(setup, "single", "full")}


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def logits(run_dir: Path, model_dir: Path) -> torch.Tensor:
    """Logits of the saved run folder loaded with plain transformers (full) or peft (adapter)."""
    from transformers import AutoModelForCausalLM

    if (run_dir / "adapter_config.json").exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), run_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(run_dir)
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


CASES = [
    pytest.param("torchrun", "lora", id="ddp-lora"),
    pytest.param("deepspeed_zero2.yaml", "lora", id="zero2-lora", marks=needs_deepspeed),
    pytest.param("deepspeed_zero3.yaml", "lora", id="zero3-lora", marks=needs_deepspeed),
    pytest.param("deepspeed_zero3.yaml", "full", id="zero3-full", marks=needs_deepspeed),
    pytest.param("deepspeed_zero3_offload.yaml", "lora", id="zero3-offload-lora", marks=needs_deepspeed),
]


@pytest.mark.parametrize("kind, method", CASES)
def test_two_processes_match_one(setup, reference, kind, method):
    out = run(setup, kind, method)
    probes = [json.loads((out / f"probe-{rank}.json").read_text()) for rank in (0, 1)]
    assert all(p["num_processes"] == 2 for p in probes)
    if kind.startswith("deepspeed"):
        assert probes[0]["distributed_type"].endswith("DEEPSPEED")
        assert probes[0]["deepspeed_stage"] == int(kind[len("deepspeed_zero")])
        assert probes[0]["summary"]["processes"] == 2
    expected = losses(reference[method])
    assert len(expected) == 4
    assert losses(out) == pytest.approx(expected, rel=LOSS_RTOL)
    assert probes[0]["summary"]["trained_tokens"] == json.loads((reference[method] / "summary.json").read_text())[
        "trained_tokens"]
    torch.testing.assert_close(logits(out, setup / "model"), logits(reference[method], setup / "model"),
                               atol=LOGITS_ATOL, rtol=0)


def test_held_out_set_not_shared_evenly_counts_each_example_once(setup):
    """SFT under DDP with 3 held-out examples in batches of 2 on 2 processes: the held-out loss, token accuracy and
    token count equal one process's (accelerate's even batches would give the second process a repeated example)."""
    out, single = run(setup, "torchrun", "eval"), run(setup, "single", "eval")
    assert losses(out) == pytest.approx(losses(single), rel=LOSS_RTOL)
    two = json.loads((out / "probe-0.json").read_text())["summary"]
    one = json.loads((single / "summary.json").read_text())
    assert (two["processes"], one["processes"]) == (2, 1)
    assert two["eval_examples"] == one["eval_examples"] == 3
    assert two["eval_tokens"] == one["eval_tokens"] > 0
    for key in ("eval_loss", "eval_token_accuracy"):
        assert two[key] == pytest.approx(one[key], rel=LOSS_RTOL), key


@pytest.fixture(scope="module")
def single_dpo(setup):
    """The 1-process DPO run the 2-process ones are compared with."""
    return run(setup, "single", "dpo")


def test_dpo_under_ddp_matches_one_process(setup, single_dpo):
    """DPO under DDP with 3 held-out pairs on 2 processes: the loss curve, and the held-out loss, reward accuracy
    and pair count of one process (each held-out pair counted once)."""
    out = run(setup, "torchrun", "dpo")
    assert losses(out) == pytest.approx(losses(single_dpo), rel=LOSS_RTOL)
    two = json.loads((out / "probe-0.json").read_text())["summary"]
    one = json.loads((single_dpo / "summary.json").read_text())
    assert (two["processes"], one["processes"]) == (2, 1)
    assert two["eval_pairs"] == one["eval_pairs"] == 3
    for key in ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "eval_logps/chosen"):
        assert two[key] == pytest.approx(one[key], rel=LOSS_RTOL, abs=1e-6), key  # the rewards are logged to 1e-6


@needs_deepspeed
def test_dpo_under_zero3_matches_one_process(setup, single_dpo):
    """DPO (full fine-tuning) with the weights split by ZeRO-3 over 2 processes: the preference log-probs go
    through the chunked output layer, which gathers the split head in the forward and again in the backward. The
    loss curve and the saved weights' logits equal those of 1 process with the same global batch of pairs."""
    out = run(setup, "deepspeed_zero3.yaml", "dpo")
    probes = [json.loads((out / f"probe-{rank}.json").read_text()) for rank in (0, 1)]
    assert all(p["num_processes"] == 2 for p in probes) and probes[0]["deepspeed_stage"] == 3
    assert probes[0]["summary"]["stage"] == "preference" and probes[0]["summary"]["steps"] == 3
    single = single_dpo
    expected = losses(single)
    assert len(expected) == 3 and all(math.isfinite(x) for x in expected)
    assert expected[0] == pytest.approx(math.log(2), abs=1e-4)  # the first step starts at the reference
    assert expected[1] < expected[0] - 1e-3  # and the next steps see the weights move
    assert losses(out) == pytest.approx(expected, rel=LOSS_RTOL)
    summaries = probes[0]["summary"], json.loads((single / "summary.json").read_text())
    for key in ("train_pairs", "eval_pairs", "trained_tokens", "trainable_parameters", "total_parameters"):
        assert summaries[0][key] == summaries[1][key], key
    assert summaries[0]["eval_loss"] == pytest.approx(summaries[1]["eval_loss"], rel=LOSS_RTOL)
    torch.testing.assert_close(logits(out, setup / "model"), logits(single, setup / "model"), atol=LOGITS_ATOL, rtol=0)


def test_fsdp_on_cpu_is_refused_before_any_work(setup):
    """accelerate applies FSDP only on GPUs: on CPU processes it would silently train plain DDP."""
    result = launch("fsdp2_lora.yaml", [str(setup / "config.yaml"), f"output.dir={setup / 'fsdp'}"], timeout=120)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "accelerate runs FSDP only on GPUs" in output
    assert "Loading weights" not in output and not (setup / "fsdp").exists()


def test_two_processes_see_disjoint_complete_shards(setup):
    """Each optimizer step's rows are split between the processes: together they see every packed row once."""
    out = setup / "shards"
    result = launch("torchrun", ["--shards", str(setup / "config.yaml"), f"output.dir={out}", "train.batch_size=2"])
    assert result.returncode == 0, result.stderr[-6000:]
    shards = [json.loads((out / f"shard-{rank}.json").read_text()) for rank in (0, 1)]
    assert all(s["world_size"] == 2 for s in shards)
    everything = sorted(map(tuple, shards[0]["all_rows"]))
    assert everything == sorted(map(tuple, shards[1]["all_rows"]))  # the same rows, in the same order
    seen = [list(map(tuple, s["rows"])) for s in shards]
    n = len(everything)
    # accelerate evens out the last batch by repeating the first rows of the epoch: only those may repeat
    assert len(seen[0]) == len(seen[1]) == -(-n // 2)
    together = seen[0] + seen[1]
    assert set(together) == set(everything)
    assert len(together) - len(set(together)) == len(together) - n


@pytest.mark.parametrize("layout", ["root", "split-root", "split-tail"])
def test_fsdp2_loss_and_gradients_match_one_process(tmp_path, layout):
    """FSDP2 itself runs over gloo: with the model split by `fully_shard` on 2 processes, sftune's loss (SFT and
    DPO's per-token log-probs) and every gradient equal those of the unsplit model over both batches (fp32: 1e-5
    relative to the largest). Where FSDP leaves the head split after the forward, the loss gathers it and stays
    chunked: the head's own forward runs on zero rows only (never all fp32 logits at once)."""
    result = subprocess.run(
        [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
         str(free_port()), str(WORKER.with_name("fsdp2_worker.py")), str(tmp_path), layout],
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO / 'src'}:{REPO}"},
        capture_output=True, text=True, timeout=180, cwd=REPO)
    assert result.returncode == 0, result.stderr[-6000:]
    for rank in (0, 1):
        r = json.loads((tmp_path / f"fsdp2-{rank}.json").read_text())
        assert r["loss"] == pytest.approx(r["reference_loss"], rel=LOSS_RTOL)
        assert r["max_grad_difference"] <= 1e-5 * r["max_grad"] and r["parameters"] > 10
        assert r["head_split_after_forward"] == [layout != "root"]
        assert r["head_forward_rows"] == [0]
