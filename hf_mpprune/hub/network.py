"""Network failures of Hub calls as one clear error: `HubError` names the repo, the endpoint and what to do.

`huggingface_hub` raises `HfHubHTTPError` (an `OSError`), its HTTP client raises transport errors (connection
refused, connection dropped mid-upload, timeouts) that are not `OSError`s; the CLI and callers see one class.
"""

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from huggingface_hub import constants

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
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise HubError(
                f"push to {repo_id!r} at {endpoint()} failed: {type(e).__name__}: {first[:300]}. A Hub commit is "
                "all-or-nothing, so no partial commit was made, and nothing local was changed; check the network, "
                "HF_ENDPOINT and the token, then push again"
            ) from e

    return wrapper  # type: ignore[return-value]
