"""A build folder is either complete or absent, reused when current, and never clobbers foreign data."""

import json

import pytest
import transformers

from verl_oel.models import BuildModelError, build_tiny_model
from verl_oel.models.build_folder import BUILD_INFO_FILE


def _weights_inode(folder):
    return (folder / "model.safetensors").stat().st_ino


def test_same_build_again_is_reused_without_rewriting(tmp_path):
    out = build_tiny_model(tmp_path / "tiny")
    inode = _weights_inode(out)
    assert build_tiny_model(out) == out
    assert _weights_inode(out) == inode


def test_force_rebuilds_a_current_build(tmp_path):
    out = build_tiny_model(tmp_path / "tiny")
    inode = _weights_inode(out)
    build_tiny_model(out, force=True)
    assert _weights_inode(out) != inode


def test_new_settings_replace_a_previous_build_without_force(tmp_path):
    out = build_tiny_model(tmp_path / "tiny", seed=0)
    seed0_weights = (out / "model.safetensors").read_bytes()
    build_tiny_model(out, seed=1)
    assert json.loads((out / BUILD_INFO_FILE).read_text())["settings"]["seed"] == 1
    assert (out / "model.safetensors").read_bytes() != seed0_weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


def test_a_damaged_build_is_rebuilt(tmp_path):
    out = build_tiny_model(tmp_path / "tiny")
    (out / "tokenizer.json").unlink()
    build_tiny_model(out)
    assert (out / "tokenizer.json").is_file()


def test_foreign_non_empty_folder_needs_force(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(BuildModelError, match="--force"):
        build_tiny_model(out)
    assert (out / "notes.txt").read_text() == "keep me"
    build_tiny_model(out, force=True)
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()


def test_an_existing_empty_folder_is_used(tmp_path):
    (tmp_path / "empty").mkdir()
    assert (build_tiny_model(tmp_path / "empty") / "model.safetensors").is_file()


def test_a_file_in_the_way_is_an_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(BuildModelError, match="not a folder"):
        build_tiny_model(tmp_path / "file", force=True)


def test_an_interrupted_build_leaves_no_folder_and_no_debris(tmp_path, monkeypatch):
    def save_half_then_die(self, folder, **kwargs):
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.Qwen3ForCausalLM, "save_pretrained", save_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_tiny_model(tmp_path / "tiny")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_rebuild_keeps_the_previous_build(tmp_path, monkeypatch):
    out = build_tiny_model(tmp_path / "tiny", seed=0)
    weights = (out / "model.safetensors").read_bytes()

    def die(self, folder, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(transformers.Qwen3ForCausalLM, "save_pretrained", die)
    with pytest.raises(RuntimeError, match="killed"):
        build_tiny_model(out, seed=1)
    assert (out / "model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
