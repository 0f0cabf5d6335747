"""The commit record of an artifact folder: `manifest.json` with the sha256 of every other file.

Writers put every file in place first and the manifest last; its presence is the commit. Readers call
`verify_folder` before deserialising anything, so a truncated or tampered file is refused by name.
No torch here: the operator, the storage layer and the trainer all share it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
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
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IntegrityError(f"{path}: unreadable manifest ({error})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise IntegrityError(f"{path}: manifest has no 'files' table")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IntegrityError(f"{path}: format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}")
    return manifest


def verify_folder(folder: str | Path) -> dict[str, Any]:
    """Check every file listed in the manifest against its sha256; return the manifest or raise naming the file."""
    manifest = read_manifest(folder)
    root = Path(folder)
    for name, entry in manifest["files"].items():
        path = root / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise IntegrityError(f"{folder}: manifest lists a path outside the folder: {name!r}")
        if not path.is_file():
            raise IntegrityError(f"{path}: listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != entry.get("sha256"):
            expected = str(entry.get("sha256"))[:12]
            raise IntegrityError(f"{path}: sha256 {actual[:12]}… does not match the manifest ({expected}…)")
    return manifest
