"""Pair -> two encoded sequences sharing the prompt: labels on the answer tokens only.

Each answer is encoded with the prompt before it through the same template and label code as SFT
(`sftune.encode.encode`), so the end-of-turn / EOS token after the answer is trained and the ids are
those of the whole rendered text. Prompt messages are context (train=False); in an answer, the model's
messages are trained and tool results between its calls are context.
"""

from __future__ import annotations

from typing import Any

from sftune.data.errors import where
from sftune.data.schema import MODEL_ROLES, Conversation, Message, Pair
from sftune.encode import IGNORE, EncodeReport, encode
from sftune.templates import Template


def answer_conversation(pair: Pair, answer: str) -> Conversation:
    """The prompt (not trained) followed by one answer (its model messages trained)."""
    prompt = [Message(m.role, m.content, False, m.weight) for m in pair.prompt]
    reply = [Message(m.role, m.content, m.role in MODEL_ROLES if m.train is None else m.train, m.weight)
             for m in (pair.chosen if answer == "chosen" else pair.rejected)]
    return Conversation(prompt + reply, pair.tools, pair.meta)


def encode_pair(pair: Pair, tokenizer: Any, template: Template, *, max_len: int | None = None
                ) -> dict[str, list] | None:
    """{chosen_input_ids, chosen_labels, rejected_input_ids, rejected_labels}; None when truncation to
    max_len leaves an answer without a trained token (the caller counts and reports it)."""
    out = {}
    for answer in ("chosen", "rejected"):
        encoded = encode(answer_conversation(pair, answer), tokenizer, template, policy="assistant", max_len=max_len)
        if encoded is None:
            return None
        out[f"{answer}_input_ids"] = encoded["input_ids"]
        out[f"{answer}_labels"] = encoded["labels"]
    return out


def encode_pairs(pairs: list[Pair], tokenizer: Any, template: Template, *, max_len: int | None = None,
                 progress: bool = False) -> tuple[Any, EncodeReport]:
    """Pairs -> a `datasets.Dataset` of encoded pairs (in order) and the report of what was left out."""
    import datasets
    from rich.progress import track

    report = EncodeReport(total=len(pairs))
    rows = []
    for index, pair in enumerate(track(pairs, description="encoding pairs", disable=not progress)):
        encoded = encode_pair(pair, tokenizer, template, max_len=max_len)
        if encoded is None:
            report.skip(where(pair.meta, f"record {index}"), "no_trained_token",
                        f"an answer has no token left after truncation to max_len={max_len}")
            continue
        rows.append(encoded)
        report.encoded += 1
        for answer in ("chosen", "rejected"):
            report.tokens += len(encoded[f"{answer}_input_ids"])
            report.trained_tokens += sum(label != IGNORE for label in encoded[f"{answer}_labels"])
    columns = {key: [row[key] for row in rows] for key in
               ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")}
    return datasets.Dataset.from_dict(columns), report
