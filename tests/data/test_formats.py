"""Every format: detected from its fields, converted with its exact meaning."""

from __future__ import annotations

import json

import pytest

from sftune.data import read


def roles_and_content(conversation) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in conversation.messages]


# (format name, record, expected messages) — detection and conversion in one table.
CASES = [
    (
        "alpaca",
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        [("user", "Add the numbers.\n\n2 and 3"), ("assistant", "5")],
    ),
    (
        "alpaca",
        {
            "instruction": "And now?",
            "input": "",
            "output": "Still 5.",
            "system": "You count.",
            "history": [["What is 2+3?", "5"], ["Sure?", "Yes."]],
        },
        [
            ("system", "You count."),
            ("user", "What is 2+3?"),
            ("assistant", "5"),
            ("user", "Sure?"),
            ("assistant", "Yes."),
            ("user", "And now?"),
            ("assistant", "Still 5."),
        ],
    ),
    (
        "sharegpt",
        {
            "conversations": [
                {"from": "human", "value": "Weather in Paris?"},
                {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
                {"from": "observation", "value": '{"temp": 21}'},
                {"from": "gpt", "value": "It is 21 degrees."},
            ],
            "system": "Use tools.",
            "tools": '[{"name": "weather", "parameters": {"type": "object"}}]',
        },
        [
            ("system", "Use tools."),
            ("user", "Weather in Paris?"),
            ("tool_call", '{"name": "weather", "arguments": {"city": "Paris"}}'),
            ("tool", '{"temp": 21}'),
            ("assistant", "It is 21 degrees."),
        ],
    ),
    (
        "openai",  # ShareGPT's role/content variant reads the same way
        {"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}]},
        [("user", "hi"), ("assistant", "hello!")],
    ),
    (
        "openai",
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Part one."}, {"type": "text", "text": "Part two."}]},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
                        {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "1"},
                {"role": "tool", "tool_call_id": "c2", "content": "2"},
                {"role": "assistant", "content": "Done."},
            ]
        },
        [
            ("system", "Be brief."),
            ("user", "Part one.\nPart two."),
            ("tool_call", json.dumps([{"name": "f", "arguments": {"x": 1}, "id": "c1"},
                                      {"name": "g", "arguments": {}, "id": "c2"}])),
            ("tool", "1"),
            ("tool", "2"),
            ("assistant", "Done."),
        ],
    ),
    ("prompt_completion", {"prompt": "2+2=", "completion": "4"}, [("user", "2+2="), ("assistant", "4")]),
    ("prompt_completion", {"prompt": "Hi", "response": "Hello"}, [("user", "Hi"), ("assistant", "Hello")]),
    ("prompt_completion", {"query": "Hi", "response": "Hello"}, [("user", "Hi"), ("assistant", "Hello")]),
    (
        "qa",
        {"question": "Who wrote it?", "answer": "Ada.", "context": "Ada wrote the note."},
        [("user", "Ada wrote the note.\n\nWho wrote it?"), ("assistant", "Ada.")],
    ),
    ("qa", {"question": "2+2?", "answer": "4"}, [("user", "2+2?"), ("assistant", "4")]),
    (
        "cot",
        {"problem": "3 apples, eat 1?", "reasoning_steps": ["Start with 3.", "Eat 1: 3 - 1 = 2."], "final_answer": "2"},
        [("user", "3 apples, eat 1?"), ("assistant", "Step 1: Start with 3.\nStep 2: Eat 1: 3 - 1 = 2.\n\nFinal answer: 2")],
    ),
    (
        "multitask",
        {"task_type": "translation", "source_lang": "en", "target_lang": "fr", "source_text": "Hello", "target_text": "Bonjour"},
        [("user", "Translate the following text from English to French.\n\nHello"), ("assistant", "Bonjour")],
    ),
    (
        "firefly",
        {"conversation": [{"input": "hi", "output": "hello"}, {"input": "bye", "output": "goodbye"}], "category": "chat"},
        [("user", "hi"), ("assistant", "hello"), ("user", "bye"), ("assistant", "goodbye")],
    ),
    ("text", {"text": "Once upon a time."}, [("assistant", "Once upon a time.")]),
]


@pytest.mark.parametrize("expected_format, record, expected", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_format_detected_and_converted(jsonl, expected_format, record, expected):
    path = jsonl([record])
    (conversation,) = read(path)
    assert conversation.meta["format"] == expected_format
    assert roles_and_content(conversation) == expected
    assert conversation.meta["source"] == str(path) and conversation.meta["line"] == 1


def test_forced_format_matches_detection(jsonl):
    path = jsonl([{"question": "q?", "answer": "a"}])
    assert roles_and_content(next(read(path, format="qa"))) == roles_and_content(next(read(path)))


def test_sharegpt_tools_parsed_from_json_text(jsonl):
    tools = [{"name": "weather", "parameters": {"type": "object"}}]
    record = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "tools": json.dumps(tools)}
    assert next(read(jsonl([record]))).tools == tools


def test_openai_weight_zero_is_not_trained(jsonl):
    record = {
        "messages": [
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "bad answer", "weight": 0},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "good answer", "weight": 1},
        ]
    }
    messages = next(read(jsonl([record]))).messages
    assert (messages[1].train, messages[1].weight) == (False, 0.0)
    assert (messages[3].train, messages[3].weight) == (None, 1.0)


