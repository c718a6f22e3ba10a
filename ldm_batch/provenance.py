"""Provenance: PNG bytes that say how they were made.

Always: a "parameters" text chunk (prompt, seed, model, settings) and an XMP packet marking
the image as made by a trained algorithm (IPTC DigitalSourceType, as EU AI Act Article 50
asks). By policy (policies/provenance.yaml): an invisible watermark in the pixels
(invisible-watermark, dwtDctSvd), which survives re-encoding that strips metadata. When a
signing certificate and key are configured: a C2PA manifest signed with c2pa-python.

Without C2PA the same job always encodes to the same bytes. A C2PA signature is new each
time (its claim has a fresh instance id and an ECDSA signature), so the audit log also
records `pixels_sha256`, the digest of the decoded pixels, which reproduces either way.
"""

from __future__ import annotations

import hashlib
import io
import json
from importlib.metadata import version
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ldm_batch.config import Settings
from ldm_batch.policies import ProvenancePolicy

if TYPE_CHECKING:
    from ldm_batch.generate import GeneratedImage

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
XMP = f"""<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
 Iptc4xmpExt:DigitalSourceType="{TRAINED_ALGORITHMIC_MEDIA}"/></rdf:RDF></x:xmpmeta>"""
WATERMARK_MIN_SIZE = 256  # invisible-watermark refuses smaller images
GENERATION_ASSERTION = "org.ldm-batch.generation"


class ProvenanceError(Exception):
    pass


class Marker:
    """Encodes generated images as marked PNGs, per the provenance policy and settings."""

    def __init__(self, policy: ProvenancePolicy, settings: Settings):
        self.watermark = policy.watermark if policy.watermark.enabled else None
        self.signer = None
        self.signer_name = None
        if settings.c2pa_certificate and settings.c2pa_private_key:
            import c2pa

            info = c2pa.C2paSignerInfo(
                alg=c2pa.C2paSigningAlg.ES256, sign_cert=settings.c2pa_certificate.read_bytes(),
                private_key=settings.c2pa_private_key.read_bytes(), ta_url=settings.c2pa_timestamp_url)
            self.signer = c2pa.Signer.from_info(info)
            self.signer_name = settings.c2pa_certificate.name
            self._context = c2pa.Context(c2pa.Settings.from_dict({"builder": {"thumbnail": {"enabled": False}}}))

    def size_problem(self, width: int, height: int) -> str | None:
        if self.watermark and min(width, height) < WATERMARK_MIN_SIZE:
            return (f"the provenance policy asks for an invisible watermark, which needs images of at "
                    f"least {WATERMARK_MIN_SIZE}x{WATERMARK_MIN_SIZE}; this row asks for {width}x{height}")
        return None

    def record(self) -> dict:
        """What the audit record says about this image's marking."""
        return {"xmp_digital_source_type": TRAINED_ALGORITHMIC_MEDIA,
                "watermark": self.watermark.model_dump() if self.watermark else None,
                "c2pa": {"signed": True, "certificate": self.signer_name} if self.signer else None}

    def encode_generated(self, generated: GeneratedImage) -> bytes:
        """The PNG stored for a generated image, marked with how it was made."""
        job = generated.job
        parameters = {"prompt": job.prompt, "negative_prompt": job.negative_prompt, "seed": job.seed,
                      "model_sha256": generated.model_sha256, **job.settings.model_dump(mode="json")}
        return self.encode(generated.image, parameters)

    def encode(self, image: Image.Image, parameters: dict) -> bytes:
        if self.watermark:
            image = embed_watermark(image, self.watermark.payload)
        info = PngInfo()
        info.add_text("parameters", json.dumps(parameters, sort_keys=True))
        info.add_itxt("XML:com.adobe.xmp", XMP)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=info)
        png = buffer.getvalue()
        return self._sign(png, parameters) if self.signer else png

    def _sign(self, png: bytes, parameters: dict) -> bytes:
        import c2pa

        manifest = {
            "claim_generator_info": [{"name": "ldm-batch", "version": version("ldm-batch")}],
            "title": f"{parameters.get('prompt', '')[:60]}.png",
            "assertions": [
                {"label": "c2pa.actions", "data": {"actions": [{
                    "action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                    "softwareAgent": {"name": "ldm-batch", "version": version("ldm-batch")}}]}},
                {"label": GENERATION_ASSERTION, "data": parameters},
            ]}
        signed = io.BytesIO()
        c2pa.Builder(manifest, context=self._context).sign(self.signer, "image/png", io.BytesIO(png), signed)
        return signed.getvalue()


def embed_watermark(image: Image.Image, payload: str) -> Image.Image:
    from imwatermark import WatermarkEncoder

    if min(image.size) < WATERMARK_MIN_SIZE:
        raise ProvenanceError(f"an invisible watermark needs at least {WATERMARK_MIN_SIZE}x{WATERMARK_MIN_SIZE} "
                              f"pixels; the image is {image.size[0]}x{image.size[1]}")
    encoder = WatermarkEncoder()
    encoder.set_watermark("bytes", payload.encode())
    bgr = np.asarray(image.convert("RGB"))[:, :, ::-1]
    return Image.fromarray(encoder.encode(np.ascontiguousarray(bgr), "dwtDctSvd")[:, :, ::-1])


def read_watermark(image: Image.Image, length: int) -> bytes:
    """The watermark's first `length` bytes, as decoded from the pixels."""
    from imwatermark import WatermarkDecoder

    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    return WatermarkDecoder("bytes", length * 8).decode(bgr, "dwtDctSvd")


def pixels_sha256(png: bytes) -> str:
    """Digest of the decoded pixels (size, mode and values), independent of metadata."""
    with Image.open(io.BytesIO(png)) as image:
        rgb = image.convert("RGB")
        return hashlib.sha256(f"{rgb.size[0]}x{rgb.size[1]}:".encode() + rgb.tobytes()).hexdigest()


def read_c2pa(png: bytes, trust_anchors: str | None = None) -> dict:
    """The C2PA store of a PNG as a dict (validation_state "Trusted" when the signer chains to
    `trust_anchors`, PEM); raises when it has none."""
    import c2pa

    context = None
    if trust_anchors:
        context = c2pa.Context(c2pa.Settings.from_dict(
            {"trust": {"trust_anchors": trust_anchors}, "verify": {"verify_trust": True}}))
    return json.loads(c2pa.Reader("image/png", io.BytesIO(png), context=context).json())
