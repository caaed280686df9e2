"""The one exception hierarchy of esj-provision, and the exit statuses it maps to.

Every error the core raises derives from :class:`EsjProvisionError`. The CLI maps an error to
an exit status through :func:`exit_status_for` and nowhere else. Messages are written for the
admin: what went wrong, and (in ``hint``) what to do next. They never contain secrets or tokens.

The tree (exit status in brackets)::

    EsjProvisionError [1]
    ├── UsageError [2]              bad flags, arguments or values
    │   └── ManifestError [2]       a manifest with bad rows (each listed)
    ├── ConfigError [1]             settings, .env, profile, CA bundle missing or unparsable
    ├── AuthError [1]               sign-in failed (credentials, tenant, cloud)
    ├── AccessDeniedError [1]       a permission or role is missing
    ├── AppLookupError [1]          an ESJ app's enterprise application unreadable in Graph
    ├── NotFoundError [1]           a user, mailbox or object does not exist
    ├── MailboxNotEnabledForRestError [1]
    ├── ServiceError [1]            Microsoft answered with an error
    │   ├── ThrottledError [1]      still throttled after the retries
    │   └── TransientError [1]      5xx or connection failures after the retries
    │       └── AmbiguousWriteError [1]  a write whose answer was lost
    ├── PreflightError [1]          read-only checks refused the request
    └── JournalError [1]            the change journal cannot be written
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    DRIFT = 3
    PARTIAL = 4
    PENDING = 5  # probe: the only problem is a grant Exchange has not applied yet
    INTERRUPTED = 130


class EsjProvisionError(Exception):
    """Base class. ``hint`` says what to do; ``request_id`` is Microsoft's, to quote to support."""

    exit_status: ExitStatus = ExitStatus.ERROR

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        request_id: str | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.request_id = request_id
        self.status_code = status_code

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"error": type(self).__name__, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        if self.request_id:
            out["request_id"] = self.request_id
        if self.status_code:
            out["status_code"] = self.status_code
        return out


class UsageError(EsjProvisionError):
    """The command line itself is wrong: a bad address, an unknown protocol, a missing value."""

    exit_status = ExitStatus.USAGE


class ConfigError(EsjProvisionError):
    """Configuration (environment, .env, profile file, CA bundle) is missing or does not parse."""


class ManifestError(UsageError):
    """A bulk/audit manifest is invalid. ``problems`` holds every problem with its line number."""

    def __init__(self, message: str, problems: list[tuple[int, str]], **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.problems = problems

    def to_dict(self) -> dict[str, object]:
        out = super().to_dict()
        out["problems"] = [{"line": line, "problem": text} for line, text in self.problems]
        return out


class AuthError(EsjProvisionError):
    """Entra ID refused to issue a token (wrong secret, unknown tenant, bad scope, bad certificate)."""


class AccessDeniedError(EsjProvisionError):
    """The service answered 401/403: the app lacks a permission or an admin role."""


class AppLookupError(EsjProvisionError):
    """The app's enterprise application could not be read from Graph (typically the provisioning
    app lacks Application.Read.All). Kept apart from Exchange's errors: a Graph permission missing
    refuses one request, while Exchange refusing the app stops the whole run."""


class NotFoundError(EsjProvisionError):
    """The mailbox, user or object does not exist (in Graph or in Exchange)."""


class MailboxNotEnabledForRestError(EsjProvisionError):
    """Graph's MailboxNotEnabledForRESTAPI: inactive, soft-deleted, unlicensed or on-premises."""


class ServiceError(EsjProvisionError):
    """Microsoft answered with an error that is not one of the specific kinds above."""


class ThrottledError(ServiceError):
    """Still throttled (429) after the bounded retries and the capped total wait."""


class TransientError(ServiceError):
    """5xx, timeout or connection reset that outlived the retries."""


class AmbiguousWriteError(TransientError):
    """A write failed in a way that may or may not have applied it (timeout, 5xx).

    The caller must read the state again before deciding whether to repeat the write.
    """


class PreflightError(EsjProvisionError):
    """Onboarding refused before any write. ``problems`` lists every reason found."""

    def __init__(self, message: str, problems: list[str], **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.problems = problems

    def to_dict(self) -> dict[str, object]:
        out = super().to_dict()
        out["problems"] = list(self.problems)
        return out


class JournalError(EsjProvisionError):
    """The change journal cannot be written or read; no write is made without a record."""


def exit_status_for(exc: BaseException) -> ExitStatus:
    """The single mapping from an exception to the process exit status."""
    if isinstance(exc, EsjProvisionError):
        return exc.exit_status
    if isinstance(exc, KeyboardInterrupt):
        return ExitStatus.INTERRUPTED
    return ExitStatus.ERROR
