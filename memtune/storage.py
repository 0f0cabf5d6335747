"""Where datasets and artifacts live: plain paths, `file://` and `s3://` behind one small API.

An output is a folder or prefix holding one sub-folder per run::

    {output}/runs/{run_id}/...every file...      uploaded first
    {output}/runs/{run_id}/manifest.json         uploaded last: its presence is the commit

Run ids sort by time (`new_run_id`), so `latest_committed_run` is the newest run holding a manifest. A writer
killed half way leaves files but no manifest, and every reader refuses such a prefix; `fetch_folder` checks each
file's sha256 (`memtune.manifest.verify_folder`) before anything deserialises it.

S3 settings come from the standard environment, which the operator fills from the job's storage Secret:
`AWS_ENDPOINT_URL` (empty: AWS itself), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`.
Transient failures (dropped connections, 5xx, throttling) are retried here with exponential backoff and jitter;
botocore and s3fs are told to try once so that retries do not multiply. A missing bucket or rejected
credentials fail at once with a `StorageError` naming the bucket and endpoint, never a secret.

No torch here: the CLI, the SDK and the trainer all use it.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar
from urllib.parse import urlsplit

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from memtune.manifest import MANIFEST_NAME, IntegrityError, parse_manifest, read_manifest, verify_folder
from memtune.redact import has_userinfo

log = logging.getLogger(__name__)

RUNS_DIR = "runs"
# e.g. 20261125T192300.123456Z-3fa9c1: UTC time to the microsecond (sorts by time), then 24 random bits so two
# writers starting in the same microsecond still differ. Also a valid Kubernetes label value.
RUN_ID_PATTERN = re.compile(r"^\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{6}$")

RETRY_ATTEMPTS = 5
RETRY_BASE_DELAY_S = 0.5  # first wait; doubles each attempt (jittered to 50-100 %)
RETRY_MAX_DELAY_S = 8.0

DEFAULT_REGION = "us-east-1"
# S3 error codes that mean "try again later" rather than "this request is wrong".
_TRANSIENT_CODES = frozenset(
    {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling"}
)
_DENIED_CODES = frozenset({"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"})
# A full disk or quota may be freed before the next attempt; everything else local (read-only, denied) stays.
_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

T = TypeVar("T")


class StorageError(RuntimeError):
    """A storage operation failed: bad URI, missing bucket, rejected credentials, or retries exhausted.

    `transient` is True only when retries gave up on a failure that may pass (a later attempt may succeed)."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


# --------------------------------------------------------------------------------------------------------------
# Run ids and URIs


def new_run_id(now: datetime | None = None) -> str:
    """A fresh run id; later calls sort after earlier ones (to the microsecond)."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%S.%f}Z-{secrets.token_hex(3)}"


def join_uri(base: str, *parts: str) -> str:
    """`join_uri("s3://b/out", "runs", rid)` -> `s3://b/out/runs/rid`; the same for plain paths."""
    return "/".join([base.rstrip("/"), *(part.strip("/") for part in parts)])


def run_uri(output_uri: str, run_id: str) -> str:
    """The folder of one run under a job's `output.uri`."""
    if not RUN_ID_PATTERN.match(run_id):
        raise StorageError(f"run id {run_id!r} is not of the form produced by new_run_id()")
    return join_uri(output_uri, RUNS_DIR, run_id)


# --------------------------------------------------------------------------------------------------------------
# Locations: which filesystem, which path inside it, and how to name it in an error


@dataclass(frozen=True)
class _Location:
    fs: AbstractFileSystem
    path: str  # the filesystem's own path: "bucket/key" for S3, an absolute path on disk otherwise
    uri: str  # as the caller wrote it, for messages
    bucket: str | None = None  # None for local paths
    endpoint: str | None = None

    @property
    def is_local(self) -> bool:
        return self.bucket is None

    @property
    def where(self) -> str:
        """' at <endpoint>' for S3 (where a failure happened), nothing for local paths."""
        return "" if self.is_local else f" at {self.endpoint or 'the AWS default endpoint'}"

    def child(self, *parts: str) -> _Location:
        return _Location(self.fs, join_uri(self.path, *parts), join_uri(self.uri, *parts), self.bucket, self.endpoint)


