"""IFBench in a round's record: eval.json's ``ifbench``, the evaluation stage's ``ifbench.json`` (whose
verdicts must give the score), the report's out-of-domain table and panel, and the resume check of a
finished evaluation. Built on disk with ``RunState`` and the stages' own writers; no verl launch."""

from __future__ import annotations

import json
import struct

import pytest

from verl_oel.ifbench import PromptVerdict, instruction_strict, prompt_strict
from verl_oel.oel import (
    EvalFormatError,
    IFBenchScore,
    NextStage,
    RoundEval,
    RunSpec,
    RunState,
    load_ifbench_record,
    load_round_eval,
    render_report,
    save_ifbench_record,
    save_round_eval,
)
from verl_oel.oel.run_integrity import check_finished_outputs
from verl_oel.oel.run_state import EVALUATION, DamagedRunError

SPEC = RunSpec(base_model="/models/qwen3-4b", rounds=1, seed=0, config={})
LEFT_OUT = ("format:title_case", "ratio:stop_words")


def verdicts(*followed: tuple[bool, ...]) -> list[PromptVerdict]:
    return [
        PromptVerdict(str(i), ("count:numbers",) * len(f), f"reply {i}", 7, tuple(f))
        for i, f in enumerate(followed)
    ]


def score(of: list[PromptVerdict]) -> IFBenchScore:
    return IFBenchScore(
        prompt_strict=prompt_strict(of),
        instruction_strict=instruction_strict(of),
        prompts=len(of),
        shipped_prompts=294,
        checkable_prompts=265,
        left_out_instructions=LEFT_OUT,
        max_tokens=1024,
    )


BASE = verdicts((True,), (True, True), (False,), (True, False))  # 2 of 4 prompts, 4 of 6 instructions
ROUND_1 = verdicts((True,), (False, True), (False,), (False, False))  # 1 of 4, 2 of 6


def evaluate(state: RunState, round: int, followed: list[PromptVerdict]) -> None:
    """What the evaluation stage writes when IFBench is on, then its marker (as the trainer does)."""
    state.stage_dir_for_retry(round, EVALUATION)
    result = score(followed)
    save_ifbench_record(state.layout.ifbench_json(round), result, followed)
    record = RoundEval(
        round=round, num_games=4, pass_rate_no_knowledge=0.5, tokens_per_turn=3.0, ifbench=result
    )
    save_round_eval(state.layout, record)
    state.mark_done(round, EVALUATION, {"seconds": 60.0, "ood/ifbench/prompts": result.prompts})


def png_width(data: bytes) -> int:
    return struct.unpack(">I", data[16:20])[0]


def test_eval_json_holds_the_score_and_what_it_is_over(tmp_path):
    with RunState.open(tmp_path / "run", SPEC) as state:
        evaluate(state, 0, BASE)
        document = json.loads(state.layout.eval_json(0).read_text())
    assert document["ifbench"] == {
        "prompt_strict": 0.5,
        "instruction_strict": pytest.approx(4 / 6),
        "prompts": 4,
        "shipped_prompts": 294,
        "checkable_prompts": 265,
        "left_out_instructions": list(LEFT_OUT),
        "max_tokens": 1024,
    }
    assert load_round_eval(state.layout.eval_json(0)).ifbench == score(BASE)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompt_strict": 50.0}, r"ifbench\.prompt_strict=50\.0 is not a fraction"),
        ({"prompts": 300}, r"ifbench counts must satisfy 0 < prompts <= checkable_prompts"),
        ({"left_out_instructions": [3]}, r"'ifbench\.left_out_instructions' must list strings"),
        ({"max_tokens": None}, r"field 'ifbench\.max_tokens' is None; expected int"),
        ({"prompt_stict": 0.5}, r"unknown field 'ifbench\.prompt_stict'"),
    ],
)
def test_a_bad_ifbench_field_is_named(tmp_path, change, message):
    with RunState.open(tmp_path / "run", SPEC) as state:
        evaluate(state, 0, BASE)
    path = state.layout.eval_json(0)
    document = json.loads(path.read_text())
    path.write_text(json.dumps({**document, "ifbench": {**document["ifbench"], **change}}))
    with pytest.raises(EvalFormatError, match=message):
        load_round_eval(path)


