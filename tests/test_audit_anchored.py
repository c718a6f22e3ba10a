"""The audit log against someone with write access to its database but not to the home's seal
key: every edit of issue 19 is made for real, in SQLite and PostgreSQL, and `verify` names it.
Checkpoints (signed heads) are what catch truncation and consistent rewrites."""

from __future__ import annotations

import json
import shutil

import pytest
from sqlalchemy import text

from ldm_batch.audit import AuditLog, AuditRecord
from ldm_batch.audit.log import GENESIS, record_hash
from ldm_batch.audit.seal import Sealer


def image(i: int, license_id: str = "Apache-2.0") -> AuditRecord:
    return AuditRecord(
        kind="image", run_id="run-1", campaign="c", sheet="s.csv", sheet_row=i, asset_id=f"a{i}",
        decision="quarantined" if i == 1 else "delivered", prompt=f"prompt {i}", text_verdict={"decision": "allow"},
        model_id="demo-tiny-sd", model_license={"id": license_id, "commercial_use": True}, seed=i,
        image_key=f"c/a{i}.png", s3_key=f"delivery/c/a{i}.png", image_sha256=f"{i:064x}",
        created_at=f"2026-12-01T10:00:0{i}+00:00")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def sealed(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'audit.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    log = AuditLog(url, Sealer(tmp_path / "home", url))
    log.migrate()
    log.start_run("run-1", "c", "s.csv", "f" * 64)
    log.append([image(i) for i in range(1, 5)])
    review = image(1).model_copy(update={"kind": "review", "decision": "approved", "reviewer": "alice",
                                         "reasons": ["approved by alice: fine"]})
    log.append([review])
    log.finish_run("run-1", "finished", {"images": 4})
    log.seal()
    assert log.verify().ok, log.verify().problems
    return log


def sql(log: AuditLog, *statements: str) -> None:
    with log.engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))


def rehash_from(log: AuditLog, first_seq: int = 1, edit=None) -> None:
    """What an attacker with the database can do: renumber and recompute every hash so the chain
    and its normalised copies are consistent again (the old `verify` found nothing wrong)."""
    with log.engine.begin() as connection:
        rows = connection.execute(text("SELECT seq, payload FROM audit_records ORDER BY seq")).all()
        copies = {table: [dict(r._mapping) for r in connection.execute(text(f"SELECT * FROM {table}"))]
                  for table in ("reviews", "lora_uses")}
        connection.execute(text("DELETE FROM reviews"))
        connection.execute(text("DELETE FROM lora_uses"))
        renumbered, prev = {}, GENESIS
        connection.execute(text("UPDATE audit_records SET seq = -seq, record_hash = 'x' || CAST(seq AS TEXT)"))
        for new_seq, (seq, payload) in enumerate(rows, start=first_seq):
            payload = edit(payload) if edit else payload
            digest = record_hash(new_seq, prev, payload)
            connection.execute(text("UPDATE audit_records SET seq = :new, payload = :p, prev_hash = :prev, "
                                    "record_hash = :h WHERE seq = :old"),
                               {"new": new_seq, "p": payload, "prev": prev, "h": digest, "old": -seq})
            renumbered[seq], prev = new_seq, digest
        for table, saved in copies.items():
            for row in saved:
                row = {**row, "record_seq": renumbered[row["record_seq"]]}
                columns = ", ".join(row)
                connection.execute(text(f"INSERT INTO {table} ({columns}) VALUES ({', '.join(':' + c for c in row)})"),
                                   row)
        connection.execute(text("UPDATE chain_head SET seq = :s, hash = :h"), {"s": first_seq + len(rows) - 1, "h": prev})


def problems(log: AuditLog) -> list[str]:
    report = log.verify()
    assert not report.ok
    return report.problems


