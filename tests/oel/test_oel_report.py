"""The report reads at a glance, is rebuilt from disk alone, and shows unfinished rounds as such."""

import json
import struct
from dataclasses import replace

import pytest

from verl_oel.knowledge import DEFAULT_MARKER, KnowledgeStore, save_store
from verl_oel.oel import (
    ConsolidationSummary,
    EvalFormatError,
    InContextPoint,
    NextStage,
    OODResult,
    RoundEval,
    RunSpec,
    RunState,
    collect,
    load_round_eval,
    render_report,
    save_round_eval,
)

SPEC = RunSpec(
    base_model="/models/qwen3-4b-instruct",
    rounds=3,
    seed=0,
    config={"oel": {"loss": "topk_reverse_kl", "k": 256}, "actor_rollout_ref": {"model": {"dtype": "bf16"}}},
)

EVALS = {
    0: RoundEval(round=0, num_games=128, pass_rate_no_knowledge=0.075, tokens_per_turn=812.0),
    1: RoundEval(
        round=1,
        num_games=128,
        pass_rate_no_knowledge=0.214,
        tokens_per_turn=640.5,
        turns_per_game=4.25,
        response_tokens_per_game=2722.1,
        pass_rate_with_knowledge=0.182,
        tokens_per_turn_with_knowledge=700.0,
        turns_per_game_with_knowledge=3.0,
        response_tokens_per_game_with_knowledge=2100.0,
        knowledge_items=34,
        in_context_curve=(
            InContextPoint(games=0, pass_rate=0.075),
            InContextPoint(games=16, pass_rate=0.125),
        ),
        consolidation=ConsolidationSummary(kl_first=0.41, kl_last=0.11, steps=50),
    ),
    2: RoundEval(
        round=2,
        num_games=128,
        pass_rate_no_knowledge=0.27,
        tokens_per_turn=590.0,
        pass_rate_with_knowledge=0.25,
        knowledge_items=41,
        consolidation=ConsolidationSummary(kl_first=0.2, kl_last=0.05, steps=50),
    ),
}


def run_until(run_dir, stop: NextStage | None) -> None:
    """A run driven through its stages, with each evaluation saving its round's eval.json."""
    with RunState.open(run_dir, SPEC) as state:
        while (step := state.next_stage()) is not None and step != stop:
            if step.stage == "evaluation":
                save_round_eval(state.layout, EVALS[step.round])
            state.mark_done(*step, {"seconds": 90.0})


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_tables_every_round_with_its_numbers(tmp_path):
    run_dir = tmp_path / "run"
    run_until(run_dir, NextStage(3, "teacher_refresh"))
    # Round 3 is planned but never started.
    paths = render_report(run_dir)

    markdown = paths.markdown.read_text()
    assert "Base model `/models/qwen3-4b-instruct`, 3 rounds, seed 0, skipped stages: none." in markdown
    assert '- `oel.loss`: `"topk_reverse_kl"`' in markdown
    assert "dtype" not in markdown  # only the highlighted settings; run.json keeps the rest
    # Round 0 and 2 were written before turns and tokens per game were measured: "–".
    assert "| 0 (base) | done | 128 | 7.5% | – | 812.0 | – | – | – | – |" in markdown
    assert "| 1 | done | 128 | 21.4% | 18.2% | 640.5 | 4.2 | 2722.1 | 34 | 0.41 → 0.11 (50) |" in markdown
    assert "| 2 | done | 128 | 27.0% | 25.0% | 590.0 | – | – | 41 | 0.2 → 0.05 (50) |" in markdown
    assert "| 3 | not started | – | – | – | – | – | – | – | – |" in markdown
    assert "- round 1: 0 games 7.5%, 16 games 12.5%" in markdown
    assert (
        "| round | teacher_refresh | extraction | in_context | deployment | consolidation | evaluation | "
        "checkpoint |" in markdown
    )
    assert "| 0 | – | – | – | – | – | 1.5 | – |" in markdown  # stage minutes, in execution order
    assert "| 1 | 1.5 | 1.5 | 1.5 | 1.5 | 1.5 | 1.5 | 1.5 |" in markdown

    report = json.loads(paths.json.read_text())
    assert report == collect(run_dir)
    assert [entry["status"] for entry in report["rounds"]] == ["done", "done", "done", "not started"]
    assert report["rounds"][1]["eval"]["consolidation"] == {"kl_first": 0.41, "kl_last": 0.11, "steps": 50}

    width, height = png_size(paths.png.read_bytes())
    assert 800 <= width <= 1600 and 300 <= height <= 800
    assert paths.png.stat().st_size > 20_000  # two drawn panels, not an empty canvas
    assert "Out-of-domain" not in markdown  # the run measured none


