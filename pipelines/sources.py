"""Where curate's inputs come from: local files, folders and globs (pipelines/storage.py), or
fsspec URLs (`s3://bucket/logs/2026-11-*.jsonl.gz`, `gs://`, `az://`, `https://`, `hf://`)
wherever that filesystem's package is installed (s3fs, gcsfs, adlfs, huggingface_hub).

Remote files are streamed like local ones (fsspec reads in blocks; `.gz` is decompressed as
it is read), never downloaded whole first. Credentials come from the environment the
filesystem library reads (AWS_* and ~/.aws for S3, GOOGLE_APPLICATION_CREDENTIALS, AZURE_*,
HF_TOKEN); `curate.storage_options` carries only non-secret options such as an endpoint.

An input is identified by its content: a local file by its sha256, a remote object by the
checksum its store keeps (S3's ETag, GCS's md5), else by the sha256 of its streamed bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path
from typing import IO, Any

from pipelines.storage import LOG_SUFFIXES, InputError, file_sha256, open_log, resolve_inputs

_STORE_CHECKSUMS = ("ETag", "etag", "md5Hash", "content_md5", "sha256")


def is_url(path: str) -> bool:
    return "://" in path


_FILESYSTEMS: dict[tuple[str, str, tuple[tuple[str, str], ...]], Any] = {}
_CREDENTIAL_ENV = ("AWS_", "GOOGLE_", "GCS", "AZURE_", "HF_", "FSSPEC_")


def _filesystem(url: str, storage_options: dict[str, Any]) -> tuple[Any, str]:
    """The filesystem for a URL and the path within it. One instance per protocol, options
    and credential environment: fsspec's own cache would keep serving an instance made
    before the environment changed (rotated keys, another endpoint)."""
    import fsspec

    protocol = url.split("://", 1)[0]
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_CREDENTIAL_ENV)))
    key = (protocol, json.dumps(storage_options, sort_keys=True, default=str), env)
    fs = _FILESYSTEMS.get(key)
    if fs is None:
        try:
            fs = fsspec.filesystem(protocol, skip_instance_cache=True, **storage_options)
        except (ImportError, ValueError) as exc:
            raise InputError(f"input {url!r}: cannot open {protocol}:// URLs ({str(exc).splitlines()[0]}); install "
                             f"the fsspec package for it (s3fs for s3://, gcsfs for gs://, adlfs for az://)") from None
        _FILESYSTEMS[key] = fs
    return fs, fs._strip_protocol(url)


def resolve(patterns: list[str], storage_options: dict[str, Any]) -> list[str]:
    """Local patterns as `storage.resolve_inputs` resolves them, then URL patterns (globs and
    prefixes expanded by their filesystem), each sorted; a pattern that matches nothing is an
    error."""
    files = [str(p) for p in resolve_inputs([p for p in patterns if not is_url(p)])] if any(
        not is_url(p) for p in patterns) else []
    remote: set[str] = set()
    for pattern in (p for p in patterns if is_url(p)):
        fs, path = _filesystem(pattern, storage_options)
        try:
            if any(ch in path for ch in "*?["):
                matches = [m for m in fs.glob(path) if fs.isfile(m)]
            elif fs.isdir(path):
                matches = [m for m in fs.find(path) if m.endswith(LOG_SUFFIXES)]
            else:
                matches = [path] if fs.isfile(path) else []
        except (OSError, PermissionError) as exc:
            raise InputError(f"input {pattern!r}: {type(exc).__name__}: {exc}") from None
        if not matches:
            raise InputError(f"input {pattern!r} matches no log file")
        remote.update(fs.unstrip_protocol(m) for m in matches)
    return files + sorted(remote)


def content_id(path: str, storage_options: dict[str, Any]) -> tuple[str, str, int]:
    """(kind, value, bytes): ("sha256", hex, size) or ("etag", the store's checksum, size)."""
    if not is_url(path):
        return "sha256", file_sha256(Path(path)), Path(path).stat().st_size
    fs, inner = _filesystem(path, storage_options)
    info = fs.info(inner)
    size = int(info.get("size") or 0)
    for key in _STORE_CHECKSUMS:
        if info.get(key):
            return "etag", f"{key}:{str(info[key]).strip(chr(34))}", size
    digest = hashlib.sha256()
    with fs.open(inner, "rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return "sha256", digest.hexdigest(), size


def open_input(path: str, storage_options: dict[str, Any]) -> tuple[IO[bytes], IO[bytes]]:
    """(line reader, raw file) for a local path or a URL; `.gz` is decompressed as it streams."""
    if not is_url(path):
        return open_log(Path(path))
    fs, inner = _filesystem(path, storage_options)
    raw = fs.open(inner, "rb")
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    return raw, raw
