"""Provenance: PNG bytes that say how they were made.

A "parameters" text chunk (prompt, seed, model, settings) and an XMP packet marking the
image as made by a trained algorithm (IPTC DigitalSourceType). Nothing run-specific goes
in, so the same job always encodes to the same bytes and sha256.
"""

from __future__ import annotations

import io
import json

from PIL import Image
from PIL.PngImagePlugin import PngInfo

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
XMP = f"""<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
 Iptc4xmpExt:DigitalSourceType="{TRAINED_ALGORITHMIC_MEDIA}"/></rdf:RDF></x:xmpmeta>"""


def encode_png(image: Image.Image, parameters: dict) -> bytes:
    info = PngInfo()
    info.add_text("parameters", json.dumps(parameters, sort_keys=True))
    info.add_itxt("XML:com.adobe.xmp", XMP)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
