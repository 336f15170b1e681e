"""Artifacts in object storage through the S3 API (AWS S3, MinIO, Ceph RGW, GCS in interoperability
mode), with the local content-addressed store as a cache.

Layout under ``s3://BUCKET/PREFIX/``::

    objects/<sha256>          one object per distinct file content
    manifests/<digest>.json   the artifact's manifest; its sha256 is the artifact digest

Writing: the objects go up first, then the manifest, and only then does the registry commit the
version row, so a row always names a complete artifact in the bucket; an interrupted upload
leaves at most unreferenced objects or an unfinished multipart upload, which `sweep` removes.
Objects are written once: content already in the bucket (same name, same size) is not sent
again.

Reading: the first load on a host fetches the manifest and the objects into the local store,
checking each file's sha256 as it lands; later loads re-hash the cached copy. A cached copy that
no longer matches is fetched again; an object that arrives altered is refused.

URL: ``s3://BUCKET[/PREFIX][?endpoint_url=URL&region=NAME&profile=NAME&addressing_style=path]``.
Credentials, region and endpoint otherwise come from boto3's usual sources (``AWS_ACCESS_KEY_ID``
/ ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``, instance roles, ...); they
are never accepted in the URL itself.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from aiarch.redact import redact_url

from .errors import IntegrityError, InvalidArgumentError, RegistryError
from .store import ArtifactStore, Manifest

__all__ = ["ObjectArtifactStore", "S3Location", "StorageUnavailableError", "parse_s3_url"]

_QUERY_KEYS = ("endpoint_url", "region", "profile", "addressing_style")
_CHUNK = 1 << 20


class StorageUnavailableError(RegistryError):
    """The object store did not answer, refused the credentials, or lacks the bucket."""

    http_status = 503


@dataclass(frozen=True)
class S3Location:
    """A parsed ``s3://`` artifacts URL."""

    bucket: str
    prefix: str  # "" or "some/prefix/" (always ending in "/")
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    addressing_style: str | None = None

    @property
    def url(self) -> str:
        """The bucket and prefix as an ``s3://`` URL (no query), for messages."""
        return f"s3://{self.bucket}/{self.prefix}"


def parse_s3_url(url: str) -> S3Location:
    """Parse an artifacts URL; InvalidArgumentError names the expected form."""
    form = (
        "expected s3://BUCKET[/PREFIX][?endpoint_url=URL&region=NAME&profile=NAME"
        "&addressing_style=path|virtual]"
    )
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise InvalidArgumentError(f"invalid artifacts URL {redact_url(url)!r}; {form}")
    if "@" in parts.netloc:
        raise InvalidArgumentError(
            f"artifacts URL {redact_url(url)!r} carries credentials; give them through "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a profile (?profile=NAME) instead"
        )
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - set(_QUERY_KEYS))
    if unknown:
        raise InvalidArgumentError(
            f"artifacts URL {redact_url(url)!r}: unknown parameter {unknown[0]!r}; {form}"
        )
    style = query.get("addressing_style")
    if style not in (None, "path", "virtual", "auto"):
        raise InvalidArgumentError(f"addressing_style must be path, virtual or auto, got {style!r}")
    prefix = parts.path.strip("/")
    return S3Location(
        bucket=parts.netloc,
        prefix=f"{prefix}/" if prefix else "",
        endpoint_url=query.get("endpoint_url") or None,
        region=query.get("region") or None,
        profile=query.get("profile") or None,
        addressing_style=style,
    )


def _error_code(e: BaseException) -> str:
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _not_found(e: BaseException) -> bool:
    return _error_code(e) in ("404", "NoSuchKey", "NotFound")


