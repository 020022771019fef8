"""Exception and warning hierarchy. Every error also subclasses the builtin a caller would expect."""

import os
import warnings


class MPPruneError(Exception):
    """Base class of every error raised by hf_mpprune."""


class ConfigError(MPPruneError, ValueError):
    """A configuration value is invalid (bad value, unknown key, unknown method, ...)."""


class NoPrunableLayersError(MPPruneError, ValueError):
    """Layer discovery found nothing to prune (nothing matched, or everything was ignored)."""


class PatternError(MPPruneError, ValueError):
    """A k:n pattern is illegal for a shape, or masks break a cumulative/legality contract."""


class SpectralError(MPPruneError, ValueError):
    """A matrix cannot be given an MP fit (not 2-D, non-finite, too small, all zero)."""


class UnsupportedHardwareError(MPPruneError, RuntimeError):
    """The requested kernel path (e.g. 2:4 semi-structured) is not available on this device."""


class LedgerMismatchError(MPPruneError, ValueError):
    """Saved masks, hashes or ledger do not agree with the weights that were loaded."""


class CheckpointError(MPPruneError, OSError):
    """A model folder or checkpoint file is missing, damaged, of the wrong shape or unsafe to load (pickles,
    remote code). The message names the file and how to recover."""


class DataError(MPPruneError, ValueError):
    """Numbers that cannot be pruned from: non-finite (NaN/Inf) weights or calibration statistics, named by layer,
    or a calibration input tensor that is non-finite, named by key."""


class HubError(MPPruneError, OSError):
    """Talking to the Hub failed (unreachable endpoint, dropped connection, refused request); nothing was committed."""


class InvalidPatternError(PatternError, ConfigError):
    """A k:n pattern value that cannot be parsed or is illegal (both a `PatternError` and a `ConfigError`)."""


class MPPruneWarning(UserWarning):
    """Suspicious but legal settings (an ignore pattern that matched nothing, ...)."""


class ExperimentalMethodWarning(UserWarning):
    """A reconstructed ([R]) method is in use; silence with HF_MPPRUNE_EXPERIMENTAL_SILENCE=1."""


_warned_experimental: set[str] = set()


def warn_experimental(name: str) -> None:
    """Warn once per process that method `name` is a reconstruction of unpublished code."""
    if name in _warned_experimental or os.environ.get("HF_MPPRUNE_EXPERIMENTAL_SILENCE") == "1":
        return
    _warned_experimental.add(name)
    warnings.warn(
        f"method {name!r} is experimental: it reconstructs code the paper did not publish "
        "(docs/algorithms.md [R]). Set HF_MPPRUNE_EXPERIMENTAL_SILENCE=1 to silence.",
        ExperimentalMethodWarning,
        stacklevel=3,
    )
