"""Greedy generation through the tokenizer's chat template (the base for chat and serving)."""

from __future__ import annotations

import torch


@torch.no_grad()
def answer(model, tokenizer, question: str, *, system: str | None = None, max_new_tokens: int = 64) -> str:
    """Greedy answer to one user question, rendered with the tokenizer's own chat template."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}
    ]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(model.device)
    output = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
