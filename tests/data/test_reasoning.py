"""The reasoning checker finds each defect kind, at its file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftune.data import read
from sftune.data.reasoning import KINDS, check_reasoning, think_parts

FIXTURE = Path(__file__).parent.parent / "fixtures" / "data" / "reasoning_defects.jsonl"
# kind -> (line in the fixture, message index) of its one example there.
EXPECTED = {
    "empty_think": (2, 1),
    "unclosed_think": (3, 1),
    "think_not_first": (4, 1),
    "dropped_reasoning": (5, 1),
    "no_think_prefix": (6, 1),
    "answer_repeats_reasoning": (7, 1),
    "reasoning_without_answer": (8, 1),
}


@pytest.fixture(scope="module")
def result():
    return check_reasoning(list(read([str(FIXTURE)])))


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_each_defect_kind_is_found_at_its_line_and_field(result, kind):
    line, index = EXPECTED[kind]
    assert result["kinds"][kind]["count"] == 1
    assert result["kinds"][kind]["examples"] == [f"{FIXTURE}:{line} messages[{index}].content"]


def test_think_blocks_in_a_plain_template_and_lengths():
    conversations = list(read([str(FIXTURE)]))
    plain = check_reasoning(conversations, template_reasoning=None)
    # every reply with a think block (all but the unclosed one, which has none that parses)
    assert plain["kinds"]["think_in_plain_template"]["count"] == plain["replies_with_think"] == 8
    assert plain["kinds"]["dropped_reasoning"]["count"] == 0  # a plain template drops nothing
    qwen = check_reasoning(conversations)
    assert qwen["kinds"]["think_in_plain_template"]["count"] == 0
    assert set(qwen["kinds"]) == set(KINDS)
    assert qwen["replies"] == 9
    # Reasoning lengths of replies with non-empty reasoning: computed here from the fixture itself.
    lengths = []
    for c in conversations:
        for m in c.messages:
            reasoning, answer, _ = think_parts(m.content)
            if m.role == "assistant" and reasoning and reasoning.strip():
                lengths.append(len(reasoning.strip()))
    assert qwen["reasoning_chars"]["count"] == len(lengths) == 6
    assert qwen["reasoning_chars"]["max"] == max(lengths)


def test_clean_reasoning_data_has_no_defect():
    from sftune.data import Conversation, Message

    clean = [Conversation([Message("user", "2+2?"), Message("assistant", "<think>\nadd\n</think>\n\n4")],
                          meta={"source": "x.jsonl", "line": 1})]
    assert all(v["count"] == 0 for v in check_reasoning(clean)["kinds"].values())


def test_cli_data_check_reasoning_and_stats_report_the_kinds():
    import json

    from typer.testing import CliRunner

    from sftune.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["data", "check", str(FIXTURE), "--reasoning", "--json"])
    assert out.exit_code == 0, out.output
    found = json.loads(out.output.strip().splitlines()[-1])["reasoning"]
    assert {kind for kind, info in found["kinds"].items() if info["count"]} == set(EXPECTED)
    out = runner.invoke(app, ["data", "check", str(FIXTURE), "--reasoning", "-t", "chatml", "--json"])
    found = json.loads(out.output.strip().splitlines()[-1])["reasoning"]
    assert found["kinds"]["think_in_plain_template"]["count"] == 8
    out = runner.invoke(app, ["data", "check", str(FIXTURE), "--reasoning"])
    assert out.exit_code == 0 and "dropped_reasoning" in out.output
    out = runner.invoke(app, ["data", "stats", str(FIXTURE), "--json"])
    assert json.loads(out.output.strip().splitlines()[-1])["reasoning"]["kinds"]["unclosed_think"]["count"] == 1


def test_deepseek_r1_reasoning_is_dropped_from_every_reply_but_the_last_message(tmp_path):
    """A user turn that is a <tool_response> is no query for Qwen3, which keeps both blocks after it;
    DeepSeek-R1's template writes only the last message's; both templates drop line 6's first reply."""
    import json

    from typer.testing import CliRunner

    from sftune.cli import app

    data = tmp_path / "r1.jsonl"
    rows = [{"messages": [{"role": "user", "content": "plan"},
                          {"role": "assistant", "content": "<think>\nstep one\n</think>\n\nFirst."},
                          {"role": "user", "content": "<tool_response>\ndone\n</tool_response>"},
                          {"role": "assistant", "content": "<think>\nstep two\n</think>\n\nSecond."}]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows) + FIXTURE.read_text(), encoding="utf-8")
    conversations = list(read([str(data)]))
    qwen = check_reasoning(conversations)["kinds"]["dropped_reasoning"]
    r1 = check_reasoning(conversations, template_reasoning="deepseek_r1")["kinds"]["dropped_reasoning"]
    assert qwen["examples"] == [f"{data}:6 messages[1].content"]
    assert r1["examples"] == [f"{data}:1 messages[1].content", f"{data}:6 messages[1].content"]
    out = CliRunner().invoke(app, ["data", "check", str(data), "--reasoning", "-t", "deepseek_r1", "--json"])
    assert out.exit_code == 0, out.output
    found = json.loads(out.output.strip().splitlines()[-1])["reasoning"]
    assert found["template_reasoning"] == "deepseek_r1" and found["kinds"]["dropped_reasoning"]["count"] == 2
