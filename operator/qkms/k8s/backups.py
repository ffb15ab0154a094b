"""The KeyPolicy's scheduled work on its environment: encrypted backups where
``backupPolicy.enabled`` (daily, ``QKMS_BACKUP_INTERVAL_SECONDS``) and the audit log's
retention (hourly). Kopf timers on KeyPolicies, so only the elected replica runs them."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from qkms import backup
from qkms.config import OperatorConfig
from qkms.errors import InvalidInputError
from qkms.model.policy import KeyPolicy, parse_key_policy

from .policies import KEY_POLICIES
from .runtime import OperatorRuntime, runtime_of
from .secret_store import BACKUP_KEY_SECRET, load_or_create_kek_secret


async def back_up(runtime: OperatorRuntime, policy: KeyPolicy) -> str:
    """One backup of the policy's environment onto the data volume, pruning those past
    ``backupPolicy.retentionPeriod``; the backup key lives in its own Secret."""
    service = await runtime.service(policy.spec.environment)
    key = await asyncio.to_thread(load_or_create_kek_secret, runtime.kube.core,
                                  runtime.namespace, BACKUP_KEY_SECRET)
    path, pruned = await backup.scheduled(service, runtime.registry.settings.data_dir /
                                          "backups", key,
                                          policy.spec.backup_policy.retention_period)
    return f"wrote {path.name}, pruned {len(pruned)}"


# Read at import, not from memo: @kopf.timer takes its interval and initial delay when this
# module registers it, before the startup handler runs (the variables are read in config.py).
_SCHEDULE = OperatorConfig.from_env()


@kopf.timer(*KEY_POLICIES, interval=_SCHEDULE.backup_interval_seconds,
            initial_delay=_SCHEDULE.backup_delay_seconds)
async def scheduled_backup(body: kopf.Body, logger: Any, memo: kopf.Memo, **_: Any) -> None:
    try:
        policy = parse_key_policy(body)
    except InvalidInputError:
        return  # the policy's own handler reports it
    if policy.spec.backup_policy.enabled:
        logger.info(await back_up(runtime_of(memo), policy))


@kopf.timer(*KEY_POLICIES, interval=3600.0, initial_delay=60.0)
async def audit_retention(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Prune the environment's audit log to the policy's retention period."""
    policy = parse_key_policy(body)
    service = await runtime_of(memo).service(policy.spec.environment)
    await service.prune_audit()
