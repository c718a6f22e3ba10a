"""Is this file ours? What made it, and who approved it? (`ldm-batch provenance check`)

A copy of a delivered image may have passed through a CMS: resized, re-encoded as JPEG or
WebP, its metadata stripped. The check reads every layer the copy still carries and looks
for its audit record, most certain first:

    the file's sha256           -> the stored object itself                        certain
    the pixels' sha256          -> the same pixels, metadata changed or stripped     certain
    the watermark's id          -> a resized or re-encoded copy (images >= 256 px)   high, when
                                   the perceptual hash agrees; medium otherwise
    the perceptual hash alone   -> a copy whose watermark did not survive, or a      low: a look-alike,
                                   small image that never carried one               and only when
                                                                                    one record fits

A perceptual match says only that the copy looks like one of our images: an image made
elsewhere (or by the same model from another seed) can look the same, so it is reported as
a look-alike for a person to compare, never as confirmed. The C2PA layer (a signature over
the bytes) is the proof, and survives only untouched copies. No match means "not found in
this audit log", never "certainly not made here".
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from typing import Literal

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel

from ldm_batch.audit import AuditLog
from ldm_batch.policies import Watermark
from ldm_batch.problems import Problem, Refused
from ldm_batch.provenance import TRAINED_ALGORITHMIC_MEDIA, WATERMARK_MIN_SIZE, perceptual_hash, pixels_digest, read_watermark

MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
# pHash distances (of 64 bits): a resized, re-encoded copy of an image stays within a few bits
# (bench/provenance.py measures it); a different picture is rarely this close.
PERCEPTUAL_MATCH = 8
WATERMARK_AGREES = 16  # a watermark match whose picture is this close is the same image
# Widths a watermark is also read at: a resized copy is scaled back to the sizes images are made
# at, from a copy shrunk to 40% to one enlarged by half.
GENERATED_WIDTHS = (256, 512, 768, 1024, 1536, 2048)
RESIZED_BY = (0.4, 1.5)
MAX_PIXELS = 40_000_000  # larger files are refused, not decoded


class C2paLayer(BaseModel):
    present: bool = False
    state: str | None = None  # Trusted (chains to a configured anchor), Valid (signature only), Invalid
    signer: str | None = None
    pixels_changed: bool | None = None  # the hash binding no longer matches: content edited after signing
    problems: list[str] = []


class Match(BaseModel):
    image_key: str
    asset_id: str
    campaign: str
    run_id: str
    record_seq: int
    decision: str  # the latest: delivered, quarantined, approved, rejected
    reviewer: str | None
    model: str | None
    model_license: str | None
    method: Literal["sha256", "pixels", "watermark", "perceptual"]
    confidence: Literal["certain", "high", "medium", "low"]
    detail: str


class FileCheck(BaseModel):
    file: str
    format: str | None
    sha256: str
    size: tuple[int, int]
    c2pa: C2paLayer
    xmp_source_type: str | None
    parameters: bool  # the "parameters" text chunk is still there
    watermark_id: str | None  # the id read from the pixels, when it names a record
    perceptual_hash: str
    layers: list[str]  # the marks that survived in this copy
    match: Match | None
    candidates: list[str] = []  # image keys that fit equally well, when no single one does
    verdict: str


def check_file(data: bytes, name: str, log: AuditLog, watermark: Watermark,
               trust_anchors: str | None = None) -> FileCheck:
    """Every layer of one image file, and the audit record it leads to."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:  # checked before decoding: no decompression bombs
            raise Refused([Problem(file=name, message=f"{image.width}x{image.height} is over the {MAX_PIXELS:,} "
                                                      "pixels this check reads; scale the copy down first")])
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise Refused([Problem(file=name, message="not an image this check reads; it accepts PNG, JPEG and WebP "
                                                  "files")]) from None
    sha256 = hashlib.sha256(data).hexdigest()
    c2pa = read_c2pa_layer(data, MIME.get(image.format or ""), trust_anchors)
    xmp = _xmp_source_type(image)
    phash = perceptual_hash(image)
    match, candidates, mark_id = _find(log, image, sha256, phash, watermark)
    layers = [layer for layer, present in (("c2pa", c2pa.present), ("xmp", xmp is not None),
                                           ("parameters", "parameters" in image.info),
                                           ("watermark", mark_id is not None)) if present]
    return FileCheck(file=name, format=image.format, sha256=sha256, size=image.size, c2pa=c2pa, xmp_source_type=xmp,
                     parameters="parameters" in image.info, watermark_id=mark_id, perceptual_hash=phash,
                     layers=layers, match=match, candidates=candidates,
                     verdict=_verdict(match, candidates, c2pa, xmp))


