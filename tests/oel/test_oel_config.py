"""The ``oel:`` section, validated in one place: keys from the dataclasses, problems named by full key."""

from __future__ import annotations

import pytest

from verl_oel.oel.config import OELConfig, OELConfigError, parse_oel_section

LOOP = {"rounds": 2, "game": "frozenlake"}


def test_an_unknown_extraction_key_is_named_in_full_with_the_valid_ones():
    with pytest.raises(
        OELConfigError, match=r"oel\.extraction\.num_streamz: unknown key; known: \[.*'num_streams'"
    ):
        OELConfig.from_mapping({**LOOP, "extraction": {"num_streamz": 2}})


def test_every_extraction_field_the_loop_does_not_set_is_a_key():
    loop = OELConfig.from_mapping({**LOOP, "extraction": {"concurrent": False, "marker": "Rule:"}})
    assert (loop.extraction.concurrent, loop.extraction.marker) == (False, "Rule:")
    with pytest.raises(OELConfigError, match=r"oel\.extraction\.base_seed: unknown key"):
        OELConfig.from_mapping({**LOOP, "extraction": {"base_seed": 3}})


def test_a_bad_extraction_value_is_named_in_full():
    with pytest.raises(OELConfigError, match=r"oel\.extraction\.num_streams=0 must be a positive integer"):
        OELConfig.from_mapping({**LOOP, "extraction": {"num_streams": 0}})
    # Each length and count, read before any work (a negative budget once reached the dry run's sums).
    for key, value, expected in [
        ("budget_tokens", -5, "a positive integer"),
        ("max_item_tokens", 0, "a positive integer"),
        ("max_turn_tokens", 0, "a positive integer or null"),
        ("in_context_games", -1, "a non-negative integer"),
        ("games_per_stream", True, "a positive integer"),
    ]:
        with pytest.raises(OELConfigError, match=rf"oel\.extraction\.{key}={value!r} must be {expected}$"):
            OELConfig.from_mapping({**LOOP, "extraction": {key: value}})
    assert OELConfig.from_mapping({**LOOP, "extraction": {"max_turn_tokens": None, "in_context_games": 0}})
    with pytest.raises(
        OELConfigError, match=r"oel\.extraction\.cut_after=9 must be between 1 and oel\.extraction"
    ):
        OELConfig.from_mapping({**LOOP, "extraction": {"games_per_stream": 4, "cut_after": 9}})


def test_both_modes_are_read_and_another_is_named():
    assert [OELConfig.from_mapping({**LOOP, "mode": mode}).mode for mode in ("replay", "online")] == [
        "replay",
        "online",
    ]
    with pytest.raises(OELConfigError, match=r"oel\.mode='offline'; expected one of \['replay', 'online'\]"):
        OELConfig.from_mapping({**LOOP, "mode": "offline"})


def test_required_keys_and_unknown_subsection_keys_are_named():
    with pytest.raises(OELConfigError, match=r"oel\.game is required"):
        OELConfig.from_mapping({"rounds": 1})
    with pytest.raises(
        OELConfigError, match=r"oel\.evaluation\.gamez: unknown key; known: \['games', 'seed'"
    ):
        OELConfig.from_mapping({**LOOP, "evaluation": {"gamez": 3}})


def test_the_whole_section_is_parsed_once_and_a_typo_named_once():
    consolidation, loop = parse_oel_section({**LOOP, "k": 8})
    assert (consolidation.k, loop.rounds) == (8, 2)
    consolidation, loop = parse_oel_section({"k": 8})
    assert (consolidation.k, loop) == (8, None)
    with pytest.raises(OELConfigError) as error:
        parse_oel_section({**LOOP, "kk": 8, "loss": "nope"})
    assert str(error.value).count("oel.kk") == 1 and "oel.loss='nope'" in str(error.value)