class ObjectArtifactStore:
    """Artifacts in a bucket, cached in a local `ArtifactStore`. Same methods as the local store,
    used by `Registry`. Thread-safe (boto3 clients are; writes are content-addressed)."""

    def __init__(
        self,
        url: str,
        cache: ArtifactStore,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        attempts: int = 3,
    ):
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise InvalidArgumentError(
                "artifacts on object storage need boto3: pip install 'aiarch[s3]'"
            ) from None

        self.loc = parse_s3_url(url)
        self.local = cache
        self.root = cache.root
        self.trees = cache.trees
        session = boto3.session.Session(profile_name=self.loc.profile)
        config = Config(
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"max_attempts": attempts, "mode": "standard"},
            s3={"addressing_style": self.loc.addressing_style or "auto"},
        )
        self.client: Any = session.client(
            "s3", endpoint_url=self.loc.endpoint_url, region_name=self.loc.region, config=config
        )
        endpoint = self.loc.endpoint_url or self.client.meta.endpoint_url
        self.location = redact_url(f"{self.loc.url} (endpoint {endpoint})")
        """Where artifacts live, credentials removed, for messages."""

    # -- keys ------------------------------------------------------------------------------
    def _object_key(self, sha: str) -> str:
        return f"{self.loc.prefix}objects/{sha}"

    def _manifest_key(self, digest: str) -> str:
        return f"{self.loc.prefix}manifests/{digest}.json"

    def _unavailable(self, action: str, e: BaseException) -> StorageUnavailableError:
        code = _error_code(e)
        hint = ""
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            hint = " (check the credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / profile)"
        elif code == "NoSuchBucket":
            hint = f" (bucket {self.loc.bucket!r} does not exist)"
        return StorageUnavailableError(redact_url(f"cannot {action} {self.location}: {e}{hint}"))

    def _head_size(self, key: str, action: str = "read") -> int | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return int(self.client.head_object(Bucket=self.loc.bucket, Key=key)["ContentLength"])
        except ClientError as e:
            if _not_found(e):
                return None
            raise self._unavailable(action, e) from e
        except BotoCoreError as e:
            raise self._unavailable(action, e) from e

    # -- writing ---------------------------------------------------------------------------
    def put(self, source: str | os.PathLike[str]) -> Manifest:
        """Copy a file or folder into the local store and upload what the bucket lacks:
        objects first, the manifest last. Raises StorageUnavailableError when the bucket
        cannot be written (nothing is committed by the caller then)."""
        from botocore.exceptions import BotoCoreError, ClientError

        manifest = self.local.put(source)
        action = "upload the artifact to"
        try:
            for sha, size in sorted({(sha, size) for _, size, sha in manifest.files}):
                key = self._object_key(sha)
                if self._head_size(key, action) != size:
                    self.client.upload_file(str(self.local.object_path(sha)), self.loc.bucket, key)
            key = self._manifest_key(manifest.digest)
            data = manifest.to_bytes()
            if self._head_size(key, action) != len(data):
                self.client.put_object(Bucket=self.loc.bucket, Key=key, Body=data)
        except (ClientError, BotoCoreError) as e:
            raise self._unavailable(action, e) from e
        except Exception as e:  # boto3's transfer manager wraps errors it met in threads
            if type(e).__module__.startswith(("boto3", "s3transfer")):
                raise self._unavailable(action, e) from e
            raise
        return manifest

    def has(self, digest: str) -> bool:
        """Whether the bucket holds the artifact's manifest."""
        return self._head_size(self._manifest_key(digest)) is not None

    # -- reading ---------------------------------------------------------------------------
    def artifact_path(self, digest: str, manifest: Manifest | None = None) -> Path:
        """Local path of the artifact in the cache (see `verify`, which fills it)."""
        return self.local.artifact_path(digest, manifest)

    def _fetch_manifest(self, digest: str) -> Manifest:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self.client.get_object(Bucket=self.loc.bucket, Key=self._manifest_key(digest))
            data = body["Body"].read()
        except ClientError as e:
            if _not_found(e):
                raise IntegrityError(
                    f"artifact {digest}: its manifest is missing from {self.location}"
                ) from None
            raise self._unavailable("read", e) from e
        except BotoCoreError as e:
            raise self._unavailable("reach", e) from e
        if hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(
                f"artifact {digest}: its manifest in {self.location} was altered; refusing it"
            )
        return Manifest.from_bytes(data)

    def _object_chunks(self, digest: str, rel: str, sha: str) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self.client.get_object(Bucket=self.loc.bucket, Key=self._object_key(sha))
            yield from body["Body"].iter_chunks(_CHUNK)
        except ClientError as e:
            if _not_found(e):
                raise IntegrityError(
                    f"artifact {digest}: file {rel!r} (object {self._object_key(sha)}) is "
                    f"missing from {self.location}"
                ) from None
            raise self._unavailable("read", e) from e
        except BotoCoreError as e:
            raise self._unavailable("reach", e) from e

    def verify(self, digest: str) -> Path:
        """The artifact's verified local path: the cached copy re-hashed, or (first load on
        this host, or a damaged cache) fetched from the bucket with every file's sha256 checked
        as it arrives. Raises IntegrityError naming the file that is missing or altered."""
        if self.local.has(digest):
            try:
                return self.local.verify(digest)
            except IntegrityError:
                self.local.remove_tree(digest)  # the bucket is the source: fetch it again
        manifest = self._fetch_manifest(digest)
        for rel, _, sha in manifest.files:

            def fill(tmp: Path, rel: str = rel, sha: str = sha) -> None:
                with open(tmp, "wb") as f:
                    for chunk in self._object_chunks(digest, rel, sha):
                        f.write(chunk)

            what = f"artifact {digest}: file {rel!r} (object {self._object_key(sha)}) from {self.location}"
            self.local.add_object(sha, fill, what)
        self.local.add_tree(manifest)
        return self.local.artifact_path(digest, manifest)

    def check(self, digest: str) -> None:
        """Re-hash the bucket's copy of the artifact (not the cache): IntegrityError names the
        file that is missing or altered."""
        manifest = self._fetch_manifest(digest)
        for rel, size, sha in manifest.files:
            h = hashlib.sha256()
            n = 0
            for chunk in self._object_chunks(digest, rel, sha):
                h.update(chunk)
                n += len(chunk)
            if h.hexdigest() != sha or n != size:
                raise IntegrityError(
                    f"artifact {digest}: file {rel!r} (object {self._object_key(sha)}) in "
                    f"{self.location} was modified (sha256 {h.hexdigest()[:12]}..., expected "
                    f"{sha[:12]}...)"
                )

    # -- maintenance -----------------------------------------------------------------------
    def remove_tree(self, digest: str) -> None:
        """Drop the cached copy; the bucket's entries go at the next `sweep` (another host may
        be registering the same content right now)."""
        self.local.remove_tree(digest)

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.loc.bucket, Prefix=prefix
        )
        for page in pages:
            yield from page.get("Contents", [])

    def sweep(self, keep_digests: set[str], grace_s: float = 3600.0) -> int:
        """Remove bucket manifests and objects that no kept artifact uses, and unfinished
        multipart uploads, when older than `grace_s` (younger ones may belong to a registration
        in flight on another host); then sweep the local cache. Returns the count removed."""
        from botocore.exceptions import BotoCoreError, ClientError

        cutoff = time.time() - grace_s
        removed = 0
        try:
            used: set[str] = set()
            for digest in keep_digests:
                try:
                    m = self.local.manifest(digest) if self.local.has(digest) else None
                except IntegrityError:
                    m = None
                if m is None:
                    try:
                        m = self._fetch_manifest(digest)
                    except IntegrityError:
                        continue  # a broken version: `verify` reports it
                used.update(sha for _, _, sha in m.files)
            doomed: list[str] = []
            base = f"{self.loc.prefix}manifests/"
            for obj in self._list(base):
                digest = obj["Key"][len(base) :].removesuffix(".json")
                if digest not in keep_digests and obj["LastModified"].timestamp() < cutoff:
                    doomed.append(obj["Key"])
            base = f"{self.loc.prefix}objects/"
            for obj in self._list(base):
                if obj["Key"][len(base) :] not in used and obj["LastModified"].timestamp() < cutoff:
                    doomed.append(obj["Key"])
            for start in range(0, len(doomed), 1000):
                batch = [{"Key": k} for k in doomed[start : start + 1000]]
                self.client.delete_objects(Bucket=self.loc.bucket, Delete={"Objects": batch})
            removed += len(doomed)
            uploads = self.client.list_multipart_uploads(
                Bucket=self.loc.bucket, Prefix=self.loc.prefix
            ).get("Uploads", [])
            for up in uploads:
                if up["Initiated"].timestamp() < cutoff:
                    self.client.abort_multipart_upload(
                        Bucket=self.loc.bucket, Key=up["Key"], UploadId=up["UploadId"]
                    )
                    removed += 1
        except (ClientError, BotoCoreError) as e:
            raise self._unavailable("sweep", e) from e
        return removed + self.local.sweep(keep_digests)
