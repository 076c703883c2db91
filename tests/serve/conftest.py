"""The tiny LoRA run of tests/export, shared by the chat and generate tests."""

from tests.export.conftest import lora_run  # noqa: F401
