"""Where a benchmark's local data lives and how its files are read.

Benchmarks that ship in no package (MMLU, C-Eval, CMMLU, GSM8K, TruthfulQA) are read from local files in
their public layouts. The folder is `options["data_dir"]` (`--data-dir`), else $SFTUNE_DATA/<benchmark>,
else ~/.cache/sftune/data/<benchmark> (under $SFTUNE_HOME when set).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from sftune.errors import UserError

# Where each dataset is published, and what the folder must hold once unpacked.
SOURCES = {
    "mmlu": ("https://people.eecs.berkeley.edu/~hendrycks/data.tar (github.com/hendrycks/test)",
             "data/dev/<subject>_dev.csv and data/test/<subject>_test.csv, no header row"),
    "ceval": ("https://huggingface.co/datasets/ceval/ceval-exam (ceval-exam.zip; github.com/hkust-nlp/ceval)",
              "dev/<subject>_dev.csv and val/<subject>_val.csv with the header id,question,A,B,C,D,answer"),
    "cmmlu": ("https://huggingface.co/datasets/haonan-li/cmmlu (cmmlu_v1_0_1.zip; github.com/haonan-li/CMMLU)",
              "dev/<subject>.csv and test/<subject>.csv with the header ,Question,A,B,C,D,Answer"),
    "gsm8k": ("https://github.com/openai/grade-school-math (grade_school_math/data; hub id openai/gsm8k)",
              "test.jsonl (and train.jsonl for the few-shot examples), one {question, answer} per line"),
    "truthfulqa": ("https://github.com/sylinrl/TruthfulQA (data/mc_task.json; hub id truthfulqa/truthful_qa)",
                   "mc_task.json: a list of {question, mc1_targets, mc2_targets}"),
}


class BenchmarkDataError(UserError, FileNotFoundError):
    """A benchmark's file is missing or malformed; the message names the file, its source and where it goes."""


def data_dir(benchmark: str, options: dict[str, Any] | None = None) -> Path:
    """The folder a benchmark's files are read from (see the module docstring for the order)."""
    options = options or {}
    if options.get("data_dir"):
        return Path(options["data_dir"]).expanduser()
    if os.environ.get("SFTUNE_DATA"):
        return Path(os.environ["SFTUNE_DATA"]).expanduser() / benchmark
    from sftune.models import sftune_home

    return sftune_home() / "data" / benchmark


def missing(benchmark: str, path: Path, folder: Path) -> BenchmarkDataError:
    """The error for a file that is not there: which file, where the data is published, where to put it."""
    url, layout = SOURCES[benchmark]
    return BenchmarkDataError(
        f"{benchmark}: {path} not found. The dataset is published at {url}. Download it and unpack it so that "
        f"{folder} holds {layout}; or point --data-dir (options['data_dir']) or $SFTUNE_DATA (which holds "
        f"<benchmark>/ folders) at where it already is.")


def need(benchmark: str, path: Path, folder: Path) -> Path:
    if not path.is_file():
        raise missing(benchmark, path, folder)
    return path


def read_csv(path: Path, *, header: bool) -> list[list[str]]:
    """The rows of a CSV file (the header row left out when the file has one)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [row for row in csv.reader(f) if row]
    return rows[1:] if header else rows


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise BenchmarkDataError(f"{path}:{number}: not valid JSON ({err.msg}); each line of this file must "
                                         "be one JSON object as in the published release.") from err
    return rows


def column_error(path: Path, row: int, expected: str) -> BenchmarkDataError:
    return BenchmarkDataError(f"{path}: row {row} does not have the columns {expected}; is this the file of the "
                              "public release, unchanged?")
