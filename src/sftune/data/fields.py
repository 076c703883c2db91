"""Reading one field of a data record: each failure is a DataError that names the field and the fix.
Shared by the SFT formats (formats.py) and the preference layouts (pairs.py)."""

from __future__ import annotations

import json
import math
from typing import Any

from sftune.data.errors import DataError
from sftune.data.schema import Message


def missing_field(field: str, fix: str) -> DataError:
    return DataError("missing_field", field, "is missing", fix)


def wrong_type(field: str, value: Any, expected: str, fix: str = "") -> DataError:
    got = "null" if value is None else type(value).__name__
    article = "" if value is None else "an " if got[0] in "aeiou" else "a "
    return DataError("wrong_type", field, f"is {article}{got}, expected {expected}", fix or f"make {field} {expected}")


def text_field(value: Any, field: str) -> str:
    """A text field: a string. A number is refused too: training on 42 where "42" was meant (or on
    a NaN a spreadsheet left) would teach the model text that no file held."""
    if type(value) is str:
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError("bad_value", field, f"is {value!r}, not text",
                        f"write {field} as text; NaN usually marks an empty cell: fill it or drop the record")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise wrong_type(field, value, "a string", f'write {field} as text in quotes, e.g. "{value}" '
                          "(a JSON number is not text)")
    raise wrong_type(field, value, "a string")


def required_text(record: dict, field: str, fix: str = "") -> str:
    value = record.get(field)
    if value is None:
        raise missing_field(field, fix or f"add a {field!r} field")
    return text_field(value, field)


def optional_text(record: dict, field: str) -> str | None:
    """An optional text field: absent, null and "" all mean absent."""
    value = record.get(field)
    if value is None or value == "":
        return None
    return text_field(value, field)


def list_field(record: dict, field: str, fix: str, required: bool = True) -> list | None:
    """A list field; a string holding a JSON list (CSV cells, LLaMA-Factory tools) is parsed."""
    value = record.get(field)
    if value is None or value == "":
        if required:
            raise missing_field(field, fix)
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise wrong_type(field, value, "a list", fix) from None
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise wrong_type(field, value, "a list", fix)
    return value


def system_messages(record: dict) -> list[Message]:
    system = optional_text(record, "system")
    return [Message("system", system)] if system else []


def tool_schemas(record: dict) -> list[dict] | None:
    """Function schemas: a list of objects, or that list as JSON text (ShareGPT, LLaMA-Factory)."""
    tools = list_field(record, "tools", "give tools as a list of function schemas", required=False)
    if tools is None:
        return None
    if isinstance(tools, dict):
        tools = [tools]
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise wrong_type(f"tools[{i}]", tool, "an object (a function schema)")
    return tools or None
