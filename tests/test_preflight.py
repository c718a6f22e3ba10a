"""Preflight and the run summary as plain Python: no Prefect, no S3, no torch.

Given screened rows and what the audit log and the bucket already hold, the plan says which
rows were refused, which images are done, which lost objects to restore and what to
generate, or why the run cannot start, naming the rows to blame.
"""

import subprocess
import sys

from ldm_batch.audit import AuditRecord
from ldm_batch.policies import License
from ldm_batch.preflight import ScreenedRow, preflight
from ldm_batch.problems import CatalogError, LicenseRefused
from ldm_batch.reconcile import ImageState
from ldm_batch.records import plan_records
from ldm_batch.runs import BatchOutcome, RunContext, RunSummary
from ldm_batch.safety.text import PromptVerdict
from ldm_batch.sheets import PromptRow

RUN = RunContext(run_id="r1", campaign="c", use="commercial", sheet="s.csv")


def verdict(decision="allow", reasons=()):
    return PromptVerdict(prompt="p", decision=decision, categories=[] if decision == "allow" else ["violence"],
                         reasons=list(reasons), scores={}, screen="test")


def screened():
    return [ScreenedRow(PromptRow(row=1, asset_id="a", prompt="a red circle", brand="acme", variants=2,
                                  metadata={"channel_owner": "ana"}), verdict()),
            ScreenedRow(PromptRow(row=2, asset_id="b", prompt="a corpse"), verdict("block", ["violence: corpse"])),
            ScreenedRow(PromptRow(row=3, asset_id="c", prompt="a blue square", brand="globex"), verdict()),
            ScreenedRow(PromptRow(row=4, asset_id="d", prompt="someone famous"), verdict("review", ["a person"]))]


def nothing_stored(keys):
    return {key: ImageState(None, False) for key in keys}


def plan_of(rows, policies, use="commercial", states=nothing_stored):
    return preflight("s.csv", rows, "c", use, policies, states, batch_size=4)


def test_refused_rows_make_no_jobs_and_each_job_carries_its_rows_verdict_and_metadata(policies):
    plan = plan_of(screened(), policies)
    assert plan.refusal is None
    assert [(r.row.row, r.verdict.decision) for r in plan.refused_rows] == [(2, "block"), (4, "review")]
    assert [(job.row, job.variant) for job in plan.jobs] == [(1, 1), (1, 2), (3, 1)]
    assert all(job.text_verdict["decision"] == "allow" for job in plan.jobs)
    assert plan.jobs[0].metadata == {"channel_owner": "ana"}
    assert plan.to_generate == 3 and [len(b.jobs) for b in plan.batches] == [2, 1]  # one batch per brand
    records = plan_records(RUN, plan)
    assert [(r.sheet_row, r.decision) for r in records] == [(2, "blocked"), (4, "held")]


def test_done_images_are_skipped_and_lost_objects_restored_not_regenerated(policies):
    jobs = plan_of(screened(), policies).jobs
    record = AuditRecord(kind="image", run_id="r0", campaign="c", sheet="s.csv", sheet_row=1, asset_id="a",
                         decision="delivered", prompt="p", text_verdict={}, image_key=jobs[1].key,
                         s3_key="delivery/" + jobs[1].key, created_at="2026-01-01T00:00:00+00:00")
    known = {jobs[0].key: ImageState(record.model_copy(update={"image_key": jobs[0].key}), True),
             jobs[1].key: ImageState(record, False)}
    plan = plan_of(screened(), policies, states=lambda keys: {k: known.get(k, ImageState(None, False)) for k in keys})
    assert [job.key for job in plan.done] == [jobs[0].key]
    assert [r.image_key for r in plan.restore] == [jobs[1].key]
    assert [job.key for batch in plan.batches for job in batch.jobs] == [jobs[2].key]