def test_an_eval_json_from_before_ifbench_still_reads(tmp_path):
    """Every eval.json written before held the reserved ``ifeval_prompt_strict``, always null."""
    record = RoundEval(round=0, num_games=4, pass_rate_no_knowledge=0.5, tokens_per_turn=3.0)
    with RunState.open(tmp_path / "run", SPEC) as state:
        path = save_round_eval(state.layout, record)
    document = {key: value for key, value in json.loads(path.read_text()).items() if key != "ifbench"}
    path.write_text(json.dumps({**document, "ifeval_prompt_strict": None}))
    assert load_round_eval(path) == record
    path.write_text(json.dumps({**document, "ifeval_prompt_strict": 0.6}))
    with pytest.raises(EvalFormatError, match="unknown field 'ifeval_prompt_strict'"):
        load_round_eval(path)


def test_ifbench_json_keeps_every_reply_and_verdict_and_must_give_its_score(tmp_path):
    with RunState.open(tmp_path / "run", SPEC) as state:
        evaluate(state, 0, BASE)
    path = state.layout.ifbench_json(0)
    assert path == tmp_path / "run/rounds/round_000/evaluation/ifbench.json"
    assert load_ifbench_record(path) == (score(BASE), BASE)
    document = json.loads(path.read_text())
    assert document["prompts"][1] == {
        "key": "1",
        "instruction_id_list": ["count:numbers", "count:numbers"],
        "response": "reply 1",
        "response_tokens": 7,
        "follow_instruction_list": [True, True],
        "follow_all_instructions": True,
    }
    flipped = {**document["prompts"][2], "follow_instruction_list": [True], "follow_all_instructions": True}
    path.write_text(
        json.dumps({**document, "prompts": [*document["prompts"][:2], flipped, document["prompts"][3]]})
    )
    with pytest.raises(
        EvalFormatError, match=r"ifbench\.json: its 4 prompts' verdicts do not give its score"
    ):
        load_ifbench_record(path)
    inconsistent = {**document["prompts"][2], "follow_all_instructions": True}
    path.write_text(
        json.dumps({**document, "prompts": [*document["prompts"][:2], inconsistent, document["prompts"][3]]})
    )
    with pytest.raises(EvalFormatError, match="follow_all_instructions disagrees"):
        load_ifbench_record(path)


def test_a_resumed_run_refuses_a_finished_evaluation_whose_ifbench_json_is_gone(tmp_path):
    with RunState.open(tmp_path / "run", SPEC) as state:
        evaluate(state, 0, BASE)
        check_finished_outputs(state)
        state.layout.ifbench_json(0).unlink()
        with pytest.raises(DamagedRunError, match=r"evaluation/ifbench\.json \(round 0's evaluation stage"):
            check_finished_outputs(state)


def test_the_report_tables_and_draws_ifbench_against_the_base_and_says_what_it_is_over(tmp_path):
    run_dir = tmp_path / "run"
    with RunState.open(run_dir, SPEC) as state:
        evaluate(state, 0, BASE)
        while (step := state.next_stage()) != NextStage(1, EVALUATION):
            state.mark_done(*step, {"seconds": 1.0})
        evaluate(state, 1, ROUND_1)
    paths = render_report(run_dir)
    markdown = paths.markdown.read_text()
    assert "## Out-of-domain retention (no knowledge)" in markdown
    assert "| round | IFBench prompt-level strict | IFBench instruction-level strict |" in markdown
    assert "| 0 (base) | 50.0% | 66.7% |" in markdown
    assert "| 1 | 25.0% (-25.0) | 33.3% (-33.3) |" in markdown
    assert (
        "over 4 of the 294 IFBench test prompts (265 checkable offline; left out, needing NLTK data: "
        "format:title_case, ratio:stop_words), replies of at most 1024 tokens" in markdown
    )
    report = json.loads(paths.json.read_text())
    assert [entry["eval"]["ifbench"]["prompt_strict"] for entry in report["rounds"]] == [0.5, 0.25]
    assert png_width(paths.png.read_bytes()) > 1600  # the out-of-domain panel


def test_a_run_without_ifbench_shows_none(tmp_path):
    run_dir = tmp_path / "run"
    with RunState.open(run_dir, SPEC) as state:
        state.stage_dir_for_retry(0, EVALUATION)
        save_round_eval(state.layout, RoundEval(0, 4, 0.5, 3.0))
        state.mark_done(0, EVALUATION, {"seconds": 60.0})
        check_finished_outputs(state)
    markdown = render_report(run_dir).markdown.read_text()
    assert "IFBench" not in markdown and "Out-of-domain" not in markdown
