"""Storage: images into S3 through boto3, delivered or quarantined by prefix.

`s3_client(settings)` is the one client factory. Puts are conditional (If-None-Match), so
two workers or a resumed run never overwrite an object; an existing object with the same
sha256 counts as stored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import BaseModel

from ldm_batch.config import Settings
from ldm_batch.problems import ParameterInvalid, Problem

Placement = Literal["delivery", "quarantine"]


class StoredImage(BaseModel):
    bucket: str
    key: str
    version_id: str | None
    sha256: str
    size: int


class StorageError(Exception):
    pass


# S3 error codes, in one place: what a missing object and a failed If-None-Match answer.
NOT_FOUND = ("404", "NoSuchKey", "NotFound")
ALREADY_EXISTS = ("PreconditionFailed", "412")


def _code(exc: ClientError) -> str:
    return exc.response["Error"]["Code"]


def s3_client(settings: Settings):
    secret = settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
    return boto3.client(
        "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id, aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=30,
                      signature_version="s3v4"),
    )


class ObjectStore:
    def __init__(self, settings: Settings):
        self.client = s3_client(settings)
        self.bucket = settings.s3_bucket
        self.prefixes = {"delivery": settings.delivery_prefix, "quarantine": settings.quarantine_prefix}

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) not in ("404", "NoSuchBucket"):
                raise
            try:
                self.client.create_bucket(Bucket=self.bucket)
            except ClientError as exc:  # another run created it meanwhile
                if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def object_key(self, placement: Placement, image_key: str) -> str:
        return self.prefixes[placement] + image_key

    def put_image(self, placement: Placement, image_key: str, data: bytes, metadata: dict[str, str]) -> StoredImage:
        key = self.object_key(placement, image_key)
        sha = hashlib.sha256(data).hexdigest()
        try:
            response = self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType="image/png", IfNoneMatch="*",
                Metadata={**metadata, "image-key": image_key, "sha256": sha})
            version = response.get("VersionId")
        except ClientError as exc:
            if _code(exc) not in ALREADY_EXISTS:
                raise
            existing = self.head(key)
            if existing is None or existing["Metadata"].get("sha256") != sha:
                raise StorageError(f"s3://{self.bucket}/{key} exists with different content") from None
            version = existing.get("VersionId")
        return StoredImage(bucket=self.bucket, key=key, version_id=version, sha256=sha, size=len(data))

    def copy_image(self, image_key: str, source: Placement, target: Placement, sha256: str) -> StoredImage:
        """Copy an image between placements, checking it still holds the audited content."""
        source_key = self.object_key(source, image_key)
        data = self.get(source_key)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise StorageError(f"s3://{self.bucket}/{source_key} does not hold the audited content")
        metadata = (self.head(source_key) or {}).get("Metadata", {})
        return self.put_image(target, image_key, data, {"run-id": metadata.get("run-id", "")})

    def presigned_url(self, key: str, expires_seconds: int = 300) -> str:
        """A short-lived GET link to one object (objects are never public)."""
        return self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                                  ExpiresIn=expires_seconds)

    def put_report(self, key: str, data: bytes, content_type: str = "image/png") -> str:
        """Store a run report (contact sheet) under the reports prefix; returns its key."""
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        return key

    def head(self, key: str) -> dict | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in NOT_FOUND:
                return None
            raise

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def get_many(self, keys: list[str | None]) -> list[bytes | None]:
        """The objects' bytes in order (None for a None key), fetched 8 at a time: a contact
        sheet's 64 images took 0.4 s one after another."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(lambda key: self.get(key) if key else None, keys))

    def get_or_none(self, key: str) -> bytes | None:
        try:
            return self.get(key)
        except ClientError as exc:
            if _code(exc) in NOT_FOUND:
                return None
            raise

    def sha256(self, key: str) -> str:
        """The sha256 of an object's bytes, streamed: an object may be larger than memory."""
        digest = hashlib.sha256()
        for chunk in self.client.get_object(Bucket=self.bucket, Key=key)["Body"].iter_chunks(1 << 20):
            digest.update(chunk)
        return digest.hexdigest()

    def put_new(self, key: str, data: bytes, metadata: dict[str, str] | None = None,
                content_type: str = "application/octet-stream") -> bool:
        """Put an object only if the key is free (If-None-Match); False when it exists."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, Metadata=metadata or {},
                                   ContentType=content_type, IfNoneMatch="*")
            return True
        except ClientError as exc:
            if _code(exc) in ALREADY_EXISTS:
                return False
            raise

    def put_locked(self, key: str, data: bytes, retain_until) -> None:
        """Put an object that must not change: under S3 Object Lock (compliance mode) where the
        bucket has it, else write-once (If-None-Match) through this client."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="application/json",
                                   ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=retain_until)
        except ClientError as exc:
            if _code(exc) not in ("InvalidRequest", "InvalidBucketState", "ObjectLockConfigurationNotFoundError",
                                  "NotImplemented", "400", "501"):
                raise
            self.put_new(key, data, content_type="application/json")

    def copy(self, source_key: str, target_key: str) -> bool:
        """Copy an object within the bucket; False when the source is gone."""
        try:
            self.client.copy_object(Bucket=self.bucket, Key=target_key,
                                    CopySource={"Bucket": self.bucket, "Key": source_key})
            return True
        except ClientError as exc:
            if _code(exc) in NOT_FOUND:
                return False
            raise

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def children(self, prefix: str) -> list[dict]:
        """The objects directly under a prefix (not in its sub-folders), with their LastModified."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix,
                                                                      Delimiter="/")
        return [obj for page in pages for obj in page.get("Contents", [])]

    def image_keys(self) -> list[str]:
        """Keys of all delivered and quarantined images (not the run reports)."""
        return self.keys(self.prefixes["delivery"]) + self.keys(self.prefixes["quarantine"])

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def export_path(root: Path, key: str) -> Path:
    """Where an object is copied under a local folder; a key that would land outside it
    (`../`, an absolute path: some S3 stores accept such keys) is refused."""
    root = root.resolve()
    target = (root / key.lstrip("/")).resolve()
    if not target.is_relative_to(root) or target == root or key.startswith("/"):
        raise ValueError(f"object key {key!r} would be written outside {root}")
    return target


def check_sheet_location(uri: str, settings: Settings) -> None:
    """Refuse a sheet location a flow must not read with the pipeline's credentials: another
    bucket, a key outside the inbox and sheets prefixes, or a local file outside `sheet_roots`."""
    if uri.startswith("s3://"):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if (bucket != settings.s3_bucket or ".." in key.split("/")
                or not key.startswith((settings.inbox_prefix, settings.sheets_prefix))):
            raise ParameterInvalid([Problem(file=uri, message=(
                f"sheets are read from s3://{settings.s3_bucket}/{settings.sheets_prefix} or "
                f"s3://{settings.s3_bucket}/{settings.inbox_prefix} only"))])
        return
    path = Path(uri).resolve()
    if not any(path.is_relative_to(Path(root).resolve()) for root in settings.sheet_roots):
        raise ParameterInvalid([Problem(file=uri, message=(
            "local sheets are read only from the folders in LDM_BATCH_SHEET_ROOTS"
            + (f" ({', '.join(map(str, settings.sheet_roots))})" if settings.sheet_roots else " (none set)")
            + f"; or put the sheet under s3://{settings.s3_bucket}/{settings.sheets_prefix}"))])


def read_source(uri: str, settings: Settings, check_size: Callable[[str, int], None]) -> tuple[str, bytes]:
    """The name and bytes of a local file or an s3://bucket/key object; `check_size(name,
    size)` sees the size first and may refuse it before anything is read."""
    if uri.startswith("s3://"):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        name, client = key.rsplit("/", 1)[-1], s3_client(settings)
        check_size(name, client.head_object(Bucket=bucket, Key=key)["ContentLength"])
        return name, client.get_object(Bucket=bucket, Key=key)["Body"].read()
    path = Path(uri)
    check_size(path.name, path.stat().st_size)
    return path.name, path.read_bytes()
