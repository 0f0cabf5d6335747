"""The commit record of an artifact folder: `manifest.json` with the sha256 of every other file.

Writers put every file in place first and the manifest last; its presence is the commit. Readers call
`verify_folder` before deserialising anything, so a truncated or tampered file is refused by name.
No torch here: the operator, the storage layer and the trainer all share it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
_CHUNK = 1 << 20


class IntegrityError(RuntimeError):
    """An artifact folder is uncommitted, incomplete or does not match its manifest."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def build_manifest(folder: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Checksums of every file under `folder` (relative POSIX paths), the manifest itself excluded."""
    root = Path(folder)
    files = {
        path.relative_to(root).as_posix(): {"sha256": sha256_file(path), "size": path.stat().st_size}
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME
    }
    return {"format_version": FORMAT_VERSION, **(extra or {}), "files": files}


def write_manifest(folder: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `manifest.json` atomically (temp file + rename) after everything else is in place."""
    manifest = build_manifest(folder, extra)
    target = Path(folder) / MANIFEST_NAME
    temporary = target.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    temporary.replace(target)
    return manifest


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise IntegrityError(f"{folder}: no {MANIFEST_NAME}; the run never committed (it may have been interrupted)")
    return parse_manifest(path.read_bytes(), str(path))


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def parse_manifest(raw: bytes, where: str) -> dict[str, Any]:
    """A manifest's bytes as a checked table: every entry an object with a sha256, every name inside the folder.

    Raises IntegrityError naming `where` and the entry, never AttributeError or KeyError on a damaged file."""
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise IntegrityError(f"{where}: unreadable manifest ({type(error).__name__})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise IntegrityError(f"{where}: manifest has no 'files' table")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IntegrityError(f"{where}: format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}")
    for name, entry in manifest["files"].items():
        parts = PurePosixPath(name).parts
        if not name or name.startswith("/") or "\\" in name or ".." in parts or name == MANIFEST_NAME:
            raise IntegrityError(f"{where}: manifest lists a path outside the folder: {name!r}")
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise IntegrityError(f"{where}: manifest entry {name!r} is not an object with a sha256")
    return manifest


def verify_folder(folder: str | Path) -> dict[str, Any]:
    """Check every file listed in the manifest against its sha256; return the manifest or raise naming the file."""
    manifest = read_manifest(folder)
    root = Path(folder)
    for name, entry in manifest["files"].items():
        path = root / name
        if not path.is_file():
            raise IntegrityError(f"{path}: listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != entry.get("sha256"):
            expected = entry["sha256"][:12]
            raise IntegrityError(f"{path}: sha256 {actual[:12]}… does not match the manifest ({expected}…)")
    return manifest
