"""Refusals of the store's operations, each with its HTTP status and error code (SPEC §4)."""

from __future__ import annotations


class LifecycleError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PaymentRequired(LifecycleError):
    status = 402
    code = "payment_required"

    def __init__(self, billing_status: str) -> None:
        super().__init__(f"Payment required: the account's billing status is {billing_status}.")
        self.billing_status = billing_status


class ConcurrentSessionLimit(LifecycleError):
    status = 429
    code = "concurrent_session_limit"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "The account has reached its plan's limit of concurrent sessions; "
            f"retry in {retry_after} s."
        )
        self.retry_after = retry_after


class InvalidRequest(LifecycleError):
    status = 422
    code = "invalid_request"


class SessionExists(LifecycleError):
    status = 409
    code = "session_exists"


class SessionNotFound(LifecycleError):
    status = 404
    code = "session_not_found"


class SessionTerminated(LifecycleError):
    status = 409
    code = "session_terminated"


class AccountNotFound(LifecycleError):
    """An account outside an account key's scope: 404, so account ids do not leak."""

    status = 404
    code = "account_not_found"


class BadRequest(LifecycleError):
    status = 400
    code = "bad_request"


class Unauthorized(LifecycleError):
    status = 401
    code = "unauthorized"


class Forbidden(LifecycleError):
    status = 403
    code = "forbidden"


class UnsupportedMediaType(LifecycleError):
    status = 415
    code = "unsupported_media_type"


class TooManyAuthFailures(LifecycleError):
    status = 429
    code = "too_many_auth_failures"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"Too many failed authentication attempts from this address; retry in {retry_after} s."
        )
        self.retry_after = retry_after


class RateLimited(LifecycleError):
    """A request over the account's plan's request or create rate (SPEC §6)."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