def _locate(uri: str) -> _Location:
    if has_userinfo(uri):  # checked first: every message names the URI
        raise StorageError("a storage URI must not embed credentials (user:password@); use AWS_ACCESS_KEY_ID")
    if uri.startswith("s3://"):
        bucket = uri.removeprefix("s3://").split("/", 1)[0]
        if len(bucket) < 3:
            raise StorageError(f"{uri}: bucket names have at least 3 characters, got {bucket!r}")
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
        if endpoint and "@" in urlsplit(endpoint).netloc:  # checked first: every message names the endpoint
            raise StorageError("AWS_ENDPOINT_URL must not embed credentials (user:password@); use AWS_ACCESS_KEY_ID")
        return _Location(_s3_filesystem(endpoint), uri.removeprefix("s3://").rstrip("/"), uri, bucket, endpoint)
    if "://" in uri and not uri.startswith("file://"):
        raise StorageError(f"{uri}: unsupported scheme; use a plain path, file:// or s3://")
    path = Path(uri.removeprefix("file://")).expanduser().absolute()
    return _Location(LocalFileSystem(), str(path), uri)


def _s3_filesystem(endpoint: str | None) -> AbstractFileSystem:
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        # Without them botocore would probe instance metadata and ~/.aws; jobs get credentials by Secret only.
        raise StorageError(
            "s3:// needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment (spec.storage.secretRef)"
        )
    from s3fs import S3FileSystem  # lazily: only S3 users need it

    fs = S3FileSystem(
        key=key,
        secret=secret,
        endpoint_url=endpoint,
        client_kwargs={"region_name": os.environ.get("AWS_REGION") or DEFAULT_REGION},
        config_kwargs={"retries": {"mode": "standard", "total_max_attempts": 1}},
        use_listings_cache=False,  # a listing must show runs committed a moment ago by another pod
    )
    fs.retries = 1  # s3fs's own retry loop: off as well, `_with_retries` owns the policy
    return fs


# --------------------------------------------------------------------------------------------------------------
# Errors and retries


def _s3_code(error: BaseException) -> str | None:
    """The S3 error code ("NoSuchBucket", "503", ...) behind an error s3fs translated, if any."""
    seen: BaseException | None = error
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict) and "Error" in response:
            return str(response["Error"].get("Code"))
        seen = seen.__cause__
    return None


def _is_transient(error: BaseException) -> bool:
    if isinstance(error, ConnectionError | TimeoutError):
        return True
    if _s3_code(error) in _TRANSIENT_CODES:
        return True
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from s3fs.core import S3_RETRYABLE_ERRORS
    except ImportError:  # no S3 support installed, so the error did not come from S3
        return False
    return isinstance(error, (BotoConnectionError, *S3_RETRYABLE_ERRORS))


def _explain(error: BaseException, action: str, location: _Location) -> StorageError:
    """One clear sentence for a permanent failure, naming the URI, bucket and endpoint (never a credential)."""
    code = _s3_code(error)
    if not location.is_local and (code in _DENIED_CODES or isinstance(error, PermissionError)):
        return StorageError(
            f"{action} {location.uri}: access denied to bucket '{location.bucket}'{location.where} ({code or error}); "
            "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the job's storage Secret"
        )
    if code == "NoSuchBucket":
        return StorageError(f"{action} {location.uri}: bucket '{location.bucket}' does not exist{location.where}")
    if isinstance(error, FileNotFoundError):
        return StorageError(f"{action} {location.uri}: not found{location.where}")
    return StorageError(f"{action} {location.uri}{location.where}: {type(error).__name__}: {error}")


