"""The jobs ``saiki up`` schedules, their cadences, and the plain commands they run.

A cadence is an interval (``30s``, ``5m``, ``1h``, ``1d``) or a five-field cron expression
(``0 3 * * *``, in UTC); both become APScheduler triggers, which also tell ``saiki status``
when a job runs next. Every job is the ``saiki`` command a user (or cron) would run, run
as a child process, so a job that crashes or is killed takes nothing else down.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from saiki.core.config import SaikiConfig
from saiki.core.errors import ConfigError, InvalidInputError
from saiki.core.timeutil import parse_duration

# Retries of a failed job wait 30 s, 60 s, 120 s, … up to this, and never past the next
# scheduled run (which is itself the next try).
RETRY_FIRST_S = 30.0
RETRY_MAX_S = 15 * 60.0
# A retrain the policy starts ("monitor" said one is due) after retrains that did not win
# waits 1 h since the last one, doubling with each further loser, up to a day: a drift
# that a new model does not fix is not retrained on every recompute.
POLICY_WAIT_FIRST_S = 3600.0
POLICY_WAIT_MAX_S = 86_400.0


@dataclass(frozen=True)
class JobSpec:
    """One scheduled job: its name, cadence and the ``saiki`` arguments it runs."""

    name: str
    cadence: str
    argv: tuple[str, ...]


def job_specs(config: SaikiConfig) -> list[JobSpec]:
    """The jobs with the cadences of ``[schedule]``."""
    schedule = config.schedule
    jobs = [
        JobSpec("load", schedule.load, ("master", "load")),
        JobSpec("recompute", schedule.recompute, ("batch", "run")),
        JobSpec("monitor", schedule.monitor, ("monitor", "--guard")),
        JobSpec("retrain", schedule.retrain, ("train", "--promote-if-better")),
        JobSpec("maintain", schedule.maintain, ("master", "maintain")),
    ]
    if config.models.require_shadow:  # the retrain policy stages winners; this releases them
        jobs.append(JobSpec("shadow", schedule.shadow, ("models", "compare", "--promote")))
    return jobs


def trigger_for(name: str, cadence: str) -> BaseTrigger:
    """The APScheduler trigger for ``cadence``; a ``ConfigError`` naming the key if it is
    neither an interval nor a cron expression."""
    text = cadence.strip()
    if len(text.split()) == 5:
        try:
            return CronTrigger.from_crontab(text, timezone=dt.UTC)
        except ValueError as exc:
            raise ConfigError(f"schedule.{name}: not a cron expression: {exc}") from exc
    try:
        millis = parse_duration(text, f"schedule.{name}")
    except InvalidInputError as exc:
        raise ConfigError(
            f"schedule.{name}: expected an interval like 5m, 1h, 1d or a cron expression "
            f"like '0 3 * * *', got {cadence!r}"
        ) from exc
    if millis < 1000:
        raise ConfigError(f"schedule.{name}: must be at least 1s, got {cadence!r}")
    return IntervalTrigger(seconds=millis / 1000, timezone=dt.UTC)


def next_run(name: str, cadence: str, last_start: float | None, now: float) -> float | None:
    """When a job on ``cadence`` runs next (epoch seconds), given its last start: the
    answer ``saiki status`` gives, whoever runs the jobs."""
    trigger = trigger_for(name, cadence)
    now_dt = dt.datetime.fromtimestamp(now, dt.UTC)
    if isinstance(trigger, IntervalTrigger):
        # A job that never ran waits one interval (a fresh ``saiki up`` serves first);
        # one that is overdue runs now.
        interval = float(trigger.interval.total_seconds())
        return max((now if last_start is None else last_start) + interval, now)
    previous = dt.datetime.fromtimestamp(last_start, dt.UTC) if last_start else None
    fire = trigger.get_next_fire_time(previous, now_dt)
    return float(fire.timestamp()) if fire else None


def retry_delay(failures: int) -> float:
    """Seconds before the next try after ``failures`` consecutive failures."""
    return float(min(RETRY_FIRST_S * 2 ** max(failures - 1, 0), RETRY_MAX_S))


def policy_retrain(
    last_retrain: float | None, last_recompute: float | None, losers: int, now: float
) -> str | None:
    """Whether the retrain policy retrains now, when ``monitor`` says one is due: None
    when it does, else why not. ``last_retrain`` and ``last_recompute`` are the last
    starts of those jobs; ``losers`` the versions trained since the one in production
    (retrains that did not win, or a rolled-back one)."""
    if last_retrain is None:
        return None
    if last_recompute is None or last_retrain >= last_recompute:
        return "nothing recomputed since the last retrain"
    if losers:
        wait = min(POLICY_WAIT_FIRST_S * 2 ** (losers - 1), POLICY_WAIT_MAX_S)
        if now - last_retrain < wait:
            return (
                f"{losers} version(s) trained since production did not replace it; "
                f"the next policy retrain waits until {wait / 3600:g} h after the last"
            )
    return None


def validate(config: SaikiConfig) -> None:
    """Fail early, naming the key, on a cadence that is not one."""
    for spec in job_specs(config):
        trigger_for(spec.name, spec.cadence)
    try:
        parse_duration(config.schedule.snapshot_retention, "schedule.snapshot_retention")
    except InvalidInputError as exc:
        raise ConfigError(
            f"schedule.snapshot_retention: expected a duration like 1d or 12h, "
            f"got {config.schedule.snapshot_retention!r}"
        ) from exc
