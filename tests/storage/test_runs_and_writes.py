"""Which folders are runs, whether an output can be written (asked before training), and writes that fail half way.

The same checks run on disk and on the real S3 server (SeaweedFS), so both behave alike."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from memtune import storage
from memtune.manifest import MANIFEST_NAME, IntegrityError, verify_folder, write_manifest
from tests.storage.s3server import SeaweedS3

RUN_A = "20260101T000000.000000Z-aaaaaa"
RUN_B = "20260102T000000.000000Z-bbbbbb"


def _commit(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "memtune.json").write_text(text)
    write_manifest(folder)
    return folder


def _output(tmp_path: Path, where: str, s3: SeaweedS3 | None) -> str:
    """A job output holding runs A and B (committed), `old-backup` (committed, named last) and C (no manifest)."""
    staged = tmp_path / "staged"
    _commit(staged / RUN_A, "a")
    _commit(staged / RUN_B, "b")
    _commit(staged / "old-backup", "newest-looking copy")
    (staged / "20260103T000000.000000Z-cccccc").mkdir()
    (staged / "20260103T000000.000000Z-cccccc" / "memtune.json").write_text("interrupted")
    output = str(tmp_path / "out") if where == "local" else f"{s3.make_bucket()}/out"  # type: ignore[union-attr]
    for folder in sorted(staged.iterdir()):
        if (folder / MANIFEST_NAME).is_file():
            storage.publish_folder(folder, storage.join_uri(output, "runs", folder.name))
        else:
            storage.write_bytes(storage.join_uri(output, "runs", folder.name, "memtune.json"), b"interrupted")
    return output


@pytest.fixture(params=["local", "s3"])
def where(request: pytest.FixtureRequest) -> str:
    return request.param


def test_only_committed_run_id_folders_are_runs(where: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    s3 = request.getfixturevalue("s3_env") if where == "s3" else None
    output = _output(tmp_path, where, s3)
    runs = storage.committed_runs(output)
    assert [uri.rsplit("/", 1)[-1] for uri in runs] == [RUN_B, RUN_A]  # newest first; no old-backup, no C
    assert storage.latest_committed_run(output) == storage.join_uri(output, "runs", RUN_B)
    assert storage.read_committed_file(runs[0], "memtune.json") == b"b"
    storage.verify_committed(runs[0])
    storage.write_bytes(storage.join_uri(runs[0], "memtune.json"), b"B")  # damaged after the commit
    with pytest.raises(IntegrityError, match=r"memtune\.json: sha256 differs"):
        storage.read_committed_file(runs[0], "memtune.json")
    with pytest.raises(IntegrityError, match=r"memtune\.json"):
        storage.verify_committed(runs[0])


def test_a_writable_output_is_probed_without_leaving_anything(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s3 = request.getfixturevalue("s3_env") if where == "s3" else None
    output = str(tmp_path / "new" / "out") if where == "local" else f"{s3.make_bucket()}/out"  # type: ignore[union-attr]
    storage.check_writable(output)
    if where == "local":
        assert list((tmp_path / "new" / "out").iterdir()) == []
    else:
        # SeaweedFS may keep the emptied folder itself; no object of the probe stays
        left = s3.filesystem().find(output.removeprefix("s3://"))  # type: ignore[union-attr]
        assert not [name for name in left if "probe" in name], left


def test_an_output_that_cannot_be_written_is_refused_up_front(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(storage.StorageError, match=r"cannot write to .*a-file/out: Not a directory") as caught:
        storage.check_writable(str(blocker / "out"))
    assert not caught.value.transient


def test_read_only_credentials_are_refused_up_front(s3_env: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = s3_env.make_bucket()
    s3_env.filesystem().pipe_file(f"{bucket.removeprefix('s3://')}/out/existing", b"kept")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_env.readonly_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.readonly_secret)
    assert storage.read_bytes(f"{bucket}/out/existing") == b"kept"  # the key reads ...
    with pytest.raises(storage.StorageError, match="access denied to bucket") as caught:
        storage.check_writable(f"{bucket}/out")  # ... but may not write: said before any training
    assert not caught.value.transient and s3_env.readonly_secret not in str(caught.value)


def test_a_uri_with_credentials_is_refused_without_echoing_them() -> None:
    for uri in ("s3://AKIA:se/cret@bucket/x", "https://user:secret@host/x", "file://u:secret@host/x"):
        with pytest.raises(storage.StorageError) as caught:
            storage.read_bytes(uri)
        assert "must not embed credentials" in str(caught.value) and "cret" not in str(caught.value)


def test_a_full_disk_leaves_no_temp_file(tmp_path: Path) -> None:
    """A real short write: the file-size limit (RLIMIT_FSIZE) makes the kernel refuse the write half way."""
    script = textwrap.dedent(
        f"""
        import resource, signal
        from memtune import storage
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            storage.write_bytes({str(tmp_path / "ckpt" / "state-0.safetensors")!r}, b"x" * 100_000)
        except storage.StorageError as error:
            print("refused:", error)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "refused:" in done.stdout and "File too large" in done.stdout, done.stdout + done.stderr
    assert list((tmp_path / "ckpt").iterdir()) == []  # neither the target nor a temp file


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ({"a.txt": "not an object"}, "entry 'a.txt' is not an object with a sha256"),
        ({"a.txt": {"size": 3}}, "entry 'a.txt' is not an object with a sha256"),
        ({"a.txt": {"sha256": 7}}, "entry 'a.txt' is not an object with a sha256"),
        ({"../escape": {"sha256": "0" * 64}}, "a path outside the folder: '../escape'"),
        ({"/etc/passwd": {"sha256": "0" * 64}}, "a path outside the folder"),
        ([1, 2], "no 'files' table"),
    ],
)
def test_a_damaged_manifest_is_a_clear_integrity_error(tmp_path: Path, files: object, words: str) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "a.txt").write_text("abc")
    (folder / MANIFEST_NAME).write_text(json.dumps({"format_version": 1, "files": files}))
    with pytest.raises(IntegrityError, match=words.replace("(", r"\(").replace(".", r"\.")):
        verify_folder(folder)
    with pytest.raises(IntegrityError, match=words.replace("(", r"\(").replace(".", r"\.")):
        storage.fetch_folder(str(folder), tmp_path / "copy")
    (folder / MANIFEST_NAME).write_text("[" * 100_000)
    with pytest.raises(IntegrityError, match="unreadable manifest"):
        verify_folder(folder)
