"""The metadata store: projects, API keys, models, versions, reference uploads, monitors,
alert channels, rules and state, the notification outbox, retraining policies and triggers.

SQLite under DRIFTLINE_HOME by default, PostgreSQL in production; the schema is
managed by alembic revisions shipped in `migrations/` and applied by `migrate()`.

    store = MetaStore.from_url(settings.resolved_database_url)
    store.migrate()
    with store.repos() as r:
        key = r.keys.verify(plaintext)
"""

from driftline.storage.meta.alert_rules import AlertRepository, ChannelRepository, RuleRepository
from driftline.storage.meta.alerting import (
    AlertRecord,
    AlertStatus,
    ChannelRecord,
    ChannelType,
    OutboxKind,
    OutboxRecord,
    OutboxState,
    PolicyRecord,
    RuleRecord,
    Severity,
    TriggerRecord,
    TriggerState,
)
from driftline.storage.meta.db import MetaStore, Repositories, make_engine, normalize_url
from driftline.storage.meta.keys import KeyRepository, generate_key, hash_key
from driftline.storage.meta.migrate import alembic_config, current_revision, head_revision, migrate
from driftline.storage.meta.models import KeyRole, ReferenceFormat
from driftline.storage.meta.monitors import (
    LeaseInfo,
    LeaseRepository,
    ModelRef,
    MonitorRecord,
    MonitorRepository,
)
from driftline.storage.meta.outbox import OutboxRepository
from driftline.storage.meta.projects import DEFAULT_PROJECT, ProjectRepository
from driftline.storage.meta.records import KeyInfo, ModelInfo, ProjectInfo, ReferenceInfo, VersionInfo
from driftline.storage.meta.registry import (
    ModelRepository,
    ReferenceRepository,
    VersionRepository,
    schema_differences,
)
from driftline.storage.meta.retraining import PolicyRepository, TriggerRepository

__all__ = [
    "DEFAULT_PROJECT",
    "AlertRecord",
    "AlertRepository",
    "AlertStatus",
    "ChannelRecord",
    "ChannelRepository",
    "ChannelType",
    "KeyInfo",
    "KeyRepository",
    "KeyRole",
    "LeaseInfo",
    "LeaseRepository",
    "MetaStore",
    "ModelInfo",
    "ModelRef",
    "ModelRepository",
    "MonitorRecord",
    "MonitorRepository",
    "OutboxKind",
    "OutboxRecord",
    "OutboxRepository",
    "OutboxState",
    "PolicyRecord",
    "PolicyRepository",
    "ProjectInfo",
    "ProjectRepository",
    "ReferenceFormat",
    "ReferenceInfo",
    "ReferenceRepository",
    "Repositories",
    "RuleRecord",
    "RuleRepository",
    "Severity",
    "TriggerRecord",
    "TriggerRepository",
    "TriggerState",
    "VersionInfo",
    "VersionRepository",
    "alembic_config",
    "current_revision",
    "generate_key",
    "hash_key",
    "head_revision",
    "make_engine",
    "migrate",
    "normalize_url",
    "schema_differences",
]