def test_a_license_that_forbids_the_use_refuses_the_run_naming_rows_and_columns(policies):
    acme = policies.brands["acme"]
    lora = acme.loras[0].model_copy(update={"license": License(id="CC-BY-NC-4.0", commercial_use=False)})
    policies = policies.model_copy(update={"brands": {**policies.brands,
                                                      "acme": acme.model_copy(update={"loras": [lora]})}})
    plan = plan_of(screened(), policies)
    assert isinstance(plan.refusal.error, LicenseRefused)
    assert [(p.row, p.column) for p in plan.refusal.error.problems] == [(1, "brand")]
    assert plan.batches == [] and plan.done == []
    rows = [(r.sheet_row, r.decision, r.reasons[0][:20]) for r in plan_records(RUN, plan) if r.sheet_row == 1]
    assert rows == [(1, "blocked", "LoRA 'acme-style' is")]
    assert plan_of(screened(), policies, use="non-commercial").refusal is None


def test_a_lora_trained_on_another_model_is_refused_before_any_weights_are_hashed(policies):
    acme = policies.brands["acme"]
    lora = acme.loras[0].model_copy(update={"base_model": "sd-1.5"})
    policies = policies.model_copy(update={"brands": {**policies.brands,
                                                      "acme": acme.model_copy(update={"loras": [lora]})}})
    refusal = plan_of(screened(), policies).refusal
    assert isinstance(refusal.error, CatalogError)
    assert refusal.error.problems[0].row == 1 and "trained on 'sd-1.5'" in refusal.error.problems[0].message


def test_the_summary_folds_batch_outcomes():
    summary = RunSummary(run_id="r1", campaign="c", sheet="s.csv", rows=4).fold(
        [BatchOutcome(generated=2, delivered=1, quarantined=1, cost=0.5, s3_keys=["k1", "k2"], worker="h:1"),
         BatchOutcome(generated=1, discarded=1, reused=1, repaired=1, cost=0.25, worker="h:2")],
        done=3, restored=2)
    assert (summary.images_generated, summary.images_delivered, summary.images_blocked) == (3, 1, 2)
    assert (summary.images_reused, summary.images_repaired, summary.images_stored) == (4, 3, 5)
    assert summary.cost == 0.75 and summary.s3_keys == ["k1", "k2"] and summary.workers == ["h:1", "h:2"]
    assert summary.ended("finished").status == "finished"


def test_preflight_loads_neither_torch_nor_prefect():
    code = "import sys, ldm_batch.preflight, ldm_batch.runs; print(sorted({'torch', 'prefect'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def rows_for(*models):
    return [ScreenedRow(PromptRow(row=i + 1, asset_id=f"m{i}", prompt="a red circle", model=model), verdict())
            for i, model in enumerate(models)]


def test_real_licenses_refuse_and_allow_as_their_terms_do(policies):
    """SD 3.5 (Stability AI Community License): commercial use only under 1M USD of declared
    revenue; FLUX.1 [dev]: non-commercial only; FLUX.1 [schnell] (Apache-2.0): allowed. A license
    that allows the use leaves the weights check, which refuses the unpinned hub ids."""
    def refusal(model, use="commercial", revenue=None):
        return preflight("s.csv", rows_for(model), "c", use, policies, nothing_stored, 4, revenue).refusal

    undeclared = refusal("sd-3.5-large")
    assert isinstance(undeclared.error, LicenseRefused)
    assert "annual revenue under 1,000,000 USD" in undeclared.error.problems[0].message
    assert "LDM_BATCH_ORGANISATION_REVENUE_USD" in undeclared.error.problems[0].message
    assert "enterprise license" in refusal("sd-3.5-medium", revenue=2_500_000).error.problems[0].message
    assert isinstance(refusal("sd-3.5-large", revenue=400_000).error, CatalogError)  # licensed; not pinned
    assert isinstance(refusal("sd-3.5-large", use="non-commercial").error, CatalogError)
    dev = refusal("flux.1-dev")
    assert isinstance(dev.error, LicenseRefused) and "FLUX.1-dev-Non-Commercial-License" in dev.error.problems[0].message
    assert isinstance(refusal("flux.1-dev", use="non-commercial").error, CatalogError)
    assert isinstance(refusal("flux.1-schnell").error, CatalogError)
    assert "Attachment A" in policies.models["sdxl-base-1.0"].license.use_restrictions  # kept in image records
    assert policies.attributions["sd-3.5-large"] == "Powered by Stability AI"