def _with_retries(action: str, location: _Location, operation: Callable[[], T]) -> T:
    """Run `operation`, retrying transient failures with exponential backoff; anything else fails at once."""
    attempt = 1
    while True:
        try:
            return operation()
        except (StorageError, IntegrityError):
            raise
        except Exception as error:
            if not _is_transient(error):
                raise _explain(error, action, location) from error
            if attempt == RETRY_ATTEMPTS:
                raise StorageError(
                    f"{action} {location.uri}: still failing after {attempt} attempts{location.where}: "
                    f"{type(error).__name__}: {error}",
                    transient=True,
                ) from error
            delay = min(RETRY_MAX_DELAY_S, RETRY_BASE_DELAY_S * 2 ** (attempt - 1))
            delay *= 0.5 + random.random() / 2  # noqa: S311 - jitter spreads out pods retrying together
            log.warning(
                "%s %s failed (%s); retry %d/%d in %.1fs",
                action,
                location.uri,
                error,
                attempt,
                RETRY_ATTEMPTS - 1,
                delay,
            )
            time.sleep(delay)
            attempt += 1


def _check_bucket(location: _Location) -> None:
    """Fail fast and clearly on a missing bucket or bad credentials, before any data moves."""
    if location.is_local:
        return

    def head_bucket() -> None:
        try:
            location.fs.call_s3("head_bucket", Bucket=location.bucket)
        except FileNotFoundError:
            raise StorageError(f"{location.uri}: bucket '{location.bucket}' does not exist{location.where}") from None

    _with_retries("open bucket for", location, head_bucket)


# --------------------------------------------------------------------------------------------------------------
# Small files: datasets, specs, metrics


def read_bytes(uri: str) -> bytes:
    location = _locate(uri)
    _check_bucket(location)
    return _with_retries("read", location, lambda: location.fs.cat_file(location.path))


def write_bytes(uri: str, data: bytes) -> None:
    """Replace the object at `uri` (locally via temp file + rename, so readers never see half a file)."""
    location = _locate(uri)
    if location.is_local:
        try:
            _write_local_atomically(Path(location.path), data)
        except OSError as error:
            raise local_error("write", uri, error) from error
        return
    _check_bucket(location)
    _with_retries("write", location, lambda: location.fs.pipe_file(location.path, data))


def exists(uri: str) -> bool:
    location = _locate(uri)
    _check_bucket(location)
    return _with_retries("check", location, lambda: location.fs.exists(location.path))


def remove_tree(uri: str) -> None:
    """Delete everything under `uri` (a folder or prefix); nothing there is not an error."""
    location = _locate(uri)
    if not location.is_local:
        _check_bucket(location)

    def remove() -> None:
        if location.fs.exists(location.path):
            location.fs.rm(location.path, recursive=True)

    _with_retries("delete", location, remove)


def local_error(action: str, uri: str, error: OSError) -> StorageError:
    """A local failure, retryable only when it is about space (a full disk or quota may be freed)."""
    return StorageError(f"{action} {uri}: {error.strerror or error}", transient=error.errno in _SPACE_ERRNOS)