def test_unfinished_and_unreadable_rounds_render_as_such(tmp_path):
    run_dir = tmp_path / "run"
    run_until(run_dir, NextStage(2, "consolidation"))
    (run_dir / "rounds/round_001/eval.json").write_text(
        json.dumps({**EVALS[1].to_json(), "pass_rate_no_knowlege": 0.2})
    )
    paths = render_report(run_dir)

    markdown = paths.markdown.read_text()
    assert "| 2 | in progress (consolidation) | – |" in markdown
    assert "| 1 | done | – |" in markdown
    assert "- round 1: " in markdown and "unknown field 'pass_rate_no_knowlege'" in markdown
    assert "| 3 | not started |" in markdown
    assert png_size(paths.png.read_bytes())[0] > 0


def test_a_run_without_any_evaluation_or_run_json_still_renders(tmp_path):
    (tmp_path / "run/rounds/round_001").mkdir(parents=True)
    paths = render_report(tmp_path / "run")
    assert "Settings unknown: run.json is missing." in paths.markdown.read_text()
    assert "| 1 | unknown (no run.json) |" in paths.markdown.read_text()
    assert png_size(paths.png.read_bytes())[0] > 0


def test_eval_json_round_trips_and_bad_fields_are_named(tmp_path):
    with RunState.open(tmp_path / "run", SPEC) as state:
        path = save_round_eval(state.layout, EVALS[1])
    assert load_round_eval(path) == EVALS[1]

    document = json.loads(path.read_text())
    for change, message in (
        ({"pass_rate_no_knowledge": 21.4}, r"pass_rate_no_knowledge=21.4 is not a fraction"),
        ({"knowledge_items": "34"}, r"field 'knowledge_items' is '34'; expected int"),
        ({"consolidation": {"kl_first": 0.4, "steps": 5}}, r"missing field 'consolidation.kl_last'"),
        ({"tokens_per_turn": True}, r"field 'tokens_per_turn' is True; expected float"),
        ({"turns_per_game": "4.25"}, r"field 'turns_per_game' is '4.25'; expected float"),
    ):
        path.write_text(json.dumps({**document, **change}))
        with pytest.raises(EvalFormatError, match=message):
            load_round_eval(path)


