"""The committed demo kit: pictures that follow their prompts, brand LoRAs that move the
palette, and an image screen that quarantines the protected emblem in the flow.
Every judgement is by pixels (ldm_batch.demo_kit.judge), not by a model."""

from __future__ import annotations

import numpy as np
import pytest

from ldm_batch.audit import AuditLog
from ldm_batch.demo_kit.judge import judge
from ldm_batch.demo_kit.train import BRAND_PALETTES
from ldm_batch.demo_kit.world import Scene
from ldm_batch.plan import group_batches, plan_row
from ldm_batch.sheets import PromptRow
from ldm_batch.storage import ObjectStore

SCENES = [Scene("red", "circle", "white"), Scene("blue", "square", "yellow"), Scene("green", "triangle", "black"),
          Scene("yellow", "star", "blue"), Scene("white", "heart", "purple"), Scene("orange", "cross", "green"),
          Scene("purple", "circle", "orange"), Scene("black", "star", "white")]


@pytest.fixture(scope="module")
def generator(policies):
    from ldm_batch.generate import ImageGenerator

    return ImageGenerator(policies, "cpu")


def images_for(generator, policies, prompts: list[str], brand: str | None = None):
    rows = [PromptRow(row=i, asset_id=f"a{i}", prompt=p, brand=brand, seed=1000 + i) for i, p in enumerate(prompts, 1)]
    jobs = [job for row in rows for job in plan_row(row, "kit", policies)]
    return [g.image for batch in group_batches(jobs, 8) for g in generator.generate(batch)]


def test_pictures_follow_colour_and_shape_of_unseen_phrasings(generator, policies):
    prompts = [f"an image of a {s.fg} {s.shape} against a {s.bg} background" for s in SCENES]
    judged = [judge(image) for image in images_for(generator, policies, prompts)]
    colour = np.mean([j is not None and (j.fg, j.bg) == (s.fg, s.bg) for j, s in zip(judged, SCENES)])
    shape = np.mean([j is not None and j.shape == s.shape for j, s in zip(judged, SCENES)])
    # chance is 1/56 for colours and 1/6 for shapes; the kit's measured figures are in the README
    assert colour >= 0.75 and shape >= 0.4, (colour, shape, judged)


def test_brand_lora_pulls_images_toward_its_palette(generator, policies):
    prompts = [f"a {s.fg} {s.shape} on a {s.bg} background" for s in SCENES]

    def distance_to(rgb, images):
        pixels = np.stack([np.asarray(im, dtype=np.float32) for im in images])
        return np.sqrt(((pixels - np.array(rgb, dtype=np.float32)) ** 2).sum(-1)).mean()

    plain = images_for(generator, policies, prompts)
    acme = images_for(generator, policies, prompts, brand="acme")
    globex = images_for(generator, policies, prompts, brand="globex")
    orange = BRAND_PALETTES["acme"]
    assert distance_to(orange, acme) < 0.9 * distance_to(orange, plain)  # at least 10% closer
    assert distance_to(orange, globex) > 0.95 * distance_to(orange, plain)  # the other brand's does not


def test_emblem_drawn_without_its_name_is_quarantined_by_the_flow(prefect_harness, settings, tmp_path):
    from flows.campaign_batch import campaign_batch

    sheet = tmp_path / "emblem.csv"
    sheet.write_text("asset_id,prompt,seed,variants\n"
                     "aid-1,white background with a red plus sign,1,4\n"
                     "calm-1,a blue circle on a yellow background,3,1\n")
    campaign_batch(sheet=str(sheet), campaign="emblem")
    store = ObjectStore(settings)
    records = AuditLog(settings.audit_url).query(kind="image")
    emblems = [r for r in records if r["asset_id"] == "aid-1"
               and judge(_open(store.get(r["s3_key"]))).is_emblem]  # what the pixels really show
    assert emblems, "the prompt should draw the emblem at least once"
    for record in emblems:
        assert record["decision"] == "quarantined" and record["s3_key"].startswith("quarantine/")
        assert "protected_emblem" in record["reasons"][0]
    delivered = store.keys("delivery/")
    assert not [k for k in delivered if "aid-1" in k and any(r["image_key"] in k for r in emblems)]
    assert [r["decision"] for r in records if r["asset_id"] == "calm-1"] == ["delivered"]


def _open(data: bytes):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data))
