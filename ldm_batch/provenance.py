"""Provenance: PNG bytes that say how they were made, in two layers (EU AI Act Article 50(2)).

Metadata layer, always: a "parameters" text chunk in the AUTOMATIC1111 text format (which
A1111, InvokeAI and Civitai read), the full generation record as JSON in an "ldm-batch"
chunk, and an XMP packet marking the image as made by a trained algorithm (IPTC
DigitalSourceType); when a signing certificate and key are configured, a C2PA manifest signed
with c2pa-python.

Pixel layer, by policy (policies/provenance.yaml, on by default): an invisible watermark
(invisible-watermark, dwtDctSvd) carrying the image's watermark id, a digest of its image
key, from which `ldm-batch provenance check` finds the audit record after every piece of
metadata was stripped. It needs images of at least 256x256: smaller ones carry metadata only,
and their record says so. Every record also keeps a perceptual hash (pHash) of the pixels,
the last resort for copies that lost both layers.

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
from pydantic import BaseModel

from ldm_batch.config import Settings
from ldm_batch.policies import Policies, ProvenancePolicy

if TYPE_CHECKING:
    from ldm_batch.generate import GeneratedImage

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
XMP = f"""<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
 Iptc4xmpExt:DigitalSourceType="{TRAINED_ALGORITHMIC_MEDIA}"/></rdf:RDF></x:xmpmeta>"""
WATERMARK_MIN_SIZE = 256  # invisible-watermark refuses smaller images
WATERMARK_METHOD = "dwtDctSvd"
# Embedding strength per YUV channel (U only): the library's default 36 lost 15% of the bits to
# a 50% resize with JPEG q85; 60 loses 2-3% at about 36 dB PSNR (bench/provenance.py).
WATERMARK_SCALES = [0, 60, 0]
GENERATION_ASSERTION = "org.ldm-batch.generation"
RECORD_CHUNK = "ldm-batch"  # the PNG text chunk holding the generation parameters as JSON
# diffusers scheduler -> the sampler name A1111 writes (others are written by class name)
A1111_SAMPLERS = {"DDIMScheduler": "DDIM", "PNDMScheduler": "PLMS", "LMSDiscreteScheduler": "LMS",
                  "EulerDiscreteScheduler": "Euler", "EulerAncestralDiscreteScheduler": "Euler a",
                  "DPMSolverMultistepScheduler": "DPM++ 2M", "HeunDiscreteScheduler": "Heun",
                  "FlowMatchEulerDiscreteScheduler": "Euler"}


class ProvenanceError(Exception):
    pass


class ImageMarks(BaseModel):
    """What the audit record keeps of one stored image's marks, to find it again."""

    image_sha256: str
    pixels_sha256: str  # of the decoded pixels: the same for a copy without its metadata
    watermark_id: str | None  # hex; None when the image is too small to carry the watermark
    perceptual_hash: str  # 64-bit pHash, hex: survives resizing and JPEG, not a proof
    provenance: dict  # the layers: XMP, watermark (or why none), C2PA signer


class Marker:
    """Encodes generated images as marked PNGs, per the provenance policy and settings."""

    def __init__(self, policy: ProvenancePolicy, settings: Settings, attributions: dict[str, str] | None = None):
        self.watermark = policy.watermark if policy.watermark.enabled else None
        self.attributions = attributions or {}  # model or LoRA id -> the notice its license asks for
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

    def watermark_id(self, image_key: str, width: int, height: int) -> str | None:
        """The id the watermark of this image carries, or None when it carries none."""
        if self.watermark is None or min(width, height) < WATERMARK_MIN_SIZE:
            return None
        return watermark_id(image_key, self.watermark.bits)

    def marks(self, png: bytes, image_key: str) -> ImageMarks:
        """What the audit record keeps of an encoded image's marks."""
        with Image.open(io.BytesIO(png)) as image:
            width, height = image.size
            phash = perceptual_hash(image)
        mark_id = self.watermark_id(image_key, width, height)
        if mark_id:
            watermark = {"method": WATERMARK_METHOD, "id": mark_id, "bits": self.watermark.bits}
        elif self.watermark:
            watermark = {"method": None, "reason": f"{width}x{height} is below {WATERMARK_MIN_SIZE}x"
                                                   f"{WATERMARK_MIN_SIZE}: this image carries metadata only"}
        else:
            watermark = {"method": None, "reason": "off by the provenance policy"}
        return ImageMarks(
            image_sha256=hashlib.sha256(png).hexdigest(), pixels_sha256=pixels_sha256(png), watermark_id=mark_id,
            perceptual_hash=phash,
            provenance={"xmp_digital_source_type": TRAINED_ALGORITHMIC_MEDIA, "watermark": watermark,
                        "c2pa": {"signed": True, "certificate": self.signer_name} if self.signer else None})

    def encode_generated(self, generated: GeneratedImage) -> bytes:
        """The PNG stored for a generated image, marked with how it was made."""
        job = generated.job
        parameters = {"prompt": job.prompt, "negative_prompt": job.negative_prompt, "seed": job.seed,
                      "model_sha256": generated.model_sha256, "scheduler": generated.scheduler,
                      "lora_sha256": generated.lora_sha256, **job.settings.model_dump(mode="json")}
        if notices := [self.attributions[i] for i in (job.settings.model, *(u.id for u in job.settings.loras))
                       if i in self.attributions]:
            parameters["attribution"] = notices
        return self.encode(generated.image, parameters, job.key)

    def encode(self, image: Image.Image, parameters: dict, image_key: str) -> bytes:
        if mark_id := self.watermark_id(image_key, *image.size):
            image = embed_watermark(image, mark_id)
        info = PngInfo()
        info.add_text("parameters", a1111_parameters(parameters))
        info.add_text(RECORD_CHUNK, json.dumps(parameters, sort_keys=True))
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


