"""Base model loading: the packaged GGUF is converted once to a safetensors cache and loaded from it afterwards."""

from __future__ import annotations

import json

import pytest
import torch

from memtune.data import memtune_home
from memtune.trainer.mome import base as models


def test_alias_is_converted_once_and_reloaded_from_the_cache(base, monkeypatch) -> None:
    folder = memtune_home() / "models" / "smollm2-135m-instruct"
    assert base.path == folder
    assert (folder / "model.safetensors").is_file() and (folder / "sha256.txt").is_file()
    assert not list(folder.glob("*.gguf"))
    assert "quantization_config" not in json.loads((folder / "config.json").read_text(encoding="utf-8"))

    def no_conversion(*_: object) -> None:
        raise AssertionError("the cache exists: converting again is a bug")

    monkeypatch.setattr(models, "_convert_packaged", no_conversion)
    again = models.load_base_model("smollm2-135m-instruct")
    assert again.sha256 == base.sha256
    name, weight = next(iter(base.model.state_dict().items()))
    assert torch.equal(again.model.state_dict()[name], weight)


def test_a_plain_folder_loads_and_gets_its_own_digest(base, tmp_path) -> None:
    base.model.save_pretrained(tmp_path)
    base.tokenizer.save_pretrained(tmp_path)
    loaded = models.load_base_model(str(tmp_path))
    assert loaded.sha256 == models.folder_sha256(tmp_path)
    assert not (tmp_path / "sha256.txt").exists()


def test_unknown_model_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(models.ModelError, match="neither a known alias"):
        models.load_base_model(str(tmp_path / "nothing-here"))


def test_base_model_answers_a_general_question(base) -> None:
    from memtune.trainer.mome.model import MemoryModel

    answer = MemoryModel.load("smollm2-135m-instruct").generate(["What is the capital of France?"], max_new_tokens=16)
    assert "Paris" in answer[0].output
    assert answer[0].route is None
