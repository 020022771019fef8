"""Argument types shared by the subcommands: a bad number is an argparse usage error (exit 2) naming the flag's
value and the allowed range, before any model is loaded."""

import argparse


def positive_int(text: str) -> int:
    """An int >= 1 (batch sizes, sample counts, repetitions)."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """An int >= 0 (warm-up iterations, ToMe r, epochs)."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
    return value
