"""Pieces every click CLI of the toolkit shares: error handling and common options."""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import click

from .errors import TalError


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn known user errors into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TalError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


device_option = click.option(
    "--device", default="auto", show_default=True,
    type=click.Choice(["auto", "cpu", "cuda"]),
    help="Where to run: auto picks CUDA when available.")