def test_out_of_domain_games_are_tabled_against_the_base_and_drawn_in_a_third_panel(tmp_path):
    def ood(river_pass, river_valid, lake_pass):
        return (
            OODResult(name="river", num_games=32, pass_rate=river_pass, valid_action_rate=river_valid),
            OODResult(name="lake", num_games=16, pass_rate=lake_pass, valid_action_rate=1.0),
        )

    evals = {
        0: replace(EVALS[0], ood=ood(0.25, 0.98, 0.5)),
        1: replace(EVALS[1], ood=ood(0.0, 0.11, 0.5625)),
        2: replace(EVALS[2], ood=ood(0.21875, 0.96875, 0.5)),
    }
    run_dir = tmp_path / "run"
    with RunState.open(run_dir, SPEC) as state:
        while (step := state.next_stage()) is not None and step != NextStage(3, "teacher_refresh"):
            if step.stage == "evaluation":
                save_round_eval(state.layout, evals[step.round])
            state.mark_done(*step, {"seconds": 90.0})
    paths = render_report(run_dir)
    markdown = paths.markdown.read_text()
    assert "| round | river pass | river valid actions | lake pass | lake valid actions |" in markdown
    assert "| 0 (base) | 25.0% | 98.0% | 50.0% | 100.0% |" in markdown
    assert "| 1 | 0.0% (-25.0) | 11.0% (-87.0) | 56.2% (+6.2) | 100.0% (+0.0) |" in markdown
    assert "| 2 | 21.9% (-3.1) | 96.9% (-1.1) | 50.0% (+0.0) | 100.0% (+0.0) |" in markdown
    report = json.loads(paths.json.read_text())
    assert report["rounds"][1]["eval"]["ood"][0] == {
        "name": "river",
        "num_games": 32,
        "pass_rate": 0.0,
        "valid_action_rate": 0.11,
    }
    width, _ = png_size(paths.png.read_bytes())
    assert width > 1600  # the third panel; a run without OOD games draws two (the first test)
    assert load_round_eval(run_dir / "rounds/round_001/eval.json") == evals[1]


def test_a_bad_ood_field_is_named_with_its_index(tmp_path):
    river = OODResult(name="river", num_games=4, pass_rate=0.5, valid_action_rate=1.0)
    record = replace(EVALS[0], ood=(river,))
    with RunState.open(tmp_path / "run", SPEC) as state:
        path = save_round_eval(state.layout, record)
    document = json.loads(path.read_text())
    for change, message in (
        ({"pass_rate": 50.0}, r"ood\[0\]\.pass_rate=50\.0 is not a fraction"),
        ({"valid_action_rate": None}, r"field 'ood\[0\]\.valid_action_rate' is None; expected float"),
        ({"name": 3}, r"field 'ood\[0\]\.name' is 3; expected str"),
    ):
        path.write_text(json.dumps({**document, "ood": [{**document["ood"][0], **change}]}))
        with pytest.raises(EvalFormatError, match=message):
            load_round_eval(path)


# ---------------------------------------------------------------------------------------------------------
# What was learned: each round's knowledge in the report, and the diff of two rounds.
# ---------------------------------------------------------------------------------------------------------

REPLIES = {
    # round: one extraction reply per stream, as the model wrote them
    1: [
        f"{DEFAULT_MARKER} Open the door marked with a ship.\nno marker here\n{DEFAULT_MARKER} Avoid holes.",
        f"{DEFAULT_MARKER} Avoid holes.\n{DEFAULT_MARKER} avoid holes",  # a duplicate within the stream
    ],
    2: [f"{DEFAULT_MARKER} Open the door marked with a ship!\n{DEFAULT_MARKER} Count the steps first.", ""],
}


def write_knowledge(run_dir, replies=REPLIES) -> None:
    """Each round's streams where its extraction stage leaves them, from the replies above."""
    layout = RunState.attach(run_dir).layout
    for round, per_stream in replies.items():
        store = KnowledgeStore.create(round, len(per_stream), budget_tokens=512)
        for stream, reply in zip(store.streams, per_stream, strict=True):
            stream.add_reply(reply, seed=100 + round, won=stream.index == 0, game="hidden-rule")
        save_store(store, layout.knowledge_root(round))


