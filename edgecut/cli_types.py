"""argparse types of the command line: each checks one flag's value and says, in the
flag's own error line, what was expected."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from edgecut.errors import UserInputError

__all__ = ["at_least", "listen_address", "port", "positive_seconds"]


def at_least(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= `least`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {least}, got {text!r}")
        return value
    return parse


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"must be a port in 0..65535 (0: any free port), "
                                         f"got {text!r}")
    return int(text)


def listen_address(text: str) -> str:
    from edgecut.cloud.server import split_address

    try:
        split_address(text)
    except UserInputError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("address ")) from exc
    return text
