"""How the docker driver reads the engine's errors.

The Docker SDK raises its own exception types (and ``requests``' for transport
failures); these helpers answer the questions the driver, the image puller and
the log follower ask of any of them: the HTTP status, "is the object gone",
"did the engine refuse" (retrying will not help) and the short explanation users
should read in task events. Apart so that every module of the package shares
one reading; the SDK is imported lazily, as everywhere in the driver.
"""

from __future__ import annotations


def http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return int(code) if code is not None else None


def is_not_found(exc: BaseException) -> bool:
    try:
        import docker.errors
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, docker.errors.NotFound) or http_status(exc) == 404


def is_api_error(exc: BaseException) -> bool:
    """The engine answered and refused (bad request, port taken...): retrying the
    same start will not help. Connection errors and timeouts are not API errors."""
    try:
        import docker.errors
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, docker.errors.APIError)


def is_removal_in_progress(exc: BaseException) -> bool:
    return http_status(exc) == 409 and "already in progress" in str(exc)


def short_error(exc: BaseException) -> str:
    """The engine's own explanation when there is one: what users should read."""
    explanation = getattr(exc, "explanation", None)
    if explanation:
        return str(explanation)
    text = str(exc) or exc.__class__.__name__
    return text if len(text) <= 300 else text[:297] + "..."
