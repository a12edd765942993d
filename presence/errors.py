"""Errors a client caused, each with the HTTP status it maps to.

The message is shown to the client as it is: it never carries a password or
a session ID.
"""


class ClientError(Exception):
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ClientError):
    status = 400


class Unauthorized(ClientError):
    status = 401


class Forbidden(ClientError):
    status = 403


class NotFound(ClientError):
    status = 404


class Conflict(ClientError):
    status = 409


class TooLarge(ClientError):
    status = 413


class TooMany(ClientError):
    """429.  ``retry_after``: seconds after which trying again can succeed
    (the JSON API sends it as a ``Retry-After`` header), None if unknown."""

    status = 429

    def __init__(self, message: str, retry_after: "float | None" = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailable(ClientError):
    """503: not the client's fault, but what the client should know: a part
    of the server it needs (the directory) is unreachable for now; trying
    again after ``retry_after`` seconds may work."""

    status = 503

    def __init__(self, message: str, retry_after: "float | None" = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
