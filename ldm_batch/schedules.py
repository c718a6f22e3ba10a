"""Recurring campaigns: schedules on the `campaign-batch` deployment of the Prefect server that
`ldm-batch serve` runs, one per sheet an author made recurring.

Each schedule carries its run's parameters (the sheet's s3:// URI under the sheets prefix, the
campaign, its use, who made it) and a slug naming its author, so the Prefect UI shows the same
schedules, and an author sees, pauses and removes only their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from uuid import UUID

DEPLOYMENT = "campaign-batch/campaign-batch"


class ScheduleError(Exception):
    """A schedule that cannot be made or changed, said so a person can fix it."""


@dataclass
class Schedule:
    id: str
    cron: str
    timezone: str
    active: bool
    sheet: str
    campaign: str
    use: str


def prefect_server() -> str | None:
    """The Prefect server schedules live on; None when none is configured."""
    return os.environ.get("PREFECT_API_URL")


def prefect_client():
    """A client of the configured Prefect server (PREFECT_API_URL), never a temporary one."""
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(prefect_server(), api_key=os.environ.get("PREFECT_API_KEY"))


def _deployment_id(client) -> UUID:
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(DEPLOYMENT).id
    except ObjectNotFound:
        raise ScheduleError(f"the Prefect server has no {DEPLOYMENT} deployment; start the stack with "
                            "`ldm-batch serve`") from None


def schedules_of(author: str) -> list[Schedule]:
    with prefect_client() as client:
        found = client.read_deployment_schedules(_deployment_id(client))
    return [Schedule(id=str(s.id), cron=s.schedule.cron, timezone=s.schedule.timezone or "UTC", active=s.active,
                     sheet=s.parameters.get("sheet", ""), campaign=s.parameters.get("campaign", ""),
                     use=s.parameters.get("use", "commercial"))
            for s in found if (s.slug or "").startswith(f"{author}--")]


def add_schedule(author: str, sheet_uri: str, campaign: str, use: str, cron: str, timezone: str) -> Schedule:
    """A new active schedule that runs the sheet as `campaign` by `cron` in `timezone`."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        schedule = CronSchedule(cron=cron, timezone=timezone or "UTC")
    except ValidationError as exc:
        raise ScheduleError("; ".join(e["msg"] for e in exc.errors())) from None
    parameters = {"sheet": sheet_uri, "campaign": campaign, "use": use, "started_by": author}
    with prefect_client() as client:
        (made,) = client.create_deployment_schedules(_deployment_id(client), [DeploymentScheduleCreate(
            schedule=schedule, active=True, parameters=parameters, slug=f"{author}--{campaign}--{cron}"[:200])])
    return Schedule(str(made.id), cron, schedule.timezone, True, sheet_uri, campaign, use)


def change_schedule(author: str, schedule_id: str, action: str) -> None:
    """Pause, resume or remove one of the author's schedules."""
    if schedule_id not in {s.id for s in schedules_of(author)}:
        raise ScheduleError("no such schedule of yours")
    with prefect_client() as client:
        deployment = _deployment_id(client)
        if action == "remove":
            client.delete_deployment_schedule(deployment, UUID(schedule_id))
        elif action in ("pause", "resume"):
            client.update_deployment_schedule(deployment, UUID(schedule_id), active=action == "resume")
        else:
            raise ScheduleError("action must be pause, resume or remove")
