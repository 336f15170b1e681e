"""Content-addressed artifact store on the local file system.

Layout under the store root::

    objects/ab/abcdef...          one file per distinct content, named by its sha256
    trees/<digest>/...            the artifact as registered (a file or a folder), hard links
                                  to the objects (copies where links are not possible)
    trees/<digest>.manifest.json  the manifest: kind, and per file its path, size and sha256

The manifest digest is the sha256 of the manifest's canonical JSON, so it names the whole
artifact. Every entry is written under a temporary name, flushed, and renamed into place: a
crash leaves temporary files (swept by `sweep`) but never a partial object or tree under its
final name. Registering the same content twice stores it once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import IntegrityError, InvalidArgumentError

__all__ = ["ArtifactStore", "Manifest", "hash_file"]

_CHUNK = 1 << 20


def hash_file(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


@dataclass(frozen=True)
class Manifest:
    """What an artifact is made of. `kind` is "file" (one entry, its file name) or "dir"."""

    kind: str
    files: tuple[tuple[str, int, str], ...]  # (relative posix path, size, sha256)

    def to_bytes(self) -> bytes:
        doc = {"kind": self.kind, "files": [list(f) for f in self.files]}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @property
    def size(self) -> int:
        return sum(f[1] for f in self.files)

    @staticmethod
    def from_bytes(data: bytes) -> Manifest:
        doc = json.loads(data)
        return Manifest(doc["kind"], tuple((p, int(s), h) for p, s, h in doc["files"]))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class ArtifactStore:
    """Files under `root`. Safe for concurrent use by threads and processes: every write is
    a rename of a complete temporary file, and equal content has equal names."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.trees = self.root / "trees"
        self.tmp = self.root / "tmp"
        for d in (self.objects, self.trees, self.tmp):
            d.mkdir(parents=True, exist_ok=True)

    # -- writing ---------------------------------------------------------------------------
    def put(self, source: str | os.PathLike[str]) -> Manifest:
        """Copy a file or folder into the store; returns its manifest. Idempotent."""
        src = Path(source)
        if src.is_file():
            files = [(src.name, src)]
            kind = "file"
        elif src.is_dir():
            files = sorted(
                (p.relative_to(src).as_posix(), p)
                for p in src.rglob("*")
                if p.is_file() and not p.is_symlink()
            )
            if not files:
                raise InvalidArgumentError(f"artifact folder {src} contains no files")
            kind = "dir"
        else:
            raise InvalidArgumentError(f"artifact path {src} is neither a file nor a folder")
        entries = []
        for rel, path in files:
            digest, size = self._put_object(path)
            entries.append((rel, size, digest))
        manifest = Manifest(kind, tuple(entries))
        self.add_tree(manifest)
        return manifest

    def add_object(self, digest: str, fill: Callable[[Path], None], what: str = "") -> None:
        """Install content fetched from elsewhere: `fill(path)` writes it to a temporary file,
        which goes in place only if its sha256 is `digest`, else IntegrityError naming `what`
        (e.g. the file and artifact it belongs to). A no-op when a verified copy is present."""
        final = self.object_path(digest)
        if final.exists():
            if hash_file(final)[0] == digest:
                return
            final.unlink()  # a damaged cached copy: replace it
        tmp = self.tmp / f"obj-{uuid.uuid4().hex}"
        try:
            fill(tmp)
            got, _ = hash_file(tmp)
            if got != digest:
                raise IntegrityError(
                    f"{what or 'object ' + digest} arrived altered (sha256 {got[:12]}..., "
                    f"expected {digest[:12]}...); refusing to load it"
                )
            final.parent.mkdir(exist_ok=True)
            os.chmod(tmp, 0o444)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def _put_object(self, path: Path) -> tuple[str, int]:
        # Known content (a re-registration, an unchanged shard) costs one read and no write.
        digest, size = hash_file(path)
        final = self.object_path(digest)
        if final.exists():
            return digest, size
        tmp = self.tmp / f"obj-{uuid.uuid4().hex}"
        h = hashlib.sha256()
        try:
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            if h.hexdigest() != digest:
                raise IntegrityError(f"{path} changed while it was being registered; retry")
            final.parent.mkdir(exist_ok=True)
            os.chmod(tmp, 0o444)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return digest, size

    def add_tree(self, manifest: Manifest) -> None:
        """Build the artifact's tree from its objects (all present) and write its manifest.
        Idempotent."""
        digest = manifest.digest
        final = self.trees / digest
        if final.exists() and self.manifest_path(digest).exists():
            return
        staging = self.tmp / f"tree-{uuid.uuid4().hex}"
        try:
            staging.mkdir()
            for rel, _, obj in manifest.files:
                dst = staging / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(self.object_path(obj), dst)
                except OSError:  # another file system or no hard links: copy
                    shutil.copyfile(self.object_path(obj), dst)
            # The tree goes in place before its manifest: a manifest names a complete tree.
            try:
                os.rename(staging, final)
            except OSError:
                if not final.is_dir():
                    raise
                shutil.rmtree(staging, ignore_errors=True)  # a concurrent put won
            tmp_manifest = self.tmp / f"manifest-{uuid.uuid4().hex}"
            tmp_manifest.write_bytes(manifest.to_bytes())
            os.replace(tmp_manifest, self.manifest_path(digest))
            _fsync_dir(self.trees)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    # -- reading ---------------------------------------------------------------------------
    def object_path(self, digest: str) -> Path:
        return self.objects / digest[:2] / digest

    def manifest_path(self, digest: str) -> Path:
        return self.trees / f"{digest}.manifest.json"

    def has(self, digest: str) -> bool:
        """Whether the artifact's manifest is in the store (its tree went in place first)."""
        return self.manifest_path(digest).exists()

    def manifest(self, digest: str) -> Manifest:
        """The stored manifest of `digest`; IntegrityError if it is missing or altered."""
        try:
            data = self.manifest_path(digest).read_bytes()
        except FileNotFoundError:
            raise IntegrityError(
                f"artifact {digest} is missing from the store {self.root}"
            ) from None
        manifest = Manifest.from_bytes(data)
        if manifest.digest != digest:
            raise IntegrityError(f"the manifest of artifact {digest} was altered")
        return manifest

    def artifact_path(self, digest: str, manifest: Manifest | None = None) -> Path:
        """Local path of the artifact: the file for a "file" artifact, else the folder."""
        m = manifest or self.manifest(digest)
        tree = self.trees / digest
        return tree / m.files[0][0] if m.kind == "file" else tree

    def verify(self, digest: str) -> Path:
        """Re-hash every file of the artifact against its manifest; returns its path.
        Raises IntegrityError naming the first file that differs, is missing or was added."""
        m = self.manifest(digest)
        tree = self.trees / digest
        expected = {rel: (size, sha) for rel, size, sha in m.files}
        present = {p.relative_to(tree).as_posix() for p in tree.rglob("*") if not p.is_dir()}
        extra = sorted(present - set(expected))
        if extra:
            raise IntegrityError(f"artifact {digest}: unexpected file {extra[0]!r} was added")
        for rel, (size, sha) in expected.items():
            path = tree / rel
            if not path.is_file():
                raise IntegrityError(f"artifact {digest}: file {rel!r} is missing")
            got, got_size = hash_file(path)
            if got != sha or got_size != size:
                raise IntegrityError(
                    f"artifact {digest}: file {rel!r} was modified (sha256 {got[:12]}..., "
                    f"expected {sha[:12]}...); refusing to load it"
                )
        return self.artifact_path(digest, m)

    def check(self, digest: str) -> None:
        """Re-hash the stored artifact (what `verify` does; the store is its own source)."""
        self.verify(digest)

    @property
    def location(self) -> str:
        """Where artifacts live, for messages."""
        return str(self.root)

    # -- maintenance -----------------------------------------------------------------------
    def remove_tree(self, digest: str) -> None:
        """Drop an artifact's tree and manifest (objects stay; `sweep` drops unused ones)."""
        self.manifest_path(digest).unlink(missing_ok=True)
        shutil.rmtree(self.trees / digest, ignore_errors=True)

    def sweep(self, keep_digests: set[str]) -> int:
        """Remove temporary files, trees not in `keep_digests` and objects no kept tree uses.
        Returns the number of entries removed. Run only while nothing registers."""
        removed = 0
        for p in self.tmp.iterdir():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed += 1
        used: set[str] = set()
        for p in self.trees.iterdir():
            digest = p.name.split(".", 1)[0]
            if digest not in keep_digests:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed += 1
        for digest in keep_digests:
            with contextlib.suppress(IntegrityError):
                used.update(sha for _, _, sha in self.manifest(digest).files)
        for sub in self.objects.iterdir():
            for obj in sub.iterdir():
                if obj.name not in used:
                    obj.unlink(missing_ok=True)
                    removed += 1
        return removed
