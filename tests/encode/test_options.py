"""EncodeOptions: one frozen value, saved and read back; a file it cannot read fully is an error naming it."""

from __future__ import annotations

import json

import pytest

from sftune.config import DataSection
from sftune.encode import EncodeOptions
from sftune.encode import options as encode_options


def test_options_round_trip_through_the_run_folder(tmp_path):
    chosen = EncodeOptions.from_data(DataSection(policy="last", reasoning="think_last_turn", train_empty_think=True,
                                                 split_reasoning_turns=False, max_len=64, max_turns=9))
    chosen.save(tmp_path)
    assert encode_options.for_run(tmp_path, DataSection()) == chosen
    assert encode_options.for_run(tmp_path / "elsewhere", DataSection(max_len=32)) == EncodeOptions(max_len=32)


@pytest.mark.parametrize("values, message", [
    ({"policy": "assistant", "think_budget": 3}, "unknown encoding option\\(s\\) think_budget"),
    ({"policy": "prompt"}, "unknown masking policy 'prompt'"),
    ({"reasoning": "think_only"}, "unknown reasoning option 'think_only'"),
])
def test_a_saved_file_with_an_unknown_field_or_value_is_an_error_naming_it(tmp_path, values, message):
    path = tmp_path / encode_options.FILE
    path.write_text(json.dumps(values))
    with pytest.raises(ValueError, match=message) as err:
        encode_options.for_run(tmp_path, DataSection())
    assert str(path) in str(err.value)
