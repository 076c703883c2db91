"""sftune data check on preference data: pairs are counted valid / invalid with the pair reasons
(identical_answers, prompt_mismatch, not_a_pair), detected from the files or asked for with --preference."""

from __future__ import annotations

import json

from tests.data.test_cli_data import invoke

PAIR = {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}
SAME = {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "Hi!"}
MISMATCH = {"chosen": [{"role": "user", "content": "A?"}, {"role": "assistant", "content": "x"}],
            "rejected": [{"role": "user", "content": "B?"}, {"role": "assistant", "content": "y"}]}
SFT = {"instruction": "Say hi.", "output": "Hi!"}


def test_pairs_are_detected_and_checked_with_the_pair_reasons(jsonl):
    path = jsonl([PAIR, SAME, MISMATCH, SFT, PAIR])
    result = invoke("check", path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["preference"] is True
    assert (report["total"], report["valid"], report["invalid"]) == (5, 2, 3)
    assert report["reasons"] == {"identical_answers": 1, "prompt_mismatch": 1, "not_a_pair": 1}
    assert "line 2" in report["examples"]["identical_answers"]
    assert "line 4" in report["examples"]["not_a_pair"]


def test_human_report_counts_pairs(jsonl):
    result = invoke("check", jsonl([PAIR, SAME]))
    assert result.exit_code == 0, result.output
    assert "checking them as preference data" in result.output
    assert "pairs: 2   valid: 1   invalid: 1" in result.output and "identical_answers" in result.output


def test_sft_files_stay_sft_and_the_choice_can_be_forced(jsonl, tmp_path):
    sft = jsonl([SFT, SFT], "sft.jsonl")
    report = json.loads(invoke("check", sft, "--json").stdout)
    assert report["preference"] is False and report["valid"] == 2
    # --preference on SFT records: every one is not_a_pair
    report = json.loads(invoke("check", sft, "--json", "--preference").stdout)
    assert report["reasons"] == {"not_a_pair": 2}
    # --sft on pairs: refused as SFT data, as training an SFT run on them would
    pairs = jsonl([PAIR], "pairs.jsonl")
    report = json.loads(invoke("check", pairs, "--json", "--sft").stdout)
    assert report["preference"] is False and report["reasons"] == {"unsupported": 1}


def test_a_folder_mixing_pairs_and_sft_is_not_switched(jsonl, tmp_path):
    jsonl([PAIR], "pairs.jsonl")
    jsonl([SFT], "sft.jsonl")
    report = json.loads(invoke("check", tmp_path, "--json").stdout)
    assert report["preference"] is False and report["reasons"] == {"unsupported": 1} and report["valid"] == 1


def test_format_preference_checks_pairs(jsonl):
    report = json.loads(invoke("check", jsonl([PAIR, SAME]), "--json", "--format", "preference").stdout)
    assert report["preference"] is True and report["reasons"] == {"identical_answers": 1}


def test_strict_fails_on_an_invalid_pair(jsonl):
    assert invoke("check", jsonl([PAIR]), "--strict").exit_code == 0
    assert invoke("check", jsonl([PAIR, SAME], "bad.jsonl"), "--strict").exit_code == 1


def test_reasoning_checks_are_refused_on_pairs(jsonl):
    result = invoke("check", jsonl([PAIR]), "--reasoning")
    assert result.exit_code == 2 and "--reasoning and --tools check SFT conversations" in result.output


def test_dedup_reads_pairs_as_pairs_and_compares_prompt_chosen_and_rejected(jsonl, tmp_path):
    other_rejected = {**PAIR, "rejected": "Go away."}
    moved = {"prompt": "Say hi. Hi!", "chosen": "No.", "rejected": "Hi!"}  # the same words, in other parts
    path = jsonl([PAIR, {**PAIR, "prompt": "  say HI. "}, other_rejected, moved, SAME])
    out, removed = tmp_path / "out" / "kept.jsonl", tmp_path / "out" / "removed.jsonl"
    result = invoke("dedup", path, "-o", out, "--removed", removed, "--exact-only")
    assert result.exit_code == 0, result.output
    said = result.output.replace("\n", "")
    assert "pairs: 5   valid: 4   invalid: 1" in said and "kept 3 preference pairs; removed 1 exact" in said
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["meta"]["line"], r["rejected"][0]["content"]) for r in kept] == [(1, "No."), (3, "Go away."), (4, "Hi!")]
    (duplicate,) = [json.loads(line) for line in removed.read_text().splitlines()]
    assert duplicate["of"].endswith("line 1") and duplicate["meta"]["line"] == 2
    again = json.loads(invoke("check", out, "--json").stdout)  # written as check and preference training read pairs
    assert again["preference"] is True and (again["valid"], again["invalid"]) == (3, 0)
    as_sft = invoke("dedup", path, "-o", tmp_path / "sft.jsonl", "--sft")
    assert as_sft.exit_code == 0 and "unsupported" in as_sft.output and "kept 0 conversations" in as_sft.output
