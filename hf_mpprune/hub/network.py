"""Network failures of Hub calls as one clear error: `HubError` names the repo, the endpoint and what to do.

`huggingface_hub` raises `HfHubHTTPError` (an `OSError`), its HTTP client raises transport errors (connection
refused, connection dropped mid-upload, timeouts) that are not `OSError`s; the CLI and callers see one class.
"""

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from huggingface_hub import constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..core.errors import HubError, MPPruneError


logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def is_network_error(e: BaseException) -> bool:
    """True for errors of the Hub client or its HTTP stack (httpx / requests / urllib3) and OS-level I/O."""
    mod = type(e).__module__.split(".")[0]
    return isinstance(e, OSError | ConnectionError | TimeoutError) or mod.startswith(
        ("httpx", "huggingface_hub", "requests", "urllib3", "httpcore", "h11")
    )


def endpoint() -> str:
    return str(constants.ENDPOINT)


def is_not_found(e: BaseException) -> bool:
    """True only when the Hub said "not found" (HTTP 404: no such repo, revision or file). A gated repo, a 401, a
    5xx, a dropped connection or a file missing from an offline cache are failures, not an empty repo."""
    if isinstance(e, GatedRepoError | LocalEntryNotFoundError):
        return False
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status is not None:
        return status == 404
    return isinstance(e, RepositoryNotFoundError | RevisionNotFoundError | EntryNotFoundError)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""


def _describe(e: BaseException) -> str:
    """`Type: first line`, plus the underlying HTTP error a wrapper hides (e.g. LocalEntryNotFoundError ← 403)."""
    out = f"{type(e).__name__}: {_first_line(e)}"
    cause = e.__cause__
    return out + (f" (caused by {type(cause).__name__}: {_first_line(cause)})" if cause is not None else "")


def read_or_none(repo_id: str, what: str, fn: Callable[[], Any]) -> Any:
    """`fn()`, or None when the Hub answers "not found" (`is_not_found`); any other failure is a `HubError` naming
    the repo, `what` was being done and the endpoint, so nothing is decided on an answer that never came."""
    try:
        return fn()
    except MPPruneError:
        raise
    except Exception as e:
        if is_not_found(e):
            logger.info("%s %s: not found (%s)", what, repo_id, type(e).__name__)
            return None
        raise HubError(
            f"{what} {repo_id!r} at {endpoint()} failed: {_describe(e)}. Nothing was uploaded "
            "(a push decides what to delete and how to merge the card from this answer); check the network, the "
            "token's access to the repo and HF_ENDPOINT, then push again"
        ) from e


def hub_errors(fn: F) -> F:
    """Decorate `fn(pruner, repo_id, ...)`: network / Hub failures become `HubError`; our own errors pass."""

    @functools.wraps(fn)
    def wrapper(pruner: Any, repo_id: Any = None, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(pruner, repo_id, *args, **kwargs)
        except MPPruneError:
            raise
        except Exception as e:
            if not is_network_error(e):
                raise
            raise HubError(
                f"push to {repo_id!r} at {endpoint()} failed: {type(e).__name__}: {_first_line(e)}. A Hub commit is "
                "all-or-nothing, so no partial commit was made, and nothing local was changed; check the network, "
                "HF_ENDPOINT and the token, then push again"
            ) from e

    return wrapper  # type: ignore[return-value]