def _find(log: AuditLog, image: Image.Image, sha256: str, phash: str,
          watermark: Watermark) -> tuple[Match | None, list[str], str | None]:
    """The record the file leads to (or the equally likely ones), and the watermark id read."""
    for method, found in (("sha256", log.query(kind="image", image_sha256=sha256)),
                          ("pixels", log.query(kind="image", pixels_sha256=pixels_digest(image)))):
        if found:
            detail = "the stored object itself" if method == "sha256" else "the same pixels; metadata changed"
            return _match(log, found[0], method, "certain", detail), [], found[0].get("watermark_id")
    if (marked := _watermark_match(log, image, phash, watermark)) is not None:
        record, mark_id, errors = marked
        distance = _distance(phash, record.get("perceptual_hash"))
        agrees = distance is not None and distance <= WATERMARK_AGREES
        detail = (f"watermark id {mark_id} ({errors} of {watermark.bits} bits read wrong); perceptual hash "
                  + (f"{distance} of 64 bits apart" if distance is not None else "not recorded")
                  + ("" if agrees else ": the picture differs from the record's (edited, cropped, or the mark copied)"))
        return _match(log, record, "watermark", "high" if agrees else "medium", detail), [], mark_id
    near = sorted((d, key) for key, recorded in log.perceptual_hashes().items()
                  if (d := _distance(phash, recorded)) is not None and d <= PERCEPTUAL_MATCH)
    if len(near) == 1:
        distance, key = near[0]
        record = log.query(kind="image", image_key=key)[0]
        detail = f"perceptual hash {distance} of 64 bits apart; no watermark or metadata left to confirm it"
        return _match(log, record, "perceptual", "low", detail), [], None
    return None, [key for _, key in near], None


def _watermark_match(log: AuditLog, image: Image.Image, phash: str,
                     watermark: Watermark) -> tuple[dict, str, int] | None:
    """The record whose watermark id the pixels carry, read at the copy's size and at the sizes
    images are generated at (a resized copy scaled back). A read with up to `max_bit_errors`
    wrong bits names a record when that record's picture agrees, and only when exactly one does."""
    if min(image.size) < WATERMARK_MIN_SIZE // 2:
        return None
    known = log.watermark_ids()
    if not known:
        return None
    width, height = image.size
    sizes = [(width, height)] if width <= max(GENERATED_WIDTHS) else []  # no image is made larger
    sizes += [(w, round(height * w / width)) for w in GENERATED_WIDTHS
              if w != width and RESIZED_BY[0] <= width / w <= RESIZED_BY[1]]
    for size in sizes:
        if min(size) < WATERMARK_MIN_SIZE:
            continue
        read = read_watermark(image if size == image.size else image.resize(size, Image.LANCZOS), watermark.bits)
        candidates = []
        for errors, mark_id in sorted((_distance(read, known_id), known_id) for known_id in known):
            if errors > watermark.max_bit_errors:
                break
            record = log.query(kind="image", watermark_id=mark_id)[0]
            distance = _distance(phash, record.get("perceptual_hash"))
            # a read with wrong bits counts only when the picture agrees: noise read from a
            # foreign image is as close to some recorded id as a damaged mark is
            if errors == 0 or (distance is not None and distance <= WATERMARK_AGREES):
                candidates.append((record, mark_id, errors))
        if len(candidates) == 1:
            return candidates[0]
    return None


