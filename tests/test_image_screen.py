"""Image screen: concept thresholds, multi-scale tiles, special care, the open_nsfw second
signal, the do-not-store policy, and the eval command on labelled folders (per variation and
size on held-out drawn scenes)."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from conftest import REPO
from ldm_batch.audit import AuditLog
from ldm_batch.cli import app
from ldm_batch.demo_kit.world import VARIATIONS, Scene, all_scenes, draw, write_varied
from ldm_batch.policies import load_policies
from ldm_batch.safety.image import ImageScreen
from ldm_batch.storage import ObjectStore

EMBLEM = Scene("red", "cross", "white")


def edited_policies(tmp_path, edit) -> tuple:
    """A copy of the repository's policies with image_safety.yaml changed by `edit(dict)`."""
    target = tmp_path / "policies"
    shutil.copytree(REPO / "policies", target)
    path = target / "image_safety.yaml"
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))
    return target, load_policies(target)


@pytest.fixture(scope="module")
def emblems():
    rng = random.Random(1)
    return [draw(EMBLEM, rng) for _ in range(4)]


def test_eval_image_safety_on_labelled_folders(tmp_path):
    rng = random.Random(2)
    others = rng.sample([s for s in all_scenes() if s != EMBLEM], 30)
    for label, scenes in (("protected_emblem", [EMBLEM] * 10), ("safe", others)):
        (tmp_path / label).mkdir()
        for i, scene in enumerate(scenes):
            draw(scene, rng).save(tmp_path / label / f"{i}.png")
    result = CliRunner().invoke(app, ["eval", "image-safety", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    emblem = json.loads(result.stdout)["concepts"]["a red cross on a white background"]
    assert (emblem["positives"], emblem["negatives"]) == (10, 30)
    assert emblem["recall"] >= 0.9 and emblem["false_positive_rate"] <= 0.1
    assert 0 < emblem["suggested_threshold"] <= 1


def test_eval_reports_each_variation_and_size_of_held_out_drawn_scenes(tmp_path):
    written = write_varied(tmp_path, sizes=(32, 256), emblems=2, others=3)
    assert written == (len(VARIATIONS) * 2 - 1) * 5  # "corner" only at 256 px
    result = CliRunner().invoke(app, ["eval", "image-safety", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)["concepts"]["a red cross on a white background"]["groups"]
    assert set(groups) == {f"{v}-{s}" for v in VARIATIONS for s in (32, 256)} - {"corner-32"}
    assert (groups["corner-256"]["positives"], groups["corner-256"]["negatives"]) == (2, 3)
    assert groups["plain-256"]["recall"] == 1.0


def test_a_small_emblem_in_a_corner_of_a_large_image_is_seen_in_tiles(tmp_path, policies):
    corner = draw(EMBLEM, size=512, radius=0.05, centre=(0.92, 0.08))  # the cross is 10% of the side
    tiled = ImageScreen(policies)
    assert policies.image_safety.tile_grids and len(tiled.crops(corner)) == 1 + 4 + 16 + 36
    assert len(tiled.crops(draw(EMBLEM))) == 1  # a 32 px image has no tile as large as the CLIP's input
    verdict = tiled.screen_images([corner])[0]
    assert verdict.decision == "block" and verdict.fired == ["a red cross on a white background"]
    _, whole_only = edited_policies(tmp_path, lambda data: data.update(tile_grids=[]))
    assert ImageScreen(whole_only).screen_images([corner])[0].decision == "allow"  # 224 px would not see it


def test_special_care_concepts_tighten_the_others(tmp_path, emblems, policies):
    score = ImageScreen(policies).scores(emblems[:1])[0]["a red cross on a white background"]

    def edit(data):  # emblem concept just out of reach; a special-care concept that fires
        data["concepts"][0]["threshold"] = min(score + 0.05, 1.0)
        data["special_care"] = [{"text": "a red cross on a white background", "category": "care",
                                 "threshold": max(score - 0.05, 0.01)}]
        data["special_care_adjustment"] = 0.1

    _, tightened = edited_policies(tmp_path, edit)
    plain = edited_policies(tmp_path / "plain", lambda d: d["concepts"][0].update(threshold=min(score + 0.05, 1.0)))[1]
    assert ImageScreen(plain).screen_images(emblems[:1])[0].decision == "allow"
    verdict = ImageScreen(tightened).screen_images(emblems[:1])[0]
    assert verdict.decision == "block" and verdict.reasons[0].startswith("special care")


@pytest.mark.parametrize("combine, decision", [("any-of", "block"), ("review-on-disagreement", "review")])
def test_open_nsfw_second_signal_combines_by_policy(tmp_path, combine, decision):
    calm = draw(Scene("blue", "circle", "yellow"))

    def edit(data):  # a threshold so low that open_nsfw fires while the CLIP concepts do not
        data["nsfw"] = {"model": "open-nsfw", "threshold": 1e-6, "combine": combine}

    _, policies = edited_policies(tmp_path, edit)
    verdict = ImageScreen(policies).screen_images([calm])[0]
    assert 0 <= verdict.scores["open_nsfw"] < 0.5  # the real model: a blue circle is safe
    assert verdict.decision == decision and "open-nsfw" in verdict.screen


def test_do_not_store_policy_keeps_only_hash_and_scores(prefect_harness, settings, tmp_path, monkeypatch):
    from flows.campaign_batch import campaign_batch

    policies_dir, _ = edited_policies(tmp_path, lambda d: d["concepts"][0].update(keep_image=False))
    monkeypatch.setenv("LDM_BATCH_POLICIES_DIR", str(policies_dir))
    sheet = tmp_path / "emblem.csv"
    sheet.write_text("asset_id,prompt,seed\naid-1,white background with a red plus sign,3\n")
    summary = campaign_batch(sheet=str(sheet), campaign="nostore")
    (record,) = AuditLog(settings.audit_url).query(kind="image")
    assert record["decision"] == "blocked" and record["s3_key"] is None
    assert len(record["image_sha256"]) == 64 and record["image_verdict"]["scores"]
    assert ObjectStore(settings).image_keys() == [] and summary.images_blocked == 1


def test_production_policy_is_valid_and_covers_the_harm_categories(tmp_path):
    """The shipped production policy loads against the catalog (ViT-L/14 screen, open_nsfw)
    and covers every category a marketing screen must, with the worst kept out of storage."""
    production = yaml.safe_load((REPO / "policies" / "image_safety.production.yaml").read_text())
    _, policies = edited_policies(tmp_path, lambda data: (data.clear(), data.update(production)))
    policy = policies.image_safety
    assert policies.models[policy.screen_model].kind == "clip"
    assert {c.category for c in policy.concepts} >= {
        "sexual", "violence_gore", "weapons", "hate_symbols", "self_harm", "drugs", "protected_emblem",
        "competitor_logo"}
    assert [c.category for c in policy.concepts if not c.keep_image] == ["sexual_minors"]
    assert policy.special_care and policy.nsfw.model == "open-nsfw"


def test_a_nan_concept_score_holds_the_image_for_review(policies, emblems, monkeypatch):
    """A fault we cannot cause for real: CLIP answering NaN. NaN is below no threshold, so
    without a check it would pass as 'allow'."""
    screen = ImageScreen(policies)
    honest = screen.scores
    monkeypatch.setattr(screen, "scores", lambda images: [{k: float("nan") for k in s} for s in honest(images)])
    verdict = screen.screen_images(emblems[:1])[0]
    assert verdict.decision == "review" and "no usable score" in verdict.reasons[0]
