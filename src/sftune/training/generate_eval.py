"""Generation metrics at each evaluation: answer part of the validation split and score the answers.

`eval.generate_metrics: [bleu, rouge, exact_match]` adds eval_bleu, eval_rouge1 / 2 / L, eval_exact_match
(and eval_token_f1) to every evaluation, next to the held-out loss: the first `eval.generate_max_examples`
validation conversations, their last assistant turn generated in batches (sftune.generation, the run's
template and stop tokens) and scored by sftune.evaluate.metrics. `eval.keep_best` may then pick the
checkpoint by one of them.
"""

from __future__ import annotations

from typing import Any

# Each metric of eval.generate_metrics and the numbers it logs (as eval_<name>).
LOGGED = {"bleu": ["bleu"], "rouge": ["rouge1", "rouge2", "rougeL"], "exact_match": ["exact_match"],
          "token_f1": ["token_f1"]}


def generation_metrics(model: Any, tokenizer: Any, template: Any, conversations: list, names: list[str], *,
                       max_new_tokens: int, batch_size: int = 16) -> dict[str, float]:
    """{logged name: score} of the answers `model` generates to `conversations` (BLEU 0-100, others 0-1)."""
    from sftune import generation
    from sftune.evaluate import metrics
    from sftune.evaluate.data_task import split_conversation

    splits = [(c.tools, split) for c in conversations if (split := split_conversation(c)) is not None]
    if not splits:
        return {}
    # A tool conversation is asked with its tools, as training rendered it (and as `sftune eval` asks it).
    prompts = [template.render(messages, tools, add_generation_prompt=True) for tools, (messages, _) in splits]
    references = [reference for _, (_, reference) in splits]
    completions = generation.generate(model, tokenizer, prompts,
                                      generation.GenerationOptions(max_new_tokens=max_new_tokens),
                                      stop_token_ids=template.stop_token_ids(tokenizer), batch_size=batch_size)
    answers = [c.text.strip() for c in completions]
    scores: dict[str, float] = {}
    if "bleu" in names:
        scores["bleu"] = metrics.bleu(answers, references)
    if "rouge" in names:
        scores.update(metrics.rouge(answers, references))
    if "exact_match" in names:
        scores["exact_match"] = metrics.exact_match(answers, references)
    if "token_f1" in names:
        scores["token_f1"] = metrics.token_f1(answers, references)
    return scores
