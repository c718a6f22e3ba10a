"""The local spool: encoded images wait here between their audit record and their upload.

An image is written to the spool before its audit record is committed and removed once
its object is stored. If S3 is down or the worker dies in between, the spooled bytes are
uploaded later (`ldm-batch resume RUN`, or the next run of any sheet) without generating
again; that matters for C2PA-signed images, whose bytes a regeneration cannot repeat.
Each file is written whole (temporary file, then rename), so a spooled file is never torn.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


class Spool:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    def path(self, image_key: str) -> Path:
        path = (self.root / image_key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"image key {image_key!r} leaves the spool")
        return path

    def hold(self, image_key: str, data: bytes) -> None:
        path = self.path(image_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)

    def read(self, image_key: str, sha256: str) -> bytes | None:
        """The spooled bytes of an image, if present and holding the given digest."""
        path = self.path(image_key)
        if not path.is_file():
            return None
        data = path.read_bytes()
        return data if hashlib.sha256(data).hexdigest() == sha256 else None

    def release(self, image_key: str) -> None:
        self.path(image_key).unlink(missing_ok=True)

    def keys(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*.png") if p.is_file()) \
            if self.root.exists() else []
