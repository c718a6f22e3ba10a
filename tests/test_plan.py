"""Plan: seeds and keys come from content, so the same sheet asks for the same images."""

from ldm_batch.plan import group_batches, plan_row
from ldm_batch.sheets import PromptRow


def test_seeds_and_keys_are_deterministic_and_distinct_per_variant(policies):
    row = PromptRow(row=1, asset_id="hero", prompt="a red circle", variants=3)
    first, again = plan_row(row, "c", policies), plan_row(row, "c", policies)
    assert first == again
    assert len({j.seed for j in first}) == len({j.key for j in first}) == 3
    assert first[0].key.startswith("c/hero/hero-v1-")


def test_a_given_seed_is_used_for_the_first_variant(policies):
    row = PromptRow(row=1, asset_id="hero", prompt="a red circle", variants=2, seed=42)
    assert [j.seed for j in plan_row(row, "c", policies)] == [42, 43]


def test_changing_the_prompt_changes_the_seed_and_key(policies):
    a = plan_row(PromptRow(row=1, asset_id="x", prompt="a red circle"), "c", policies)[0]
    b = plan_row(PromptRow(row=1, asset_id="x", prompt="a red square"), "c", policies)[0]
    assert a.seed != b.seed and a.key != b.key


def test_batches_share_settings_and_respect_the_size(policies):
    rows = [PromptRow(row=i, asset_id=f"a{i}", prompt="p", brand=b, variants=3)
            for i, b in enumerate(["acme", "globex", "acme"], start=1)]
    jobs = [j for r in rows for j in plan_row(r, "c", policies)]
    batches = group_batches(jobs, 4)
    assert [len(b.jobs) for b in batches] == [4, 2, 3]
    for batch in batches:
        assert all(job.settings == batch.settings for job in batch.jobs)
