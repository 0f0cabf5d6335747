"""memtune.storage against a real S3 server (SeaweedFS): commit protocol, integrity, failures."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from memtune import storage
from memtune.manifest import MANIFEST_NAME, IntegrityError, read_manifest
from tests.storage.flaky_proxy import FlakyProxy
from tests.storage.s3server import SeaweedS3


def _files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_folder_round_trip_through_s3(s3_env: SeaweedS3, committed_folder: Path, tmp_path: Path) -> None:
    output = f"{s3_env.make_bucket()}/jobs/facts"
    assert storage.latest_committed_run(output) is None

    run = storage.run_uri(output, storage.new_run_id())
    manifest = storage.publish_folder(committed_folder, run)

    assert storage.latest_committed_run(output) == run
    fetched = tmp_path / "fetched"
    assert storage.fetch_folder(run, fetched) == manifest
    assert _files(fetched) == _files(committed_folder)
    # A second fetch into the same folder is a verified cache hit, not a second download.
    assert storage.fetch_folder(run, fetched) == manifest


def test_a_run_is_written_once(s3_env: SeaweedS3, committed_folder: Path) -> None:
    run = storage.run_uri(s3_env.make_bucket(), storage.new_run_id())
    storage.publish_folder(committed_folder, run)
    with pytest.raises(storage.StorageError, match="already committed"):
        storage.publish_folder(committed_folder, run)


def test_manifest_commit_is_conditional(s3_env: SeaweedS3) -> None:
    """If-None-Match: a second writer racing past the existence check still cannot replace the manifest."""
    location = storage._locate(f"{s3_env.make_bucket()}/run/{MANIFEST_NAME}")
    storage._put_once(location, b'{"first": 1}')
    storage._put_once(location, b'{"first": 1}')  # our own retried write landing twice is fine
    with pytest.raises(storage.StorageError, match="another writer"):
        storage._put_once(location, b'{"second": 2}')
    assert storage.read_bytes(location.uri) == b'{"first": 1}'


def test_tampered_file_is_refused(s3_env: SeaweedS3, committed_folder: Path, tmp_path: Path) -> None:
    run = storage.run_uri(s3_env.make_bucket(), storage.new_run_id())
    storage.publish_folder(committed_folder, run)
    storage.write_bytes(f"{run}/experts/weights.bin", b"tampered")

    with pytest.raises(IntegrityError, match=r"experts/weights\.bin: sha256"):
        storage.fetch_folder(run, tmp_path / "fetched")
    assert not (tmp_path / "fetched").exists()  # whole or absent


def test_uncommitted_prefix_is_refused(s3_env: SeaweedS3, tmp_path: Path) -> None:
    output = s3_env.make_bucket()
    run = storage.run_uri(output, storage.new_run_id())
    storage.write_bytes(f"{run}/config.json", b"{}")  # files, but never a manifest

    assert storage.latest_committed_run(output) is None
    with pytest.raises(storage.StorageError, match="never committed"):
        storage.fetch_folder(run, tmp_path / "fetched")


def test_small_files(s3_env: SeaweedS3) -> None:
    uri = f"{s3_env.make_bucket()}/datasets/facts.jsonl"
    assert not storage.exists(uri)
    storage.write_bytes(uri, b'{"input": "q", "output": "a"}\n')
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b'{"input": "q", "output": "a"}\n'


def _no_retries(caplog: pytest.LogCaptureFixture) -> bool:
    return not any("retry" in record.getMessage() for record in caplog.records)


def test_missing_bucket_fails_fast(s3_env: SeaweedS3, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=storage.__name__)
    with pytest.raises(storage.StorageError, match=rf"bucket 'no-such-bucket' does not exist at {s3_env.endpoint}"):
        storage.read_bytes("s3://no-such-bucket/facts.jsonl")
    assert _no_retries(caplog)


@pytest.mark.parametrize("variable", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
def test_bad_credentials_fail_fast_without_leaking(
    s3_env: SeaweedS3, variable: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = s3_env.make_bucket()
    monkeypatch.setenv(variable, "wrong-credential-value")
    caplog.set_level(logging.WARNING, logger=storage.__name__)
    with pytest.raises(storage.StorageError) as caught:
        storage.write_bytes(f"{bucket}/x", b"1")

    message = str(caught.value)
    assert f"access denied to bucket '{bucket.removeprefix('s3://')}' at {s3_env.endpoint}" in message
    assert "AWS_SECRET_ACCESS_KEY" in message  # says what to check ...
    assert "wrong-credential-value" not in message and s3_env.secret_key not in message  # ... never the value
    assert _no_retries(caplog)


def test_transient_failure_is_retried(
    s3_env: SeaweedS3, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fast_retries: None
) -> None:
    bucket = s3_env.make_bucket()
    proxy = FlakyProxy(s3_env.ports["s3.port"], failures=2)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    caplog.set_level(logging.WARNING, logger=storage.__name__)
    try:
        storage.write_bytes(f"{bucket}/x", b"payload")
        assert storage.read_bytes(f"{bucket}/x") == b"payload"
    finally:
        proxy.close()
    assert proxy.failed == 2
    assert sum("retry" in record.getMessage() for record in caplog.records) == 2


def test_persistent_failure_gives_up_naming_the_endpoint(
    s3_env: SeaweedS3, monkeypatch: pytest.MonkeyPatch, fast_retries: None
) -> None:
    proxy = FlakyProxy(s3_env.ports["s3.port"], failures=100)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    try:
        with pytest.raises(storage.StorageError, match=f"still failing after 5 attempts at {proxy.endpoint}"):
            storage.read_bytes("s3://any-bucket/x")
    finally:
        proxy.close()
    assert proxy.failed == storage.RETRY_ATTEMPTS


def test_server_killed_mid_upload_leaves_no_manifest(
    committed_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_retries: None
) -> None:
    server = SeaweedS3()
    try:
        server.start()
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        output = f"{server.make_bucket()}/out"
        run = storage.run_uri(output, storage.new_run_id())

        uploaded: list[str] = []

        def crash_after_first(name: str) -> None:
            uploaded.append(name)
            server.kill()

        with pytest.raises(storage.StorageError, match=f"upload {run}/.*still failing.*at {server.endpoint}"):
            storage.publish_folder(committed_folder, run, on_uploaded=crash_after_first)
        assert len(uploaded) == 1 < len(read_manifest(committed_folder)["files"])

        server.start()  # same data: what did the crash leave behind?
        assert storage.exists(f"{run}/{uploaded[0]}")
        assert not storage.exists(f"{run}/{MANIFEST_NAME}")
        assert storage.latest_committed_run(output) is None
        with pytest.raises(storage.StorageError, match="never committed"):
            storage.fetch_folder(run, tmp_path / "fetched")
    finally:
        server.remove()


def test_remove_tree_deletes_a_prefix_and_tolerates_absence(s3_env: SeaweedS3) -> None:
    bucket = s3_env.make_bucket()
    storage.write_bytes(f"{bucket}/ckpt/key/a.bin", b"a")
    storage.write_bytes(f"{bucket}/ckpt/key/sub/b.bin", b"b")
    storage.write_bytes(f"{bucket}/ckpt/other.bin", b"c")
    storage.remove_tree(f"{bucket}/ckpt/key")
    assert not storage.exists(f"{bucket}/ckpt/key/a.bin")
    assert not storage.exists(f"{bucket}/ckpt/key/sub/b.bin")
    assert storage.read_bytes(f"{bucket}/ckpt/other.bin") == b"c"
    storage.remove_tree(f"{bucket}/ckpt/key")  # already gone: fine
