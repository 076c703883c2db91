"""mix and split: the counts asked for, deterministic per seed, different across seeds."""

from __future__ import annotations

from collections import Counter

import pytest

from sftune.data import mix, split

SINGLE = [f"single-{i}" for i in range(600)]
MULTI = [f"multi-{i}" for i in range(100)]
DOMAIN = [f"domain-{i}" for i in range(50)]


def sources(examples):
    return Counter(example.split("-")[0] for example in examples)


def test_weights_multiply_dataset_sizes():
    mixed = mix([(SINGLE, 0.5), (MULTI, 2.0), (DOMAIN, 1.5)], seed=0)
    assert sources(mixed) == {"single": 300, "multi": 200, "domain": 75}
    assert Counter(x for x in mixed if x.startswith("multi")) == {x: 2 for x in MULTI}  # two whole copies
    assert len(set(x for x in mixed if x.startswith("single"))) == 300  # a sample without repeats


def test_ratios_give_target_shares_without_repeats_by_default():
    mixed = mix([(SINGLE, 0.6), (MULTI, 0.3), (DOMAIN, 0.1)], seed=0, by="ratio")
    # MULTI limits the size: 100 examples at 30% -> 333 in all, without repeating any example
    assert len(mixed) == 333 and len(set(mixed)) == 333
    assert sources(mixed) == {"single": 200, "multi": 100, "domain": 33}


def test_ratios_with_a_total_repeat_short_datasets():
    mixed = mix([(SINGLE, 0.6), (MULTI, 0.3), (DOMAIN, 0.1)], seed=0, by="ratio", total=1000)
    assert sources(mixed) == {"single": 600, "multi": 300, "domain": 100}


def test_mix_and_split_are_deterministic_per_seed():
    args = [(SINGLE, 0.3), (MULTI, 1.0)]
    assert mix(args, seed=1) == mix(args, seed=1)
    assert mix(args, seed=1) != mix(args, seed=2)
    assert split(SINGLE, val_ratio=0.1, seed=3) == split(SINGLE, val_ratio=0.1, seed=3)
    assert split(SINGLE, val_ratio=0.1, seed=3) != split(SINGLE, val_ratio=0.1, seed=4)


@pytest.mark.parametrize("kwargs, val_size", [({"val_ratio": 0.1}, 60), ({"val_count": 25}, 25), ({"val_ratio": 0.0}, 0)])
def test_split_sizes_and_disjointness(kwargs, val_size):
    train, val = split(SINGLE, seed=0, **kwargs)
    assert len(val) == val_size and len(train) == len(SINGLE) - val_size
    assert sorted(train + val) == sorted(SINGLE)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: split(SINGLE), "exactly one of val_ratio"),
        (lambda: split(SINGLE, val_ratio=1.5), "in \\[0, 1\\)"),
        (lambda: split(SINGLE, val_count=10_000), "there are 600 examples"),
        (lambda: mix([(SINGLE, -1)]), "use a number >= 0"),
        (lambda: mix([([], 1.0)]), "is empty"),
        (lambda: mix([(SINGLE, 1)], by="share"), "use 'weight'"),
    ],
)
def test_bad_arguments_say_what_to_do(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_read_mix_reads_config_entries_and_mixes_them(tmp_path):
    import json

    from sftune.data import Report, read_mix

    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"question": f"q{i}", "answer": "a"}) + "\n" for i in range(10)))
    (tmp_path / "b.csv").write_text("prompt,completion\n" + "".join(f"p{i},c{i}\n" for i in range(4)))
    report = Report()
    mixed = read_mix(
        [{"path": tmp_path / "a.jsonl", "weight": 0.5}, {"path": tmp_path / "b.csv", "format": "prompt_completion", "weight": 2}],
        seed=0,
        report=report,
    )
    assert Counter(c.meta["dataset"] for c in mixed) == {"a": 5, "b": 8}
    assert report.valid == 14
    with pytest.raises(ValueError, match="every dataset a ratio, or none"):
        read_mix([{"path": tmp_path / "a.jsonl", "ratio": 0.5}, {"path": tmp_path / "b.csv"}])
