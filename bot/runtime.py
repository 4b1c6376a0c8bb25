"""The services container: built once from settings, handed to handlers, jobs and the CLI."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from bot.aws import clients
from bot.aws.alarms import Alarms
from bot.aws.budgets import Budgets
from bot.aws.cost_explorer import CostExplorer
from bot.aws.enforcement import Enforcer
from bot.aws.logs import LogsInsights
from bot.aws.metrics import CloudWatchMetrics
from bot.aws.price_list import PriceList
from bot.aws.profiles import AwsProfiles, LocalProfiles, ProfilesBackend
from bot.aws.sns import DEFAULT_MAX_AGE, CertificateStore, SnsVerifier
from bot.clock import Clock, utcnow
from bot.config import Settings
from bot.db import Database
from bot.pricing import PriceTable
from bot.services.audit import Keyring
from bot.slack.notifier import Notifier, NullNotifier

if TYPE_CHECKING:
    from bot.flows.events import Stored
    from bot.flows.group_commit import GroupCommit
    from bot.services.events import EventOutcome

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Adapters to every external system, each replaceable by a fake in tests."""

    settings: Settings
    db: Database
    clock: Clock = utcnow
    notifier: Notifier = field(default_factory=NullNotifier)
    overrides: dict[str, Any] = field(default_factory=dict)

    def aws_client(self, service: str) -> Any:
        return self.overrides.get(service) or clients.client(service, self.settings.aws)

    @cached_property
    def profiles(self) -> ProfilesBackend:
        if "profiles" in self.overrides:
            return self.overrides["profiles"]  # type: ignore[no-any-return]
        aws = self.settings.aws
        if aws.profiles_backend == "local":
            return LocalProfiles(self.db, aws.region, self.account_id, self.clock)
        return AwsProfiles(self.aws_client("bedrock"), sts_client=self.aws_client("sts"))

    @cached_property
    def alarms(self) -> Alarms:
        return Alarms(self.aws_client("cloudwatch"))

    @cached_property
    def budgets(self) -> Budgets:
        return Budgets(self.aws_client("budgets"), self.account_id)

    @cached_property
    def account_id(self) -> str:
        return str(self.overrides.get("account_id") or self._account_id())

    def _account_id(self) -> str:
        try:
            return str(self.aws_client("sts").get_caller_identity()["Account"])
        except Exception as exc:  # offline without any endpoint: a fixed, obviously fake id
            log.warning("no AWS account id (%s); the local registry uses 000000000000",
                        type(exc).__name__)
            return "000000000000"

    @cached_property
    def metrics(self) -> CloudWatchMetrics:
        return CloudWatchMetrics(self.aws_client("cloudwatch"))

    @cached_property
    def access(self) -> Enforcer:
        aws = self.settings.aws
        return Enforcer(self.aws_client("iam"), dry_run=aws.dry_run, sso_method=aws.sso_method,
                        client=self.aws_client, scp_target=aws.scp_target)

    def sns_verifier(self, max_age: timedelta | None = DEFAULT_MAX_AGE) -> SnsVerifier:
        """HTTP deliveries are fresh; the SQS poller passes max_age=None (queued messages wait)."""
        certs = self.overrides.get("sns_certs") or self._certs
        return SnsVerifier(certs, self.settings.aws.sns_topic_arns, clock=self.clock, max_age=max_age)

    @cached_property
    def _certs(self) -> CertificateStore:
        return CertificateStore(self.settings.aws.sns_cert_dir)

    @cached_property
    def logs_insights(self) -> LogsInsights:
        return LogsInsights(self.aws_client("logs"))

    @property
    def prices(self) -> PriceTable:
        """Shipped table < AWS Price List prices stored by `prices refresh` < BOT_PRICING_FILE.
        Loaded once; again when the stored prices could not be read (the database was down)."""
        from bot.flows.prices import load_prices

        table: PriceTable | None = self.__dict__.get("_price_table")
        if table is None or table.stored_unreadable:
            table = load_prices(self.db, self.settings.aws.region,
                                self.overrides.get("pricing_file") or self.settings.bot.pricing_file)
            self.__dict__["_price_table"] = table
        return table

    def reload_prices(self) -> PriceTable:
        """After a refresh: the next sync prices with what was just stored."""
        self.__dict__.pop("_price_table", None)
        return self.prices

    @cached_property
    def price_list(self) -> PriceList:
        from bot.flows.prices import endpoint_region

        client = self.overrides.get("pricing") or clients.client(
            "pricing", self.settings.aws, region_name=endpoint_region(self.settings.aws.region))
        return PriceList(client)

    @cached_property
    def cost_explorer(self) -> CostExplorer:
        # Cost Explorer answers from one endpoint per partition (us-east-1; cn-northwest-1 in China).
        region = "cn-northwest-1" if self.settings.aws.region.startswith("cn-") else "us-east-1"
        client = self.overrides.get("ce") or clients.client("ce", self.settings.aws, region_name=region)
        return CostExplorer(client)

    @cached_property
    def sns_store(self) -> GroupCommit[Stored, EventOutcome]:
        """One per process: SNS messages that need no AWS call, group-committed."""
        from bot.flows.events import store_group

        return store_group(self)

    @property
    def tz(self) -> Any:
        return self.settings.bot.tz

    @property
    def week_start(self) -> int:
        return self.settings.bot.week_start_index


def build_services(settings: Settings, clock: Clock = utcnow, notifier: Notifier | None = None,
                   **overrides: Any) -> Services:
    db = Database(settings.db.url, audit_keyring=audit_keyring(settings))
    return Services(settings, db, clock, notifier or NullNotifier(), dict(overrides))


def audit_keyring(settings: Settings) -> Keyring:
    """BOT_AUDIT_KEY signs new audit rows; BOT_AUDIT_PREVIOUS_KEYS only verify older ones."""
    a = settings.audit
    return Keyring(a.key.get_secret_value() if a.key else None,
                   [k.get_secret_value() for k in a.previous_keys])
