"""Pieces every click CLI of the toolkit shares: error handling, the diagnostics channel
(``-q/-v``, `tal_infer.console`) and common options."""
from __future__ import annotations

import functools
import re
import sys
from typing import Any, Callable

import click

from . import console
from .devices import DEVICES
from .errors import TalError


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn known user errors into one line on stderr and exit code 2 (no traceback), and set
    up the diagnostics channel from ``-q``/``-v`` (`verbosity_options` gives the command
    those options; without them it logs at the normal level)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        quiet, verbose = kwargs.pop("quiet", False), kwargs.pop("verbose", False)
        console.configure(console.QUIET if quiet else console.VERBOSE if verbose
                          else console.NORMAL)
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


def verbosity_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``-q/--quiet`` (warnings and results only, no progress bars) and ``-v/--verbose``
    (debug lines too); `friendly_errors` applies them, so put it below this decorator."""
    fn = click.option("-v", "--verbose", is_flag=True,
                      help="Also print debug lines (what each step decided).")(fn)
    return click.option("-q", "--quiet", is_flag=True,
                        help="Only warnings, errors and results: no progress bars.")(fn)
