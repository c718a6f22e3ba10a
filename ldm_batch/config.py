"""Settings: one object, read from LDM_BATCH_* environment variables or a YAML file."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import yaml
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_POLICIES = Path(__file__).resolve().parent.parent / "policies"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LDM_BATCH_", extra="forbid")

    home: Path = Path(".ldm_batch")
    policies_dir: Path = REPO_POLICIES
    database_url: SecretStr | None = None  # may hold a password: kept out of reprs and logs
    # No endpoint means the embedded SeaweedFS under `home`, started by the CLI.
    s3_endpoint_url: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    s3_bucket: str = "ldm-batch"
    delivery_prefix: str = "delivery/"
    quarantine_prefix: str = "quarantine/"
    reports_prefix: str = "reports/"  # run contact sheets
    inbox_prefix: str = "inbox/"  # sheets waiting for the inbox sweep, and their reports
    sheets_prefix: str = "sheets/"  # sheets a deployment run may name by s3:// URI (as may the inbox's)
    # Local folders a flow may read sheets from; none: only s3:// sheets in the bucket. The CLI
    # adds the folder of the sheet its user names (their own shell could read it anyway).
    sheet_roots: list[Path] = []
    device: str = "auto"
    batch_size: int = 4
    compile_unet: bool = False  # torch.compile the UNet (CUDA only); recorded in each image's runtime
    # A Prefect global concurrency limit (one per GPU, limit 1) held while a batch generates;
    # none: no limit (one process, or the embedded default).
    gpu_slot: str | None = None
    # Scale-out: batches spread over a Dask cluster (its scheduler's address), or over a
    # local cluster of this many worker processes with one thread each; neither: threads.
    dask_address: str | None = None
    dask_workers: int = 0
    embedded_s3_port: int = 18333
    # The organisation's annual revenue (USD), declared for licenses that allow commercial use only
    # under a threshold (the Stability AI Community License: 1,000,000); none: such runs are refused.
    organisation_revenue_usd: int | None = None
    # The most a campaign started from the console may cost (in costs.yaml's currency), by the
    # estimate from recorded images of the same model and size; none: no limit.
    campaign_budget: float | None = None
    # C2PA signing of every stored PNG: a PEM certificate chain (signer first) and its PKCS8 key.
    c2pa_certificate: Path | None = None
    c2pa_private_key: Path | None = None
    c2pa_timestamp_url: str | None = None  # a timestamp authority; none offline
    # Certificates (PEM) that `provenance check` trusts as C2PA signers' roots; none: a valid
    # signature is reported as Valid, never as Trusted.
    c2pa_trust_anchors: Path | None = None
    # The Ed25519 key that signs audit checkpoints (PKCS8 PEM); default <home>/audit-seal.key, made on first use.
    audit_seal_key: Path | None = None
    # Public keys (base64) of other homes sharing this audit database (other hosts): their
    # checkpoints are checked too. Simpler: give every host the same audit_seal_key.
    audit_trusted_keys: list[str] = []

    @property
    def uses_dask(self) -> bool:
        """Whether batches run on Dask workers (other processes, each owning its GPU)."""
        return bool(self.dask_address or self.dask_workers)

    @property
    def audit_url(self) -> str:
        if self.database_url:
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.home / 'audit.db').resolve()}"

    def identity(self) -> str:
        """All values, secrets included, as one string: a cache key that never leaves the process."""
        return repr([(name, value.get_secret_value() if isinstance(value, SecretStr) else value)
                     for name, value in self])


def load_settings(config_file: Path | None = None, **overrides) -> Settings:
    """Settings from the environment; a YAML config file's keys take precedence."""
    values = {}
    if config_file is not None:
        values = yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{config_file}: expected a mapping of setting names to values")
    return Settings(**values, **overrides)


# Settings that are secrets: never pickled to a Dask worker; each worker has them in its own environment.
SECRETS = ("database_url", "s3_access_key_id", "s3_secret_access_key")


def split_secrets(settings: Settings) -> tuple[Settings, tuple[str, ...]]:
    """Settings safe to send to another process (secrets removed), and the names it must fill in."""
    names = tuple(name for name in SECRETS if getattr(settings, name) is not None)
    return settings.model_copy(update={name: None for name in names}), names


def fill_secrets(settings: Settings, names: tuple[str, ...]) -> Settings:
    """Shipped settings completed from this process's own environment; a worker without one of
    them refuses rather than falling back to defaults (another database, another store)."""
    own = load_settings()
    missing = [name for name in names if getattr(own, name) is None]
    if missing:
        raise RuntimeError("this worker's environment lacks " + ", ".join(f"LDM_BATCH_{n.upper()}" for n in missing)
                           + "; workers take secrets from their own environment, never over the network")
    return settings.model_copy(update={name: getattr(own, name) for name in names})


def secret_environment(settings: Settings) -> dict[str, str]:
    """The secrets as LDM_BATCH_* variables, for worker processes this process starts itself."""
    values = {name: getattr(settings, name) for name in SECRETS if getattr(settings, name) is not None}
    return {f"LDM_BATCH_{name.upper()}": value.get_secret_value() if isinstance(value, SecretStr) else value
            for name, value in values.items()}


_IN_USE: ContextVar[Settings | None] = ContextVar("ldm_batch_settings", default=None)


@contextmanager
def settings_in_use(settings: Settings) -> Iterator[Settings]:
    """Hand settings to the flows run inside the block (the CLI's, with the embedded S3's
    endpoint and keys), as a value rather than through the process environment."""
    token = _IN_USE.set(settings)
    try:
        yield settings
    finally:
        _IN_USE.reset(token)


def current_settings() -> Settings:
    """The settings a flow runs with: those the caller put in use, else this process's own
    (a Prefect worker's environment). Never a flow parameter: a deployment's caller must
    not be able to point a run at other policies or another store."""
    return _IN_USE.get() or load_settings()