def test_the_report_shows_each_rounds_knowledge_as_the_teacher_read_it(tmp_path):
    run_dir = tmp_path / "run"
    run_until(run_dir, NextStage(3, "teacher_refresh"))
    write_knowledge(run_dir)
    markdown = render_report(run_dir).markdown.read_text()

    section = markdown[markdown.index("## Knowledge") :]
    assert "### Round 1: 3 items in 2 streams" in section
    assert "Stream 0: 2 items" in section and "dropped: 1 no marker." in section
    assert "Stream 1: 1 items" in section and "dropped: 1 duplicate." in section
    assert (
        "1. Open the door marked with a ship. (round 1, stream 0, after `hidden-rule` game seed 101 (won))"
        in section
    )
    assert "1. Avoid holes. (round 1, stream 1, after `hidden-rule` game seed 101 (lost))" in section
    assert "### Round 2: 2 items in 2 streams" in section and "Stream 1: 0 items" in section
    # Streams and items in the teacher's order, in report.json too.
    knowledge = json.loads((run_dir / "report.json").read_text())["rounds"][1]["knowledge"]
    assert [[item["text"] for item in stream["items"]] for stream in knowledge] == [
        ["Open the door marked with a ship.", "Avoid holes."],
        ["Avoid holes."],
    ]
    assert (
        knowledge[0]["counts"]["dropped_no_marker"] == 1 and knowledge[1]["counts"]["dropped_duplicate"] == 1
    )
    assert json.loads((run_dir / "report.json").read_text())["rounds"][3]["knowledge"] is None  # not started


def test_an_unreadable_stream_is_shown_as_the_rounds_problem(tmp_path):
    run_dir = tmp_path / "run"
    run_until(run_dir, NextStage(3, "teacher_refresh"))
    write_knowledge(run_dir)
    layout = RunState.attach(run_dir).layout
    (layout.knowledge_root(2) / "round_002" / "stream_01.json").write_text("{")
    markdown = render_report(run_dir).markdown.read_text()
    assert "- round 2: round 2: " in markdown and "stream_01.json" in markdown
    assert "### Round 1: 3 items in 2 streams" in markdown


def test_verl_oel_report_diffs_two_rounds_knowledge(tmp_path, capsys):
    from verl_oel.cli import main

    run_dir = tmp_path / "run"
    run_until(run_dir, NextStage(3, "teacher_refresh"))
    write_knowledge(run_dir)
    # The ship rule again with other punctuation is the same item; "Avoid holes." went, one is new.
    assert main(["report", str(run_dir), "--diff", "1", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "knowledge, round 1 -> round 2: 1 kept, 1 added, 1 removed",
        "+ Count the steps first.",
        "- Avoid holes.",
    ]
    assert main(["report", str(run_dir), "--diff", "1", "3"]) == 2
    assert "round 3 has no knowledge to compare: its extraction is not finished" in capsys.readouterr().err


@pytest.mark.parametrize("skipped", [True, False], ids=["consolidation-skipped", "an-earlier-run"])
def test_a_round_whose_extraction_wrote_nothing_shows_no_knowledge_numbers(tmp_path, skipped):
    """Such a round has no "with knowledge" number (an earlier version's in_context stage played the teacher
    with empty streams, which is not that), and its extraction's in-context curve is the model without any;
    the trainer skips its consolidation, which the table says."""
    empty = RoundEval(
        round=1,
        num_games=32,
        pass_rate_no_knowledge=0.25,
        tokens_per_turn=12.0,
        pass_rate_with_knowledge=None if skipped else 0.25,
        knowledge_items=0,
        in_context_curve=(InContextPoint(games=1, pass_rate=0.0),),
        consolidation=None if skipped else ConsolidationSummary(kl_first=1e-7, kl_last=1e-7, steps=8),
        consolidation_skipped="no knowledge: the round's extraction kept no item" if skipped else None,
    )
    run_dir = tmp_path / "run"
    with RunState.open(run_dir, SPEC) as state:
        while (step := state.next_stage()) is not None and step != NextStage(2, "teacher_refresh"):
            if step.stage == "evaluation":
                save_round_eval(state.layout, EVALS[0] if step.round == 0 else empty)
            state.mark_done(*step, {"seconds": 90.0})
    markdown = render_report(run_dir).markdown.read_text()
    assert "| 1 | done | 32 | 25.0% | – (no knowledge) | 12.0 | – | – | 0 |" in markdown
    assert "## In-context learning during extraction" not in markdown
    assert ("| 0 | skipped (no knowledge) |" in markdown) == skipped
    record = json.loads((run_dir / "report.json").read_text())["rounds"][1]["eval"]
    assert record["consolidation_skipped"] == empty.consolidation_skipped