def test_game_generation_workers_default_to_the_cores_and_a_bad_count_is_named(monkeypatch):
    from verl_oel.envs import game_generation

    monkeypatch.setattr(game_generation.os, "sched_getaffinity", lambda pid: set(range(3)), raising=False)
    assert OELConfig.from_mapping(LOOP).generation_workers == 3
    monkeypatch.setattr(game_generation.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert OELConfig.from_mapping(LOOP).generation_workers == 8
    assert OELConfig.from_mapping({**LOOP, "game_generation_workers": 0}).generation_workers == 0
    assert OELConfig.from_mapping({**LOOP, "game_generation_workers": 12}).generation_workers == 12
    for bad in (-1, 2.5, True, "4"):
        with pytest.raises(OELConfigError, match=r"oel\.game_generation_workers=.* must be an integer >= 0"):
            OELConfig.from_mapping({**LOOP, "game_generation_workers": bad})


OOD = [
    {"name": "river", "game": "hidden-rule", "game_settings": {"family": "river"}, "num_games": 8},
    {"name": "lake", "game": "frozenlake"},
]


def test_ood_games_are_read_with_their_defaults():
    loop = OELConfig.from_mapping({**LOOP, "ood": {"games": OOD}})
    river, lake = loop.ood.games
    assert (river.name, river.game, river.game_settings, river.num_games) == (
        "river",
        "hidden-rule",
        {"family": "river"},
        8,
    )
    assert (lake.game_settings, lake.num_games, lake.seed) == ({}, 32, 0)
    assert OELConfig.from_mapping(LOOP).ood.games == ()


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"game": "frozenlake"}], r"oel\.ood\.games\[0\]\.name is required"),
        ([OOD[1], {"name": "x", "gam": "frozenlake"}], r"oel\.ood\.games\[1\]\.gam: unknown key"),
        ([OOD[1], OOD[1]], r"oel\.ood\.games\[1\]\.name='lake' is an earlier entry's"),
        ([{**OOD[1], "num_games": 0}], r"oel\.ood\.games\[0\]\.num_games=0 must be a positive integer"),
        ([{**OOD[1], "seed": "0"}], r"oel\.ood\.games\[0\]\.seed='0' must be an integer"),
        ([{"name": "x", "game": "chess"}], r"oel\.ood\.games\[0\]\.game='chess': unknown game"),
        ([{**OOD[0], "game_settings": {"family": "sea"}}], r"oel\.ood\.games\[0\]\.game_settings: family"),
        ("river", r"oel\.ood\.games='river' must be a list"),
        (["river"], r"oel\.ood\.games\[0\]='river' must be a mapping"),
    ],
)
def test_a_bad_ood_entry_is_named_by_its_index_before_anything_runs(entries, message):
    with pytest.raises(OELConfigError, match=message):
        OELConfig.from_mapping({**LOOP, "ood": {"games": entries}})


def test_an_unknown_ood_key_is_named():
    known = r"\['games', 'ifbench_max_tokens', 'ifbench_prompts'\]"
    with pytest.raises(OELConfigError, match=rf"oel\.ood\.gamez: unknown key; known: {known}"):
        OELConfig.from_mapping({**LOOP, "ood": {"gamez": OOD}})


def test_ifbench_is_off_unless_asked_and_takes_a_count_or_all():
    assert not OELConfig.from_mapping(LOOP).ood.ifbench
    assert not OELConfig.from_mapping({**LOOP, "ood": {"ifbench_prompts": 0}}).ood.ifbench
    for count in (5, "all"):
        ood = OELConfig.from_mapping(
            {**LOOP, "ood": {"ifbench_prompts": count, "ifbench_max_tokens": 64}}
        ).ood
        assert (ood.ifbench, ood.ifbench_prompts, ood.ifbench_max_tokens) == (True, count, 64)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"ifbench_prompts": -1}, r"oel\.ood\.ifbench_prompts=-1 must be 0 \(off\), a positive number"),
        ({"ifbench_prompts": "some"}, r"oel\.ood\.ifbench_prompts='some' must be 0 \(off\)"),
        ({"ifbench_prompts": True}, r"oel\.ood\.ifbench_prompts=True must be 0 \(off\)"),
        (
            {"ifbench_prompts": 100_000},
            r"oel\.ood\.ifbench_prompts=100000: only \d+ IFBench prompts can be checked",
        ),
        (
            {"ifbench_prompts": 4, "ifbench_max_tokens": 0},
            r"oel\.ood\.ifbench_max_tokens=0 must be a positive",
        ),
    ],
)
def test_a_bad_ifbench_setting_is_named_by_its_full_key(section, message):
    with pytest.raises(OELConfigError, match=message):
        OELConfig.from_mapping({**LOOP, "ood": section})