def _write_local_atomically(path: Path, data: bytes) -> None:
    """Temp file + fsync + rename; on any failure (a full disk half way) the temp file is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        try:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            handle.close()
            Path(handle.name).unlink(missing_ok=True)
            raise
    try:
        Path(handle.name).replace(path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def check_writable(uri: str) -> None:
    """Fail now, not after training, when `uri` (a folder or prefix) cannot be written.

    Writes and deletes a small probe object there. StorageError names the URI: permanent for a read-only folder,
    denied credentials or a missing bucket, transient for a full disk or a storage outage that outlasted retries.
    """
    location = _locate(uri)
    name = f".memtune-write-probe-{secrets.token_hex(4)}"
    if location.is_local:
        probe = Path(location.path) / name
        try:
            probe.parent.mkdir(parents=True, exist_ok=True)
            _write_local_atomically(probe, b"")
            probe.unlink()
        except OSError as error:
            raise local_error("cannot write to", uri, error) from error
        return
    _check_bucket(location)
    target = location.child(name)
    _with_retries("write a probe object under", target, lambda: target.fs.pipe_file(target.path, b""))
    try:
        _with_retries("delete the probe object", target, lambda: target.fs.rm_file(target.path))
    except StorageError as error:  # writable is what matters; a leftover empty probe only costs a name
        log.warning("%s", error)


# --------------------------------------------------------------------------------------------------------------
# Artifact folders


def committed_runs(output_uri: str) -> list[str]:
    """URIs of the `{output}/runs/{run_id}` holding a manifest, newest first (the same on disk and on S3).

    Only folders named like a run id count (`new_run_id`): a copied `runs/old-backup` or a staging folder is
    never a run. Holding a manifest is the commit; whether its files are intact is for the reader to verify.
    """
    runs = _locate(join_uri(output_uri, RUNS_DIR))
    _check_bucket(runs)

    def run_ids() -> list[str]:
        try:
            entries = runs.fs.ls(runs.path, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        names = (PurePosixPath(entry.rstrip("/")).name for entry in entries)
        return sorted((name for name in names if RUN_ID_PATTERN.match(name)), reverse=True)

    committed = []
    for run_id in _with_retries("list runs in", runs, run_ids):
        manifest = runs.child(run_id, MANIFEST_NAME)
        if _with_retries("check", manifest, lambda m=manifest: m.fs.isfile(m.path)):
            committed.append(join_uri(output_uri, RUNS_DIR, run_id))
    return committed


def latest_committed_run(output_uri: str) -> str | None:
    """URI of the newest committed run of a job output, or None when no run has committed."""
    runs = committed_runs(output_uri)
    return runs[0] if runs else None


def read_committed_file(run_uri: str, name: str) -> bytes:
    """One file of a committed run, checked against the run's manifest (IntegrityError naming it otherwise)."""
    manifest = parse_manifest(read_bytes(join_uri(run_uri, MANIFEST_NAME)), run_uri)
    entry = manifest["files"].get(name)
    if entry is None:
        raise IntegrityError(f"{run_uri}: the manifest does not list {name}")
    data = read_bytes(join_uri(run_uri, name))
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise IntegrityError(f"{join_uri(run_uri, name)}: sha256 differs from the manifest")
    return data


def verify_committed(run_uri: str) -> dict[str, Any]:
    """Check every file of a committed folder (local or S3) against its manifest without keeping a copy."""
    location = _locate(run_uri)
    if location.is_local:
        return verify_folder(location.path)
    manifest = parse_manifest(read_bytes(join_uri(run_uri, MANIFEST_NAME)), run_uri)
    for name, entry in sorted(manifest["files"].items()):
        item = location.child(name)

        def digest(item: _Location = item) -> str:
            hasher = hashlib.sha256()
            try:
                with item.fs.open(item.path, "rb") as handle:
                    while chunk := handle.read(1 << 20):
                        hasher.update(chunk)
            except FileNotFoundError:
                raise IntegrityError(f"{item.uri}: listed in {MANIFEST_NAME} but missing") from None
            return hasher.hexdigest()

        if _with_retries("verify", item, digest) != entry["sha256"]:
            raise IntegrityError(f"{item.uri}: sha256 differs from the manifest")
    return manifest


