"""`ldm-batch models`: register local weights (catalog sha256 and a lock of every file), list
the catalog, verify weights file by file, and refuse to pull what is not pinned."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from conftest import REPO
from ldm_batch.cli import app
from ldm_batch.policies import load_policies


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.fixture
def policies_copy(tmp_path, monkeypatch):
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    monkeypatch.setenv("LDM_BATCH_POLICIES_DIR", str(policies))
    monkeypatch.setenv("LDM_BATCH_HOME", str(tmp_path / "home"))
    return policies


def test_add_list_and_verify_a_local_folder(policies_copy, prefect_harness, settings, tmp_path):
    weights = policies_copy / "loras" / "house-sd"  # a diffusers folder under local_weights_roots
    shutil.copytree(REPO / "ldm_batch" / "demo_kit" / "weights" / "demo-tiny-sd", weights)
    added = cli("models", "add", weights, "--id", "house-sd", "--license", "Apache-2.0",
                "--license-url", "https://www.apache.org/licenses/LICENSE-2.0", "--commercial-use", "--json")
    assert added.exit_code == 0, added.output
    entry = load_policies(policies_copy).models["house-sd"]  # the catalog still loads, comments kept
    assert entry.sha256 == json.loads(added.stdout)["sha256"] and entry.license.commercial_use
    assert "# Model catalog" in (policies_copy / "models.yaml").read_text()
    lock = json.loads((policies_copy / "models.lock.json").read_text())["models"]["house-sd"]
    assert "unet/diffusion_pytorch_model.safetensors" in lock["files"] and "tokenizer/tokenizer.json" in lock["files"]

    listed = {row["id"]: row for row in map(json.loads, cli("models", "list", "--json").stdout.splitlines())}
    assert (listed["house-sd"]["family"], listed["house-sd"]["present"], listed["house-sd"]["locked"]) == (
        "StableDiffusionPipeline", True, True)
    assert (listed["sdxl-base-1.0"]["pinned"], listed["sdxl-base-1.0"]["present"]) == (False, False)

    assert cli("models", "verify", "house-sd").exit_code == 0
    config = weights / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace('"steps_offset": 1', '"steps_offset": 0'))
    verified = cli("models", "verify", "house-sd", "--json")
    assert verified.exit_code == 1
    problems = json.loads(verified.stdout)["problems"]
    assert "scheduler/scheduler_config.json: changed" in problems and "does not match the catalog's" in problems[-1]

    # a run refuses the changed weights, as verify does, before generating anything
    (tmp_path / "s.csv").write_text("asset_id,prompt,model\nh-1,a red circle,house-sd\n")
    run = cli("run", tmp_path / "s.csv", "--campaign", "house", "--json")
    assert run.exit_code == 2 and json.loads(run.stdout.splitlines()[-1])["refused"] == "weights"


def test_add_refuses_weights_outside_the_allowed_folders_and_pull_refuses_unpinned(policies_copy, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(REPO / "ldm_batch" / "demo_kit" / "weights" / "acme-style" / "pytorch_lora_weights.safetensors",
                outside)
    added = cli("models", "add", outside, "--id", "x", "--license", "MIT", "--license-url", "https://x",
                "--non-commercial")
    assert added.exit_code == 2 and "local_weights_roots" in " ".join(added.output.split())
    pulled = cli("models", "pull", "sd-1.5")
    assert pulled.exit_code == 2 and "must be pinned to a commit" in " ".join(pulled.output.split())


def test_an_add_that_would_break_the_catalog_changes_nothing(policies_copy):
    """models.yaml whose last key is not `models`: the appended entry would land under another
    key; the catalog no longer loads, so the file and the lock are put back as they were."""
    catalog = policies_copy / "models.yaml"
    text = catalog.read_text().replace("local_weights_roots: [loras]\n", "") + "local_weights_roots: [loras]\n"
    catalog.write_text(text)
    weights = policies_copy / "loras" / "house-sd"
    shutil.copytree(REPO / "ldm_batch" / "demo_kit" / "weights" / "demo-tiny-sd", weights)
    added = cli("models", "add", weights, "--id", "house-sd", "--license", "MIT", "--license-url", "https://x",
                "--commercial-use")
    assert added.exit_code == 2 and "models.yaml" in "".join(added.output.split())
    assert catalog.read_text() == text and not (policies_copy / "models.lock.json").exists()
    assert cli("models", "add", weights, "--id", "h2", "--license", "MIT", "--license-url", "https://x",
               "--commercial-use", "--kind", "video").exit_code == 2


def test_add_a_single_file_checkpoint_with_its_configs_and_run_it(policies_copy, prefect_harness, settings, tmp_path):
    """The demo model as one original-layout .safetensors: `models add` wants its family's
    configs, pins both, `models list` names its family from them, and a sheet runs on it."""
    from ldm_batch.demo_kit.tiny_families import single_file_copy

    kit = REPO / "ldm_batch" / "demo_kit" / "weights" / "demo-tiny-sd"
    (policies_copy / "loras").mkdir(exist_ok=True)
    single_file_copy(kit, policies_copy / "loras" / "kit.safetensors", policies_copy / "loras" / "kit-configs")
    base = ("models", "add", policies_copy / "loras" / "kit.safetensors", "--id", "kit-file", "--license",
            "Apache-2.0", "--license-url", "https://www.apache.org/licenses/LICENSE-2.0", "--commercial-use")
    bare = cli(*base)
    assert bare.exit_code == 2 and "pass --configs" in " ".join(bare.output.split())
    added = cli(*base, "--configs", policies_copy / "loras" / "kit-configs", "--json")
    assert added.exit_code == 0, added.output
    entry = load_policies(policies_copy).models["kit-file"]
    assert entry.config == str(policies_copy / "loras" / "kit-configs") and entry.config_sha256
    listed = {row["id"]: row for row in map(json.loads, cli("models", "list", "--json").stdout.splitlines())}
    assert listed["kit-file"]["family"] == "StableDiffusionPipeline" and listed["kit-file"]["present"]
    assert cli("models", "verify", "kit-file").exit_code == 0

    (tmp_path / "s.csv").write_text("asset_id,prompt,model,seed,width,height\n"  # `models add` leaves SD's 512 px
                                    "k-1,a red circle on a white background,kit-file,4,32,32\n"
                                    "k-2,a red circle on a white background,,4,32,32\n")
    run = cli("run", tmp_path / "s.csv", "--campaign", "kit-file", "--json")
    assert run.exit_code == 0, run.output
    from ldm_batch.audit import AuditLog

    records = {r["asset_id"]: r for r in AuditLog(settings.audit_url).query(campaign="kit-file", kind="image")}
    assert records["k-1"]["model_id"] == "kit-file" and records["k-2"]["model_id"] == "demo-tiny-sd"

    tokenizer = policies_copy / "loras" / "kit-configs" / "tokenizer" / "tokenizer_config.json"
    tokenizer.write_text(tokenizer.read_text().replace("}", ', "model_max_length": 8}', 1))
    verified = cli("models", "verify", "kit-file", "--json")
    assert verified.exit_code == 1 and "config_sha256" in json.loads(verified.stdout)["problems"][-1]
