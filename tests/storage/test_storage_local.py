"""memtune.storage on plain paths and file:// URIs, and the parts that need no server."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from memtune import storage
from memtune.manifest import MANIFEST_NAME, IntegrityError, write_manifest


def _files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_run_ids_sort_by_time() -> None:
    start = datetime(2026, 11, 25, 19, 0, tzinfo=UTC)
    ids = [storage.new_run_id(start + timedelta(microseconds=step)) for step in (0, 1, 999_999, 3_600_000_000)]
    assert ids == sorted(ids)
    assert all(storage.RUN_ID_PATTERN.match(run_id) for run_id in ids)
    assert ids[0].startswith("20261125T190000.000000Z-")


def test_run_uri_rejects_foreign_ids() -> None:
    assert storage.run_uri("s3://bkt/out/", "20261125T190000.000000Z-abcdef") == (
        "s3://bkt/out/runs/20261125T190000.000000Z-abcdef"
    )
    with pytest.raises(storage.StorageError, match="not of the form"):
        storage.run_uri("out", "../escape")


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_local_publish_and_fetch(scheme: str, committed_folder: Path, tmp_path: Path) -> None:
    output = f"{scheme}{tmp_path / 'out'}"
    run = storage.run_uri(output, storage.new_run_id())
    manifest = storage.publish_folder(committed_folder, run)

    assert storage.latest_committed_run(output) == run
    published = Path(run.removeprefix("file://"))
    assert _files(published) == _files(committed_folder)
    assert [path.name for path in published.parent.iterdir()] == [published.name]  # no staging folder left
    assert storage.fetch_folder(run, tmp_path / "fetched") == manifest
    with pytest.raises(storage.StorageError, match="already exists"):
        storage.publish_folder(committed_folder, run)


def test_only_listed_files_are_published(committed_folder: Path, tmp_path: Path) -> None:
    (committed_folder / "scratch.tmp").write_text("written after the commit")
    run = storage.run_uri(str(tmp_path / "out"), storage.new_run_id())
    storage.publish_folder(committed_folder, run)
    assert not (Path(run) / "scratch.tmp").exists()


def test_uncommitted_or_corrupt_folder_is_not_published(committed_folder: Path, tmp_path: Path) -> None:
    (committed_folder / "config.json").write_text('{"r": 5}')
    with pytest.raises(IntegrityError, match=r"config\.json"):
        storage.publish_folder(committed_folder, str(tmp_path / "run"))
    (committed_folder / MANIFEST_NAME).unlink()
    with pytest.raises(IntegrityError, match="never committed"):
        storage.publish_folder(committed_folder, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_latest_committed_run_skips_uncommitted_and_stray_folders(committed_folder: Path, tmp_path: Path) -> None:
    output = str(tmp_path / "out")
    now = datetime.now(UTC)
    older, newer = (storage.run_uri(output, storage.new_run_id(now + timedelta(seconds=s))) for s in (0, 1))
    storage.publish_folder(committed_folder, older)
    Path(newer).mkdir(parents=True)  # a newer run that crashed before committing
    (Path(output) / "runs" / "zzz-not-a-run").mkdir()
    (Path(output) / "runs" / "zzz-not-a-run" / MANIFEST_NAME).write_text("{}")

    assert storage.latest_committed_run(output) == older
    assert storage.latest_committed_run(str(tmp_path / "never-written")) is None


def test_fetch_refuses_prefix_without_manifest(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "weights.bin").write_bytes(b"half")
    with pytest.raises(storage.StorageError, match="never committed"):
        storage.fetch_folder(str(tmp_path / "run"), tmp_path / "fetched")
    assert not (tmp_path / "fetched").exists()


def test_fetch_refuses_missing_file_and_foreign_target(committed_folder: Path, tmp_path: Path) -> None:
    run = storage.run_uri(str(tmp_path / "out"), storage.new_run_id())
    storage.publish_folder(committed_folder, run)
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "other.txt").write_text("someone else's")
    with pytest.raises(storage.StorageError, match="holds something other"):
        storage.fetch_folder(run, tmp_path / "occupied")

    (Path(run) / "index.faiss").unlink()
    with pytest.raises(IntegrityError, match=r"index\.faiss: listed in manifest\.json but missing"):
        storage.fetch_folder(run, tmp_path / "fetched")
    assert not (tmp_path / "fetched").exists()


def test_fetch_refuses_paths_outside_the_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write_manifest(run)
    manifest = json.loads((run / MANIFEST_NAME).read_text())
    manifest["files"]["../../outside.txt"] = {"sha256": "0" * 64, "size": 1}
    (run / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="outside the folder"):
        storage.fetch_folder(str(run), tmp_path / "fetched")
    assert not (tmp_path / "outside.txt").exists()


def test_small_local_files(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/datasets/facts.jsonl"
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"line\n")
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b"line\n"
    assert [path.name for path in (tmp_path / "datasets").iterdir()] == ["facts.jsonl"]  # no temp file left
    with pytest.raises(storage.StorageError, match="not found"):
        storage.read_bytes(str(tmp_path / "missing.jsonl"))


def test_bad_uris_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(storage.StorageError, match="gs://bkt/x: unsupported scheme"):
        storage.read_bytes("gs://bkt/x")
    with pytest.raises(storage.StorageError, match="at least 3 characters"):
        storage.read_bytes("s3://ab/x")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://user:hunter2@127.0.0.1:9000")
    with pytest.raises(storage.StorageError, match="must not embed credentials") as caught:
        storage.read_bytes("s3://bucket/x")
    assert "hunter2" not in str(caught.value)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    with pytest.raises(storage.StorageError, match="needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        storage.read_bytes("s3://bucket/x")


def test_two_fetches_racing_for_one_folder_both_end_with_the_verified_copy(
    committed_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = storage.run_uri(str(tmp_path / "out"), storage.new_run_id())
    manifest = storage.publish_folder(committed_folder, run)
    target = tmp_path / "cache" / "model"
    download = storage._download
    raced: list[bool] = []

    def other_rank_finishes_first(item, staging, name) -> None:
        if not raced:
            raced.append(True)
            assert storage.fetch_folder(run, target) == manifest  # the other rank, start to end
        download(item, staging, name)

    monkeypatch.setattr(storage, "_download", other_rank_finishes_first)
    assert storage.fetch_folder(run, target) == manifest  # its rename loses, the copy in place is the same: kept
    assert raced and _files(target) == _files(committed_folder)
    assert [path.name for path in target.parent.iterdir()] == ["model"]  # no staging folder left behind
