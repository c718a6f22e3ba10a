"""`ldm-batch provenance check`: images made by a real run, copied the way a CMS copies them
(metadata stripped, resized, JPEG, WebP, edited), traced back to their audit records; a
picture the pipeline did not make is not ours."""

from __future__ import annotations

import io
import json
import random
import struct

from PIL import Image
from typer.testing import CliRunner

from ldm_batch.audit import AuditLog
from ldm_batch.cli import app
from ldm_batch.demo_kit.world import Scene, draw
from ldm_batch.storage import ObjectStore

SHEET = ("asset_id,prompt,brand,variants,seed,width,height\n"
         "poster,a yellow star on a blue background,acme,2,5,256,256\n"  # two look-alike variants
         "tile,a red circle on a white background,,1,9,,\n")  # the demo model's own 32x32


def check(*paths) -> list[dict]:
    result = CliRunner().invoke(app, ["provenance", "check", *map(str, paths), "--json"])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=format, **options)
    return buffer.getvalue()


def with_pixels_replaced(png: bytes, image: Image.Image) -> bytes:
    """The PNG with other pixels and every other chunk (the C2PA manifest too) kept: an edit
    by a tool that preserves metadata."""
    def chunks(data: bytes):
        at = 8
        while at < len(data):
            length = struct.unpack(">I", data[at:at + 4])[0]
            yield data[at + 4:at + 8], data[at:at + 12 + length]
            at += 12 + length

    new_data = b"".join(chunk for kind, chunk in chunks(encoded(image, "PNG")) if kind == b"IDAT")
    out, placed = [png[:8]], False
    for kind, chunk in chunks(png):
        if kind != b"IDAT":
            out.append(chunk)
        elif not placed:
            out.append(new_data)
            placed = True
    return b"".join(out)


def test_copies_of_delivered_images_lead_back_to_their_records(prefect_harness, settings, signing, tmp_path,
                                                                monkeypatch):
    (tmp_path / "ca.pem").write_text(signing)
    monkeypatch.setenv("LDM_BATCH_C2PA_TRUST_ANCHORS", str(tmp_path / "ca.pem"))
    (tmp_path / "prov.csv").write_text(SHEET)
    result = CliRunner().invoke(app, ["run", str(tmp_path / "prov.csv"), "--campaign", "prov", "--json"])
    assert result.exit_code == 0, result.output
    records = AuditLog(settings.audit_url).query(campaign="prov", kind="image")
    assert len(records) == 3
    poster, tile = (next(r for r in records if r["asset_id"] == asset) for asset in ("poster", "tile"))
    twin = next(r for r in records if r["asset_id"] == "poster" and r is not poster)
    assert poster["watermark_id"] and poster["provenance"]["watermark"]["bits"] == 64
    assert tile["watermark_id"] is None  # 32x32: metadata only

    store = ObjectStore(settings)
    original = store.get(poster["s3_key"])
    pixels = Image.open(io.BytesIO(original))
    copies = {
        "original.png": original,
        "stripped.png": encoded(pixels, "PNG"),  # every chunk gone, pixels kept
        "cms.jpg": encoded(pixels, "JPEG", quality=85),
        "cms70.jpg": encoded(pixels, "JPEG", quality=70),
        "copy.webp": encoded(pixels, "WEBP", quality=80),
        # at 256 px a halved copy keeps too little of the mark: the perceptual hash finds it
        "half.jpg": encoded(pixels.resize((128, 128), Image.LANCZOS), "JPEG", quality=85),
        "tile-resized.jpg": encoded(Image.open(io.BytesIO(store.get(tile["s3_key"]))).resize((64, 64)), "JPEG",
                                    quality=85),
        "foreign.png": encoded(draw(Scene("green", "square", "black"), random.Random(4), size=256), "PNG"),
    }
    retouched = pixels.convert("RGB")
    retouched.paste((255, 0, 0), (10, 10, 60, 60))
    copies["edited.png"] = with_pixels_replaced(original, retouched)
    for name, data in copies.items():
        (tmp_path / name).write_bytes(data)
    found = {r["file"].rsplit("/", 1)[-1]: r for r in check(*(tmp_path / name for name in copies))}

    exact = found["original.png"]
    assert exact["match"]["method"] == "sha256" and exact["match"]["confidence"] == "certain"
    assert exact["match"]["image_key"] == poster["image_key"] and exact["match"]["decision"] == "delivered"
    assert exact["c2pa"]["state"] == "Trusted" and exact["c2pa"]["pixels_changed"] is False
    assert exact["xmp_source_type"].endswith("/trainedAlgorithmicMedia")
    assert set(exact["layers"]) == {"c2pa", "xmp", "parameters", "watermark"}

    stripped = found["stripped.png"]
    assert stripped["match"]["method"] == "pixels" and stripped["layers"] == ["watermark"]
    assert not stripped["c2pa"]["present"] and stripped["xmp_source_type"] is None

    for name in ("cms.jpg", "cms70.jpg", "copy.webp"):
        match = found[name]["match"]
        assert match is not None, (name, found[name]["verdict"])
        assert (match["image_key"], match["method"], match["confidence"]) == (poster["image_key"], "watermark",
                                                                             "high"), name
        assert found[name]["layers"] == ["watermark"]
    assert twin["watermark_id"] != poster["watermark_id"]  # the variant is told apart by its own mark
    half = found["half.jpg"]["match"]
    assert half is not None and half["image_key"] == poster["image_key"], found["half.jpg"]["verdict"]
    assert half["method"] == "perceptual" and half["confidence"] == "low"

    small = found["tile-resized.jpg"]["match"]
    assert small is not None and small["image_key"] == tile["image_key"]
    assert (small["method"], small["confidence"]) == ("perceptual", "low")  # a look-alike, not confirmed
    assert found["tile-resized.jpg"]["verdict"].startswith("looks like ours: prov/tile")

    assert found["foreign.png"]["match"] is None and found["foreign.png"]["candidates"] == []
    assert found["foreign.png"]["verdict"].startswith("not found in this audit log")

    tampered = found["edited.png"]
    assert tampered["c2pa"]["pixels_changed"] is True and tampered["c2pa"]["state"] == "Invalid"
    assert "edited after signing" in tampered["verdict"]


def test_a_file_that_is_not_an_image_is_refused_with_its_name(tmp_path, settings):
    (tmp_path / "notes.txt").write_text("not a picture")
    result = CliRunner().invoke(app, ["provenance", "check", str(tmp_path / "notes.txt")])
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert "notes.txt: not an image" in output and "PNG, JPEG and WebP" in output


def test_an_oversized_file_is_refused_before_it_is_decoded(tmp_path, settings):
    huge = io.BytesIO()
    Image.new("L", (8000, 6000)).save(huge, format="PNG")  # 48 MP of one colour: a small file
    (tmp_path / "huge.png").write_bytes(huge.getvalue())
    result = CliRunner().invoke(app, ["provenance", "check", str(tmp_path / "huge.png")])
    assert result.exit_code == 2
    assert "8000x6000 is over the 40,000,000 pixels" in " ".join(result.output.split())
