"""Shared fixtures: tiny random models built from configs, and the real embedded tokenizer."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

TINY_ARCHITECTURES = ("llama", "qwen2", "gemma")


def tiny_config(arch: str, vocab_size: int = 49152, **overrides):
    """A few-layer random model of the given family; small enough to run in milliseconds."""
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    common.update(overrides)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "gemma":
        return Gemma3TextConfig(head_dim=16, sliding_window=64, **common)
    raise ValueError(f"unknown tiny architecture {arch!r}; pick one of {TINY_ARCHITECTURES}")


def tiny_model(arch: str, vocab_size: int = 49152, seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(arch, vocab_size, **overrides)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa").eval()


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The real SmolLM2 tokenizer (ChatML, pad == eos), from the embedded model's cache folder."""
    from sftune import models

    _, tokenizer = models.load(models.DEFAULT_MODEL, tokenizer_only=True)
    return tokenizer


@pytest.fixture(params=TINY_ARCHITECTURES)
def tiny_arch(request) -> str:
    return request.param


@pytest.fixture
def tiny_checkpoint(tmp_path, smollm2_tokenizer):
    """A tiny random llama with the real SmolLM2 tokenizer, saved as a checkpoint folder (a run's model.name)."""
    folder = tmp_path / "tiny-model"
    tiny_model("llama", vocab_size=len(smollm2_tokenizer)).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


def _process_state() -> dict:
    """What a test can leave behind that slows or changes every later test in the same process: a bf16
    default dtype turns later fp32 work into emulated bf16 on CPUs without bf16 units (~60x slower matmuls),
    a lowered thread count halves everything after it, and a live thread spinning on Python code makes the
    main thread wait for the GIL after every torch op."""
    return {
        "default dtype": torch.get_default_dtype(),
        "torch threads": torch.get_num_threads(),
        "cpu autocast": torch.is_autocast_enabled("cpu"),
        "grad enabled": torch.is_grad_enabled(),
        "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
        "anomaly detection": torch.is_anomaly_enabled(),
    }


# huggingface_hub sends telemetry from a thread (TRL's trainers call it); nothing here may reach a hub.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Where an idle thread's innermost Python frame is (a ThreadPoolExecutor worker blocks in SimpleQueue.get, a C
# call, so its own loop is the innermost frame then).
WAITING = {("threading.py", "wait"), ("queue.py", "get"), ("selectors.py", "select"),
           ("threading.py", "_wait_for_tstate_lock"), ("thread.py", "_worker")}


def _busy_new_threads(before: set[threading.Thread]) -> list[str]:
    """Threads started since `before` that run Python code now. A pool's idle worker (anyio's, inductor's
    compile pool, tqdm's monitor) waits on a lock or a queue and costs nothing; one that computes takes the
    GIL from every test after it."""
    import sys

    frames = sys._current_frames()
    busy = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident)
        if thread in before or frame is None or not thread.is_alive():
            continue
        if (os.path.basename(frame.f_code.co_filename), frame.f_code.co_name) not in WAITING:
            busy.append(thread)
    return busy


def _adopt_orphans() -> None:
    """Make this process the child subreaper (Linux): a process that a test's child leaves behind when it is
    killed (a benchmark's workers after a timeout) becomes this process's child, so the check below sees it."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


_adopt_orphans()


def _live_children() -> dict[int, str]:
    """Descendant processes still running (zombies are reaped here: adopted orphans are nobody else's to wait)."""
    import psutil

    alive = {}
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
                continue
            alive[child.pid] = " ".join(child.cmdline())[:200] or child.name()
        except (psutil.NoSuchProcess, ChildProcessError):
            pass
    return alive


def _stop(pids: list[int]) -> None:
    import psutil

    for pid in pids:
        try:
            psutil.Process(pid).kill()
            os.waitpid(pid, 0)
        except (psutil.NoSuchProcess, ChildProcessError):
            pass


@pytest.fixture(autouse=True)
def _leaves_the_process_as_it_found_it(request):
    """Fails a test that changes torch's process-wide state, or leaves a thread of its own running: the cause
    of a later test running many times slower in the suite than alone (SFTUNE_TEST_STATE=report: print only)."""
    state, threads, children = _process_state(), set(threading.enumerate()), _live_children()
    yield
    left_running = {pid: command for pid, command in _live_children().items() if pid not in children}
    if left_running:  # a process that is exiting gets a moment
        for _ in range(20):
            time.sleep(0.1)
            left_running = {pid: c for pid, c in _live_children().items() if pid in left_running}
            if not left_running:
                break
        _stop(list(left_running))  # one offender must not slow every later test (two busy OpenMP pools on
        # the same cores spin against each other: many times slower, not two)
    changed = {k: (v, after) for (k, v), after in zip(state.items(), _process_state().values()) if v != after}
    for thread in _busy_new_threads(threads):  # threads that are ending (a server joining) get a moment
        thread.join(timeout=2)
    left = [f"{t.name} ({type(t).__name__})" for t in _busy_new_threads(threads)]
    problems = [f"{k}: {a} before, {b} after" for k, (a, b) in changed.items()]
    problems += [f"thread still running: {name}" for name in sorted(left)]
    problems += [f"process still running (killed now): {command}" for command in left_running.values()]
    if not problems:
        return
    message = f"{request.node.nodeid} left the test process changed: " + "; ".join(problems)
    for k, (before, _) in changed.items():  # put it back so that one offender does not slow every later test
        {"default dtype": torch.set_default_dtype, "torch threads": torch.set_num_threads,
         "grad enabled": torch.set_grad_enabled, "deterministic algorithms": torch.use_deterministic_algorithms,
         "anomaly detection": torch.autograd.set_detect_anomaly}.get(k, lambda _: None)(before)
    if os.environ.get("SFTUNE_TEST_STATE") == "report":
        with open(os.environ.get("SFTUNE_TEST_STATE_LOG", "test-state.log"), "a", encoding="utf-8") as log:
            log.write(message + "\n")
        return
    pytest.fail(message, pytrace=False)