def test_truncating_the_end_and_moving_the_head_back_is_detected(sealed):
    with sealed.engine.begin() as connection:
        keep = connection.execute(text("SELECT seq, record_hash FROM audit_records WHERE seq = 3")).one()
    sql(sealed, "DELETE FROM reviews", "DELETE FROM lora_uses", "DELETE FROM audit_records WHERE seq > 3",
        f"UPDATE chain_head SET seq = 3, hash = '{keep.record_hash}'")
    assert any("is missing" in p for p in problems(sealed))


def test_deleting_every_record_and_resetting_the_head_is_detected(sealed):
    sql(sealed, "DELETE FROM reviews", "DELETE FROM lora_uses", "DELETE FROM audit_records", "DELETE FROM runs",
        f"UPDATE chain_head SET seq = 0, hash = '{GENESIS}'")
    assert any("is missing" in p for p in problems(sealed))


def test_a_consistent_rewrite_of_the_whole_chain_is_detected(sealed):
    rehash_from(sealed, edit=lambda payload: payload.replace("prompt 2", "prompt two"))
    assert any("differs from what was sealed" in p for p in problems(sealed))


def test_deleting_the_first_record_and_rehashing_the_rest_is_detected(sealed):
    sql(sealed, "DELETE FROM audit_records WHERE seq = 1")
    rehash_from(sealed)
    found = problems(sealed)
    assert any("differs from what was sealed" in p or "is missing" in p for p in found), found


@pytest.mark.parametrize("column, value", [("model_license", "'CC-BY-NC-4.0'"),
                                           ("created_at", "'2020-01-01 00:00:00'")])
def test_editing_a_query_column_of_an_image_record_is_detected(sealed, column, value):
    assert {r["asset_id"] for r in sealed.query(license="CC-BY-NC-4.0")} == set()
    sql(sealed, f"UPDATE audit_records SET {column} = {value} WHERE seq = 3")
    assert f"record 3: column {column} differs from the hashed record" in problems(sealed)


@pytest.mark.parametrize("edit", ["status = 'failed'", "summary = '{\"images\": 0}'", "sheet_sha256 = 'e'",
                                  "campaign = 'other'"])
def test_editing_the_runs_table_is_detected(sealed, edit):
    sql(sealed, f"UPDATE runs SET {edit} WHERE id = 'run-1'")
    assert any(p.startswith("run run-1:") and "differ from the hashed run record" in p for p in problems(sealed))


def test_a_run_added_outside_the_pipeline_is_detected(sealed):
    sql(sealed, "INSERT INTO runs (id, campaign, sheet, sheet_sha256, status, started_at) "
                "VALUES ('run-9', 'c', 's.csv', 'e', 'finished', '2026-12-01 00:00:00')")
    assert any(p.startswith("run run-9: not in the hash chain") for p in problems(sealed))


def test_editing_when_a_review_was_made_is_detected(sealed):
    sql(sealed, "UPDATE reviews SET created_at = '2020-01-01 00:00:00'")
    assert any("review rows differ" in p for p in problems(sealed))


def test_a_forged_or_deleted_checkpoint_does_not_pass(sealed, tmp_path):
    folder = sealed.sealer.folder
    latest = sorted(folder.glob("*.json"))[-1]
    forged = json.loads(latest.read_text())
    forged["head"] = "0" * 64
    (folder / "999999999999.json").write_text(json.dumps(forged))
    assert any("signature does not hold" in p for p in problems(sealed))
    shutil.rmtree(folder)
    assert sealed.verify().ok  # without checkpoints only the chain is checked: what the README says


def test_another_homes_checkpoints_are_checked_once_its_key_is_trusted(sealed, tmp_path):
    other = Sealer(tmp_path / "other-home", sealed.url)
    other.folder = sealed.sealer.folder  # the same place: a shared bucket prefix
    seq, head = sealed.head()
    other.seal(seq, "f" * 64)  # another host's (here: wrong) checkpoint
    report = sealed.verify()
    assert report.ok and any("signed by a key this home does not trust" in n for n in report.notes)
    sealed.sealer.trusted_keys.add(other.public_key_text())
    assert any("differs from what was sealed" in p for p in problems(sealed))