def a1111_parameters(parameters: dict) -> str:
    """The generation parameters in AUTOMATIC1111's text format: prompt, "Negative prompt:", and
    one line of settings; hashes are the first 10 hex digits of the sha256 (A1111's AutoV2).
    Prompts are put on one line each, so no prompt can pose as the settings line."""
    def one_line(text: str) -> str:
        return " ".join(str(text).split())

    settings = {"Steps": parameters.get("steps"),
                "Sampler": A1111_SAMPLERS.get(parameters.get("scheduler"), parameters.get("scheduler")),
                "CFG scale": parameters.get("guidance"), "Seed": parameters.get("seed"),
                "Size": f"{parameters['width']}x{parameters['height']}" if "width" in parameters else None,
                "Model hash": (parameters.get("model_sha256") or "")[:10] or None, "Model": parameters.get("model"),
                "Lora hashes": '"' + ", ".join(f"{name}: {sha[:10]}" for name, sha in lora.items()) + '"'
                if (lora := parameters.get("lora_sha256")) else None,
                "Version": f"ldm-batch {version('ldm-batch')}"}
    lines = [one_line(parameters.get("prompt", ""))]
    if parameters.get("negative_prompt"):
        lines.append(f"Negative prompt: {one_line(parameters['negative_prompt'])}")
    lines.append(", ".join(f"{name}: {value}" for name, value in settings.items() if value is not None))
    return "\n".join(lines)


def unsigned_production_models(model_ids: set[str], policies: Policies, marker: Marker) -> list[str]:
    """A warning for each production model (any but the demo kit's) whose images will not be
    C2PA-signed because no signing key is configured."""
    if marker.signer is not None:
        return []
    return [f"model {model_id!r} runs without a C2PA signing key: its images carry unsigned metadata and the "
            "watermark only; set LDM_BATCH_C2PA_CERTIFICATE and LDM_BATCH_C2PA_PRIVATE_KEY"
            for model_id in sorted(model_ids) if not policies.models[model_id].source.startswith("builtin:")]


def watermark_id(image_key: str, bits: int) -> str:
    """The first `bits` bits of a digest of the image key, as hex: an index into the audit
    log (not a secret and not a proof; the proof is the record and the pixels)."""
    digest = int.from_bytes(hashlib.sha256(b"ldm-batch watermark\0" + image_key.encode()).digest()[:8])
    return f"{digest >> (64 - bits):0{(bits + 3) // 4}x}"


def embed_watermark(image: Image.Image, mark_id: str) -> Image.Image:
    from imwatermark import WatermarkEncoder

    if min(image.size) < WATERMARK_MIN_SIZE:
        raise ProvenanceError(f"an invisible watermark needs at least {WATERMARK_MIN_SIZE}x{WATERMARK_MIN_SIZE} "
                              f"pixels; the image is {image.size[0]}x{image.size[1]}")
    bits = len(mark_id) * 4
    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", [int(b) for b in f"{int(mark_id, 16):0{bits}b}"])
    bgr = np.asarray(image.convert("RGB"))[:, :, ::-1]
    return Image.fromarray(encoder.encode(np.ascontiguousarray(bgr), WATERMARK_METHOD, scales=WATERMARK_SCALES)[:, :, ::-1])


def read_watermark(image: Image.Image, bits: int) -> str | None:
    """The `bits`-bit id decoded from the pixels, as hex (noise when the image carries none);
    None when the image is too small to read (scale a resized copy back first)."""
    from imwatermark import WatermarkDecoder

    if min(image.size) < WATERMARK_MIN_SIZE:
        return None
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    decoded = WatermarkDecoder("bits", bits).decode(bgr, WATERMARK_METHOD, scales=WATERMARK_SCALES)
    return f"{int(''.join('1' if b else '0' for b in decoded), 2):0{(bits + 3) // 4}x}"


def perceptual_hash(image: Image.Image) -> str:
    """64-bit pHash of the pixels, hex (imagehash)."""
    import imagehash

    return str(imagehash.phash(image.convert("RGB")))


def pixels_sha256(png: bytes) -> str:
    """Digest of the decoded pixels (size and RGB values), independent of metadata."""
    with Image.open(io.BytesIO(png)) as image:
        return pixels_digest(image)


def pixels_digest(image: Image.Image) -> str:
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
