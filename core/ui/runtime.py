"""The process-wide engine of the Streamlit app: one Runtime (settings, schema upgrade, background
runs), the first-admin bootstrap and the login throttle, each made once per process."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

import streamlit as st

from core import accounts, telemetry
from core.accounts import BootstrapResult, LoginThrottle
from core.config import Settings, load_settings
from core.logs import configure_logging
from core.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppServices:
    """What the app shares across sessions: the Runtime (the composition root), the login
    throttle, and how the first admin was made."""

    runtime: Runtime
    throttle: LoginThrottle
    bootstrap: BootstrapResult | None


def secrets_overrides() -> dict[str, Any]:
    """Top-level scalars of .streamlit/secrets.toml that name a setting (e.g. OPENAI_API_KEY);
    tables such as [auth] belong to Streamlit."""
    try:
        raw = st.secrets.to_dict()
    except Exception:  # noqa: BLE001 - no secrets file, or an unreadable one: env only
        return {}
    return {
        key.lower(): value
        for key, value in raw.items()
        if key.lower() in Settings.model_fields and not isinstance(value, dict)
    }


@st.cache_resource(show_spinner="Starting the engine…")
def get_services() -> AppServices:
    """Made once per process and shared by every session: never mutate what it returns."""
    settings = load_settings(**secrets_overrides())
    if not logging.getLogger().handlers:
        configure_logging(settings)
    telemetry.setup("app")
    runtime = Runtime(settings)  # upgrades the schema first
    bootstrap = accounts.bootstrap_admin(runtime.db, settings)
    if bootstrap is not None and bootstrap.generated_password:
        print(accounts.admin_banner(bootstrap), file=sys.stdout, flush=True)
    runtime.start_background()
    log.info("App - engine started on %s", runtime.db.dialect)
    return AppServices(runtime=runtime, throttle=LoginThrottle(), bootstrap=bootstrap)


def get_runtime() -> Runtime:
    return get_services().runtime
