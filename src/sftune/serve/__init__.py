"""Inference on a run folder or a model: interactive chat (chat.py), batched generation over a data
file (batch.py) and the OpenAI-compatible server. All of them render prompts with the template the
run was trained with and stop at its end-of-turn token, through `sftune.runs` and `sftune.generation`.
"""