def _match(log: AuditLog, record: dict, method: str, confidence: str, detail: str) -> Match:
    latest = log.query(image_key=record["image_key"])[-1]
    return Match(image_key=record["image_key"], asset_id=record["asset_id"], campaign=record["campaign"],
                 run_id=record["run_id"], record_seq=record["seq"], decision=latest["decision"],
                 reviewer=latest.get("reviewer"), model=record.get("model_id"),
                 model_license=(record.get("model_license") or {}).get("id"), method=method,
                 confidence=confidence, detail=detail)


def _distance(a: str | None, b: str | None) -> int | None:
    if not a or not b:
        return None
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def _verdict(match: Match | None, candidates: list[str], c2pa: C2paLayer, xmp: str | None) -> str:
    if c2pa.pixels_changed:
        signed = "its C2PA manifest no longer matches the content: edited after signing"
    elif c2pa.state:
        signed = f"C2PA {c2pa.state}" + (f" ({c2pa.signer})" if c2pa.signer else "")
    else:
        signed = "no C2PA manifest"
    if match is not None and match.method == "perceptual":
        return (f"looks like ours: {match.campaign}/{match.asset_id}, {match.decision}; no mark survived to "
                f"confirm it (perceptual hash only); {signed}")
    if match is not None:
        return (f"ours: {match.campaign}/{match.asset_id}, {match.decision}, found by {match.method} "
                f"({match.confidence} confidence); {signed}")
    if candidates:
        return f"{len(candidates)} of our images look alike; none can be told apart from this copy; {signed}"
    marked = "it says it is AI-generated (XMP)" if xmp == TRAINED_ALGORITHMIC_MEDIA else "no AI-generated mark"
    return f"not found in this audit log; {marked}; {signed}"


def read_c2pa_layer(data: bytes, mime: str | None, trust_anchors: str | None) -> C2paLayer:
    """The C2PA manifest's state: signature, certificate chain (against `trust_anchors`, PEM),
    and the hash binding that ties it to the bytes."""
    import c2pa

    if mime is None:
        return C2paLayer()
    settings = {"verify": {"verify_trust": bool(trust_anchors)}}
    if trust_anchors:
        settings["trust"] = {"trust_anchors": trust_anchors}
    try:
        context = c2pa.Context(c2pa.Settings.from_dict(settings))
        store = json.loads(c2pa.Reader(mime, io.BytesIO(data), context=context).json())
    except Exception as exc:  # c2pa raises when there is no manifest; anything else is a broken one
        if "ManifestNotFound" in type(exc).__name__ or "not found" in str(exc).lower():
            return C2paLayer()
        return C2paLayer(present=True, state="Invalid", problems=[f"{type(exc).__name__}: {exc}"])
    manifest = store.get("manifests", {}).get(store.get("active_manifest"), {})
    statuses = [s for s in store.get("validation_status") or [] if s.get("code")]
    signature = manifest.get("signature_info") or {}
    return C2paLayer(present=True, state=store.get("validation_state"),
                     signer=signature.get("common_name") or signature.get("issuer"),
                     pixels_changed=any(re.search(r"hash\.mismatch", s["code"], re.I) for s in statuses),
                     problems=[f"{s['code']}: {s.get('explanation', '')}".strip(": ") for s in statuses])


def _xmp_source_type(image: Image.Image) -> str | None:
    xmp = image.info.get("XML:com.adobe.xmp") or image.info.get("xmp") or b""
    text = xmp.decode("utf-8", "replace") if isinstance(xmp, bytes) else str(xmp)
    found = re.search(r"DigitalSourceType(?:=\"|>)([^\"<]+)", text)
    return found.group(1).strip() if found else None
