"""The model served is the model trained, and every check runs before training (tiny random Llama, real S3).

- pickled weights are refused before anything unpickles them; the documented conversion gives a loadable folder;
- every file that can change the model is part of its identity;
- only run-id folders are runs, and a damaged run never blocks a new one (on disk and on S3 alike);
- an output that cannot be written fails the trainer with exit 1 before the first step; a storage outage is 75.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from memtune import storage
from memtune.contract import EXIT_PERMANENT, EXIT_RETRYABLE
from memtune.manifest import write_manifest
from memtune.spec import ModelError
from memtune.trainer.mome import base as models
from memtune.trainer.tuning import pod
from memtune.trainer.tuning.job import reusable_run
from tests.storage.s3server import SeaweedS3


def _pickled_copy(model: Path, target: Path) -> Path:
    """The tiny model as an old-style folder: weights only in pytorch_model.bin (what torch.save writes)."""
    shutil.copytree(model, target)
    from safetensors.torch import load_file

    torch.save(load_file(target / "model.safetensors"), target / "pytorch_model.bin")
    (target / "model.safetensors").unlink()
    return target


def test_pickled_weights_are_refused_and_the_documented_conversion_loads(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _pickled_copy(tiny_model, tmp_path / "old")

    def no_unpickling(*_: object, **__: object) -> None:
        raise AssertionError("torch.load was called: a pickle was read")

    with monkeypatch.context() as patch:
        patch.setattr(torch, "load", no_unpickling)
        with pytest.raises(ModelError, match=r"weights only in pickle files \(pytorch_model\.bin\)") as caught:
            models.load_base_model(str(old))
        assert models.CONVERT_COMMAND in str(caught.value)
        with pytest.raises(ModelError, match="pickle"):
            models.publish_model(str(old), str(tmp_path / "published"))
        # With safetensors beside it the .bin is never read (use_safetensors=True).
        shutil.copy(tiny_model / "model.safetensors", old / "model.safetensors")
        assert models.load_base_model(str(old)).sha256 == models.folder_sha256(old)
        (old / "model.safetensors").unlink()

    assert models.CONVERT_COMMAND in (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    command = models.CONVERT_COMMAND.replace("OLD_FOLDER", str(old)).replace("NEW_FOLDER", str(tmp_path / "new"))
    argv = shlex.split(command)
    subprocess.run([sys.executable, *argv[1:]], check=True, capture_output=True, timeout=300)
    converted = models.load_base_model(str(tmp_path / "new"))
    original = models.load_base_model(str(tiny_model))
    for name, weight in original.model.state_dict().items():
        assert torch.equal(converted.model.state_dict()[name], weight), name


def test_every_file_that_can_change_the_model_is_its_identity(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    seen = {models.folder_sha256(folder)}
    changes = [
        ("chat_template.jinja", "{{ messages }}"),
        ("generation_config.json", '{"do_sample": true}'),
        ("pytorch_model.bin", "beside the safetensors"),
        ("tokenizer.model", "spm"),
        ("sub/extra.safetensors", "more weights"),
        ("modeling_custom.py", "code"),
    ]
    for name, text in changes:
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text(text)
        digest = models.folder_sha256(folder)
        assert digest not in seen, f"{name} does not change the identity"
        seen.add(digest)
    for name in ("sha256.txt", "manifest.json", ".cache/huggingface/x.lock"):  # bookkeeping is not identity
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("0" * 64)
        assert models.folder_sha256(folder) in seen
    # A user's own sha256.txt is not trusted: the digest follows the files.
    assert models.model_sha256(folder) == models.folder_sha256(folder) != "0" * 64


def _fake_run(root: Path, run_id: str, key: str) -> Path:
    folder = root / run_id
    folder.mkdir(parents=True)
    (folder / "memtune.json").write_text(json.dumps({"cache_key": key, "metrics": {}}))
    (folder / "keys.safetensors").write_bytes(b"keys of " + run_id.encode())
    write_manifest(folder)
    return folder


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_damaged_newest_run_is_skipped_never_served_and_never_in_the_way(
    where: str, tmp_path: Path, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    staged = tmp_path / "staged"
    old = _fake_run(staged, "20260101T000000.000000Z-aaaaaa", "K")
    new = _fake_run(staged, "20260102T000000.000000Z-bbbbbb", "K")
    _fake_run(staged, "zz-old-backup", "K")
    if where == "s3":
        s3: SeaweedS3 = request.getfixturevalue("s3_env")
        output = f"{s3.make_bucket()}/out"
    else:
        output = str(tmp_path / "out")
    for folder in (old, new, staged / "zz-old-backup"):
        storage.publish_folder(folder, storage.join_uri(output, "runs", folder.name))
    newest = storage.join_uri(output, "runs", new.name)
    assert reusable_run(output, "K") == (newest, {"cache_key": "K", "metrics": {}})
    assert reusable_run(output, "other") is None

    storage.write_bytes(storage.join_uri(newest, "keys.safetensors"), b"bit rot")  # damaged after its commit
    found = reusable_run(output, "K")
    assert found is not None and found[0] == storage.join_uri(output, "runs", old.name)
    assert f"skipping damaged run {newest}" in caplog.text
    storage.write_bytes(storage.join_uri(newest, "memtune.json"), b"{not json")  # the metadata itself
    assert reusable_run(output, "other") is None  # not an error: a new run may be trained into this prefix


def _trainer(spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    log = tmp_path / "termination-log"
    code = pod.main(["--spec", str(spec), "--termination-log", str(log)])
    return code, log.read_text(), capsys.readouterr().out


def test_an_output_that_cannot_be_written_fails_before_the_first_step(
    make_job: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    code, message, stdout = _trainer(make_job(str(tmp_path / "a-file" / "out")), tmp_path, capsys)
    assert code == EXIT_PERMANENT and "cannot write to" in message and "a-file/out" in message
    assert "MEMTUNE_PROGRESS" not in stdout  # not one training step was spent


def test_read_only_s3_credentials_fail_before_the_first_step(
    make_job: Callable[..., Path], tmp_path: Path, s3_env: SeaweedS3, monkeypatch, capsys
) -> None:
    output = f"{s3_env.make_bucket()}/out"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_env.readonly_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.readonly_secret)
    code, message, stdout = _trainer(make_job(output), tmp_path, capsys)
    assert code == EXIT_PERMANENT and "access denied" in message and "MEMTUNE_PROGRESS" not in stdout
    assert s3_env.readonly_secret not in message


def test_storage_that_stays_down_is_the_only_retryable_exit(
    make_job: Callable[..., Path], tmp_path: Path, s3_env: SeaweedS3, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(storage, "RETRY_BASE_DELAY_S", 0.01)
    monkeypatch.setattr(storage, "RETRY_MAX_DELAY_S", 0.02)
    closed = storage_port_nobody_listens_on()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    code, message, _ = _trainer(make_job("s3://some-bucket/out"), tmp_path, capsys)
    assert code == EXIT_RETRYABLE and "still failing after" in message and s3_env.secret_key not in message


def storage_port_nobody_listens_on() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