def publish_folder(local_dir: str | Path, uri: str, on_uploaded: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Copy a committed local folder to `uri`: every listed file first, `manifest.json` last and create-once.

    The local folder is verified first, so a corrupt file is never published. Only files the manifest lists
    travel (a stray temp file does not). `on_uploaded(name)` is called as each file lands remotely (progress
    for logs). Returns the manifest.
    """
    source = Path(local_dir)
    manifest = verify_folder(source)
    names = sorted(manifest["files"])
    target = _locate(uri)
    if target.is_local:
        _publish_local(source, names, Path(target.path))
    else:
        _publish_remote(source, names, target, on_uploaded or (lambda name: None))
    log.info("published %d files to %s", len(names) + 1, uri)
    return manifest


def _publish_local(source: Path, names: list[str], target: Path) -> None:
    """Assemble the copy in a hidden sibling folder, then rename it into place: all of it appears, or none."""
    if target.exists() and any(target.iterdir()):
        raise StorageError(f"{target}: already exists and is not empty; runs are written once")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        for name in [*names, MANIFEST_NAME]:
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, staging / name)
        staging.replace(target)  # atomic; fails if another writer filled `target` meanwhile
    except OSError as error:
        raise StorageError(f"{target}: could not publish ({error})") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish_remote(source: Path, names: list[str], target: _Location, on_uploaded: Callable[[str], None]) -> None:
    _check_bucket(target)
    manifest = target.child(MANIFEST_NAME)
    if _with_retries("check", manifest, lambda: manifest.fs.exists(manifest.path)):
        raise StorageError(f"{target.uri}: already committed (has {MANIFEST_NAME}); runs are written once")
    for name in names:
        item = target.child(name)
        _with_retries("upload", item, lambda item=item, name=name: item.fs.put_file(str(source / name), item.path))
        on_uploaded(name)
    _with_retries("commit", manifest, lambda: _put_once(manifest, (source / MANIFEST_NAME).read_bytes()))


def _put_once(location: _Location, data: bytes) -> None:
    """Create-once write (If-None-Match: *). A 412 is fine only if our own earlier, retried attempt landed."""
    try:
        location.fs.pipe_file(location.path, data, mode="create")
    except OSError as error:  # s3fs raises FileExistsError, or OSError(EINVAL) when the 412 lacks a condition
        if not (isinstance(error, FileExistsError) or _s3_code(error) == "PreconditionFailed"):
            raise
        if location.fs.cat_file(location.path) != data:
            raise StorageError(f"{location.uri}: another writer committed a different manifest first") from None


def fetch_folder(uri: str, local_dir: str | Path) -> dict[str, Any]:
    """Download a committed folder and verify every checksum; return its manifest.

    Refuses a prefix without `manifest.json` (an interrupted or running upload). The copy is assembled in a
    hidden sibling folder and renamed into place only once verified, so `local_dir` is whole or absent. An
    existing `local_dir` with the same manifest is verified and reused (a cache hit); anything else there is
    an error rather than silently overwritten.
    """
    source = _locate(uri)
    _check_bucket(source)
    manifest_location = source.child(MANIFEST_NAME)

    def read_manifest_bytes() -> bytes:
        try:
            return manifest_location.fs.cat_file(manifest_location.path)
        except FileNotFoundError:
            raise StorageError(
                f"{uri}: no {MANIFEST_NAME}; the run never committed (interrupted, or still uploading)"
            ) from None

    manifest_bytes = _with_retries("read", manifest_location, read_manifest_bytes)
    target = Path(local_dir)
    if (target / MANIFEST_NAME).is_file() and (target / MANIFEST_NAME).read_bytes() == manifest_bytes:
        return verify_folder(target)
    if target.exists() and any(target.iterdir()):
        raise StorageError(f"{target}: already exists and holds something other than {uri}")

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        (staging / MANIFEST_NAME).write_bytes(manifest_bytes)
        manifest = read_manifest(staging)
        for name in sorted(manifest["files"]):
            _download(source.child(name), staging, name)
        try:
            verify_folder(staging)
        except IntegrityError as error:
            raise IntegrityError(f"{uri}: refused: {error}") from None
        try:
            staging.replace(target)
        except OSError:
            # Another process (a rank in the same pod) fetched the same folder first: keep its verified copy.
            if (target / MANIFEST_NAME).is_file() and (target / MANIFEST_NAME).read_bytes() == manifest_bytes:
                return verify_folder(target)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("fetched %d files from %s", len(manifest["files"]) + 1, uri)
    return manifest


def _download(item: _Location, staging: Path, name: str) -> None:
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise IntegrityError(f"{item.uri}: manifest lists a path outside the folder: {name!r}")
    destination = staging / relative
    destination.parent.mkdir(parents=True, exist_ok=True)

    def get() -> None:
        try:
            item.fs.get_file(item.path, str(destination))
        except FileNotFoundError:
            raise IntegrityError(f"{item.uri}: listed in {MANIFEST_NAME} but missing") from None

    _with_retries("download", item, get)
