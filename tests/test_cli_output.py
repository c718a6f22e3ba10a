"""What the terminal shows is what the data says: prompts with Rich markup ("[/b]",
"[link=...]", "[black on black]") are printed as written, never interpreted, in every
command that prints data; error messages never echo a file that is not a sheet."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ldm_batch.audit import AuditLog, AuditRecord
from ldm_batch.cli import app

MARKUP = [
    "a red circle [/b] on white",
    "a blue square [link=https://evil.example]click[/link] on yellow",
    "a green star [black on black]hidden words[/black on black] on white",
]


def cli(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


@pytest.mark.parametrize("prompt", MARKUP)
def test_screen_text_prints_markup_as_written(prompt):
    result = cli("screen", "text", prompt)
    assert result.exit_code == 0, result.output
    assert prompt in result.output


def quarantined(prompt: str, seq: int) -> AuditRecord:
    return AuditRecord(
        kind="image", run_id="run-1", campaign="c", sheet="s.csv", sheet_row=seq, asset_id=f"a[/b]{seq}",
        decision="quarantined", reasons=["emblem [red]fired[/red]"], prompt=prompt,
        text_verdict={"decision": "allow", "screen": "test"}, image_verdict={"decision": "review", "screen": "t"},
        model_id="demo-tiny-sd", loras=[], width=32, height=32, steps=2, guidance=5.0, seed=seq, variant=1,
        batch_index=0, batch_size=1, image_key=f"c/a{seq}/a{seq}-v1.png", s3_key=f"quarantine/c/a{seq}/a{seq}-v1.png",
        image_sha256=f"{seq:064x}", created_at="2026-12-01T00:00:00+00:00")


def test_review_list_and_audit_explain_show_markup_as_written(tmp_path):
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    log = AuditLog(url)
    log.migrate()
    log.append([quarantined(prompt, i) for i, prompt in enumerate(MARKUP, start=1)])
    env = {"LDM_BATCH_DATABASE_URL": url, "COLUMNS": "400"}
    listed = cli("review", "list", env=env)
    assert listed.exit_code == 0, listed.output
    for prompt in MARKUP:
        assert prompt in listed.output
    assert "emblem [red]fired[/red]" in listed.output
    explained = cli("audit", "explain", "c/a2/a2-v1.png", env=env)
    assert explained.exit_code == 0, explained.output
    assert "[link=https://evil.example]click[/link]" in explained.output
    assert "a[/b]2" in explained.output


def test_validate_does_not_echo_a_file_that_is_not_a_sheet(tmp_path):
    secret = "s3cr3t-" + "9" * 32
    keys = tmp_path / "credentials.json"
    keys.write_text(json.dumps({"access_key_id": "ldmkey0123456789", "secret_access_key": secret}))
    for extra in ([], ["--json"]):
        result = cli("validate", keys, *extra)
        assert result.exit_code == 2
        assert secret not in result.output and "ldmkey0123456789" not in result.output
        assert "required column 'prompt' is missing" in result.output


def test_the_home_and_its_audit_database_are_private(tmp_path):
    import stat

    home = tmp_path / "home"
    result = cli("audit", "query", env={"LDM_BATCH_HOME": str(home), "LDM_BATCH_DATABASE_URL": ""})
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "audit.db").stat().st_mode) == 0o600


@pytest.mark.parametrize("key", ["../../escape.png", "delivery/a/../../../x.png", "/etc/cron.d/x"])
def test_store_export_keeps_every_key_inside_its_folder(tmp_path, key):
    """SeaweedFS refuses such keys; other S3 stores (AWS S3 among them) accept them."""
    from ldm_batch.storage import export_path

    with pytest.raises(ValueError, match="outside"):
        export_path(tmp_path / "out", key)
    assert export_path(tmp_path / "out", "delivery/c/a.png") == (tmp_path / "out" / "delivery/c/a.png").resolve()


def test_commands_that_read_do_not_load_torch_diffusers_or_prefect(tmp_path):
    """validate, audit and review start in about a second: they never import the model stack."""
    import subprocess
    import sys

    from conftest import REPO

    code = ("import sys\nfrom typer.testing import CliRunner\nfrom ldm_batch.cli import app\n"
            f"for args in (['validate', {str(REPO / 'examples' / 'campaign_small.csv')!r}], ['audit', 'query'], "
            "['review', 'list'], ['audit', 'verify']):\n"
            "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
            "print(sorted({'torch', 'diffusers', 'transformers', 'prefect', 'open_clip'} & set(sys.modules)))")
    env = {"LDM_BATCH_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_campaign_flow_loads_the_model_stack_only_when_a_batch_needs_it(tmp_path):
    """A run whose images are all stored never generates: importing the flow and taking the
    process's parts (policies, S3, audit log, text screen) leaves diffusers, open_clip and Dask
    unloaded (torch is loaded by the text screen's English head); the first generator loads them."""
    import subprocess
    import sys

    from conftest import REPO

    stack = "{'torch', 'diffusers', 'open_clip', 'distributed'}"
    code = ("import sys\nimport flows.campaign_batch\nfrom ldm_batch.config import Settings\n"
            "from ldm_batch.parts import Parts\n"
            "parts = Parts.of(Settings())\nparts.text_screen.screen(['a red circle on a blue background'])\n"
            f"print(sorted({stack} & set(sys.modules)))\n"
            "parts.generator.pipeline(parts.policies.default_model)\n"
            f"print(sorted({stack} & set(sys.modules)))")
    env = {"LDM_BATCH_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    before, after = done.stdout.strip().splitlines()[-2:]
    assert before == "['torch']"
    assert after == "['diffusers', 'torch']"
