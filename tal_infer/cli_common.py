"""Pieces every click CLI of the toolkit shares: error handling and common options."""
from __future__ import annotations

import functools
import re
import sys
from typing import Any, Callable

import click

from .backends import DEVICES
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


class SizeType(click.ParamType):
    """An ``AxB`` size option (``HxW`` image sizes, ``WIDTHxHEIGHT`` frame sizes) -> (A, B)."""

    def __init__(self, name: str = "HxW", example: str = "128x64"):
        self.name, self.example = name, example

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(value))
        if m is None or int(m.group(1)) == 0 or int(m.group(2)) == 0:
            self.fail(f"{value!r} is not {self.name}, e.g. {self.example}", param, ctx)
        return int(m.group(1)), int(m.group(2))


device_option = click.option(
    "--device", default="auto", show_default=True,
    type=click.Choice(DEVICES),
    help="Where to run: auto picks CUDA when available.")