def test_openai_assistant_text_and_tool_call_become_two_messages(jsonl):
    call = {"type": "function", "function": {"name": "lookup", "arguments": {"q": "x"}}}
    record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "Let me look.", "tool_calls": [call]},
                           {"role": "tool", "content": "found"}, {"role": "assistant", "content": "It is found."}]}
    conversation = next(read(jsonl([record])))
    assert roles_and_content(conversation)[1:3] == [
        ("assistant", "Let me look."),
        ("tool_call", '{"name": "lookup", "arguments": {"q": "x"}}'),
    ]


def test_text_is_pretraining_with_every_token_trained(jsonl):
    conversation = next(read(jsonl([{"text": "Plain prose."}])))
    assert conversation.meta["pretrain"] is True
    assert conversation.messages[0].train is True


def test_txt_file_is_one_document_per_line(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("First document.\n\nSecond document.\n", encoding="utf-8")
    conversations = list(read(path))
    assert [c.messages[0].content for c in conversations] == ["First document.", "Second document."]
    assert [c.meta["line"] for c in conversations] == [1, 3]


@pytest.mark.parametrize(
    "layout, expected",
    [
        ("think", "<think>\nA.\nB.\n</think>\n\n42"),
        ("Reasoning: {reasoning} | Answer: {answer}", "Reasoning: A.\nB. | Answer: 42"),
    ],
)
def test_cot_layout_is_configurable(jsonl, layout, expected):
    path = jsonl([{"problem": "p", "reasoning_steps": ["A.", "B."], "final_answer": "42"}])
    assert next(read(path, cot_layout=layout)).messages[-1].content == expected


def test_multitask_template_override_and_unknown_task(jsonl):
    record = {"task_type": "summarization", "source_lang": "en", "target_lang": "en", "source_text": "Long.", "target_text": "Short."}
    path = jsonl([record, {**record, "task_type": "grading"}])
    custom = {"summarization": "TL;DR in {target_lang}:"}
    first, second = read(path, task_templates=custom)
    assert first.messages[0].content == "TL;DR in English:\n\nLong."
    assert second.messages[0].content == (
        "Task: grading. Source language: English. Target language: English.\n\nLong."
    )


def test_dialog_maps_speakers_merges_runs_and_keeps_turn_metadata(jsonl):
    record = {
        "dialog_id": "d1",
        "turns": [
            {"speaker": "customer", "utterance": "My order is late.", "timestamp": "10:00"},
            {"speaker": "agent", "utterance": "Sorry to hear that.", "timestamp": "10:01"},
            {"speaker": "agent", "utterance": "It ships today.", "timestamp": "10:01", "action": "check_order"},
            {"speaker": "customer", "utterance": "Thanks!", "timestamp": "10:02"},
            {"speaker": "agent", "utterance": "You're welcome.", "timestamp": "10:03"},
        ],
    }
    conversation = next(read(jsonl([record]), roles={"customer": "user", "agent": "assistant"}))
    assert roles_and_content(conversation) == [
        ("user", "My order is late."),
        ("assistant", "Sorry to hear that.\nIt ships today."),
        ("user", "Thanks!"),
        ("assistant", "You're welcome."),
    ]
    assert conversation.meta["turns"][2] == {"timestamp": "10:01", "action": "check_order"}
    assert conversation.meta["extra"] == {"dialog_id": "d1"}


def test_column_mapping_with_nested_paths(jsonl):
    record = {"query": "Capital of France?", "meta": {"answers": [{"text": "Paris"}]}}
    columns = {"instruction": "query", "output": "meta.answers[0].text"}
    conversation = next(read(jsonl([record]), columns=columns))
    assert conversation.meta["format"] == "alpaca"
    assert roles_and_content(conversation) == [("user", "Capital of France?"), ("assistant", "Paris")]


def test_unread_fields_are_kept_in_meta(jsonl):
    path = jsonl([{"instruction": "i", "output": "o", "id": 7, "annotations": {"ann1": "good"}}])
    assert next(read(path, dataset_name="mine")).meta == {
        "dataset": "mine",
        "source": str(path),
        "format": "alpaca",
        "line": 1,
        "extra": {"id": 7, "annotations": {"ann1": "good"}},
    }


def test_llamafactory_v1_parts_reasoning_tool_call_and_loss_weight(jsonl):
    """LLaMA-Factory v1 messages: parts spelled {"type", "value"}, reasoning and tool_call parts, loss_weight."""
    record = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "value": "Film?"}], "loss_weight": 0.0},
            {"role": "assistant", "content": [{"type": "reasoning", "value": "Look it up."},
                                              {"type": "tool_call", "value": '{"name": "film", "arguments": {"t": "x"}}'}]},
            {"role": "tool", "content": [{"type": "text", "value": "found"}]},
            {"role": "assistant", "content": [{"type": "reasoning", "value": "Got it."}, {"type": "text", "value": "It is x."}],
             "loss_weight": 1.0},
        ]
    }
    conversation = next(read(jsonl([record])))
    assert roles_and_content(conversation) == [
        ("user", "Film?"),
        ("assistant", "<think>\nLook it up.\n</think>"),
        ("tool_call", '{"name": "film", "arguments": {"t": "x"}}'),
        ("tool", "found"),
        ("assistant", "<think>\nGot it.\n</think>\n\nIt is x."),
    ]
    assert (conversation.messages[0].train, conversation.messages[0].weight) == (False, 0.0)
    assert conversation.messages[-1].weight == 1.0


def test_preference_pairs_are_refused_with_the_way_out(jsonl):
    from sftune.data import DataError

    record = {"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "good"},
              "rejected": {"from": "gpt", "value": "bad"}}
    with pytest.raises(DataError, match=r"is preference data \(chosen / rejected\), not SFT data"):
        list(read(jsonl([record])))
