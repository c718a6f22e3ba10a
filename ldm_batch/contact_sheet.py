"""A run's contact sheet: one PNG grid of its images with asset id and decision, quarantined
images blurred (and images the policy did not store shown as a grey tile)."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFilter

TILE = 128
CAPTION = 30
COLUMNS = 8
MAX_IMAGES = 400
COLOURS = {"delivered": (30, 130, 60), "approved": (30, 130, 60), "quarantined": (200, 120, 0), "blocked": (180, 30, 30)}


def contact_sheet(tiles: list[tuple[dict, bytes | None]]) -> bytes:
    """`tiles`: (image record, stored PNG bytes or None) in order; returns the sheet as PNG."""
    tiles = tiles[:MAX_IMAGES]
    rows = max(1, -(-len(tiles) // COLUMNS))
    sheet = Image.new("RGB", (COLUMNS * TILE, rows * (TILE + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (record, png) in enumerate(tiles):
        x, y = (i % COLUMNS) * TILE, (i // COLUMNS) * (TILE + CAPTION)
        if png is None:
            image = Image.new("RGB", (TILE, TILE), (90, 90, 90))
        else:
            image = Image.open(io.BytesIO(png)).convert("RGB").resize((TILE, TILE), Image.NEAREST)
            if record["decision"] not in ("delivered", "approved"):
                image = image.filter(ImageFilter.GaussianBlur(12))
        sheet.paste(image, (x, y))
        draw.text((x + 4, y + TILE + 2), f"{record['asset_id']} v{record['variant']}"[:20], fill="black")
        draw.text((x + 4, y + TILE + 15), record["decision"], fill=COLOURS.get(record["decision"], "black"))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()
