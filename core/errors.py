"""Every exception the project raises, and the failure categories stored on failed runs."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any


class FailureCategory(StrEnum):
    """Why a step or workflow failed; stored as a plain string, grouped on the monitoring page."""

    INVALID_REQUEST = "invalid_request"
    MODERATION = "moderation"
    CONTENT_POLICY = "content_policy"
    PROVIDER_AUTH = "provider_auth"
    PROVIDER_REJECTED = "provider_rejected"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    TIMEOUT = "timeout"
    STORAGE = "storage"
    VERIFICATION = "verification"
    STALE = "stale"
    INTERNAL = "internal"


class ReelforgeError(Exception):
    """Base of every project exception."""


class RequestValidationError(ReelforgeError):
    """A user request was refused; `problems` maps each offending field to a readable message."""

    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{field}: {msg}" for field, msg in problems.items()))


class InsufficientCreditsError(ReelforgeError):
    def __init__(self, needed: int, balance: int) -> None:
        self.needed = needed
        self.balance = balance
        super().__init__(f"This run costs {needed} credits but the balance is {balance}.")


class BudgetExceededError(ReelforgeError):
    """A start would take a monthly budget (a user's, a project's or the team's) past its limit.
    `budget` names it for people ("the monthly budget of alice@example.com"); budgets follow
    calendar months in UTC, so `resets_at` is the first instant of the next month, UTC."""

    def __init__(
        self, *, budget: str, scope: str, limit: int, left: int, needed: int, resets_at: datetime
    ) -> None:
        self.budget, self.scope = budget, scope
        self.limit, self.left, self.needed, self.resets_at = limit, left, needed, resets_at
        super().__init__(
            f"This run costs {needed:,} credits but {budget} has {left:,} of {limit:,} credits "
            f"left this month. It resets on {resets_at:%d %B %Y} at 00:00 UTC "
            "(budgets follow calendar months in UTC)."
        )


class NotFoundError(ReelforgeError):
    """The thing does not exist, or the caller may not see it (deliberately indistinguishable)."""


class PermissionDeniedError(ReelforgeError):
    pass


class InvalidTransitionError(ReelforgeError):
    """A state write that the transition table forbids, or that lost a race to another writer."""


class ProviderError(ReelforgeError):
    """A provider call failed. Adapters translate SDK errors into the two subclasses below."""

    category = FailureCategory.PROVIDER_REJECTED

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        code: str | None = None,
        status_code: int | None = None,
    ) -> None:
        self.message = message
        self.provider = provider
        self.code = code
        self.status_code = status_code
        super().__init__(message)


class TransientProviderError(ProviderError):
    """Worth retrying: 429, 5xx, timeouts, dropped connections."""

    category = FailureCategory.PROVIDER_UNAVAILABLE

    def __init__(self, message: str, *, retry_after_s: float | None = None, **kwargs) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message, **kwargs)


class PermanentProviderError(ProviderError):
    """Retrying cannot help: bad request, content policy, bad credentials."""

    def __init__(self, message: str, *, category: FailureCategory | None = None, **kwargs) -> None:
        if category is not None:
            self.category = category
        super().__init__(message, **kwargs)


class StepFailedError(ReelforgeError):
    """A step decided on its own that the run cannot go on (flagged prompt, unreadable output)."""

    def __init__(self, message: str, category: FailureCategory) -> None:
        self.category = category
        super().__init__(message)


class StepStoppedError(ReelforgeError):
    """A step stopped from outside: the user cancelled, or its deadline passed. When a paid
    provider job was in flight, `provider_cancel_confirmed` is the provider's answer to our
    cancel (None: there was no job to stop)."""

    def __init__(self, message: str = "", *, provider_cancel_confirmed: bool | None = None) -> None:
        self.provider_cancel_confirmed = provider_cancel_confirmed
        super().__init__(message)


class StepTimeoutError(StepStoppedError):
    category = FailureCategory.TIMEOUT


class WorkflowCancelledError(StepStoppedError):
    """Raised inside a step when the user's cancel flag is seen; ends the run `cancelled`."""


class RunnerStoppingError(ReelforgeError):
    """The executor is shutting down; the run is released untouched for recovery to resume."""


class ProviderConfigError(ReelforgeError):
    """A real provider was forced on but its key or bucket is missing."""


class UnknownModelError(ValueError):
    """A model key that is not in the registry (a typo in IMAGE_MODEL / VIDEO_MODEL)."""


class ApiError(ReelforgeError):
    """An answer of the HTTP API other than success, seen by core.client: the status and the
    RFC 9457 problem details (`title`, `detail`, and `errors` naming each field)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}")


class ConfigurationError(ReelforgeError):
    """Settings that cannot work together (e.g. EXECUTOR=celery without a broker URL)."""
