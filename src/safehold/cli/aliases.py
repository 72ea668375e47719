"""Old spellings of renamed flags: hidden from ``--help``, still working, with a one-line warning.

A flag is renamed when its name means something else elsewhere (``--all`` is the whole system,
``--latest`` the newest backup of each target: docs/reference/conventions.md); scripts and
crontabs written for the old name must keep working, so the old spelling stays as a hidden
option of its own that sets the new one's parameter. (Declaring both spellings on one parameter
would not tell which was typed, and the warning is for the old one only.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def deprecated_flag(old: str, dest: str, new: str) -> Callable[[F], F]:
    """``old`` as a hidden flag setting ``dest``, as ``new`` does, and saying so on stderr."""

    def warn(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if not value:
            return
        ctx.params[dest] = True  # whichever of the two click processes first, True stays
        if not ctx.resilient_parsing:  # shell completion parses too: no warning there
            click.echo(f"warning: {old} is deprecated, use {new} (same meaning)", err=True)

    name = "deprecated_" + old.lstrip("-").replace("-", "_")
    return click.option(old, name, is_flag=True, hidden=True, expose_value=False, callback=warn)
