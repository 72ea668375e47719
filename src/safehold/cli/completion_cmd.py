"""``safehold completion SHELL``: the shell's tab-completion script, as click writes it.

The script holds no command names: on every TAB it runs ``safehold`` again with
``_SAFEHOLD_COMPLETE=<shell>_complete`` and click answers from the live command tree (the lazy
group lists every name and imports only the commands whose names match what was typed), so an
installed script never goes stale when safehold is upgraded. That is also why the wheel ships no
completion files: the command prints the one for the safehold it belongs to.
"""

from __future__ import annotations

import click
from click.shell_completion import ShellComplete, ZshComplete, get_completion_class

SHELLS = ("bash", "zsh", "fish")
# click derives the variable from the program name; safehold's entry point is "safehold".
COMPLETE_VAR = "_SAFEHOLD_COMPLETE"


class _ZshComplete(ZshComplete):
    """click's zsh script, registering its function on the first TAB too.

    Autoloaded from fpath, the file's whole text is the ``_safehold`` function: the first TAB
    completes, but the second runs the text again outside the autoload, which only registers
    the real function (compdef) and offers nothing. Registering it on the first TAB sends
    every later one straight to it (tests/test_completion.py types the second TAB).
    """

    source_template = ZshComplete.source_template.replace(
        '    %(complete_func)s "$@"\n',
        '    compdef %(complete_func)s %(prog_name)s\n    %(complete_func)s "$@"\n',
    )


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS), metavar="SHELL")
def completion_cmd(shell: str) -> None:
    """Print the tab-completion script for SHELL (bash, zsh or fish).

    It completes command names, options and their fixed choices. Install it once per user
    (open a new shell afterwards):

    \b
    bash (needs the bash-completion package, which loads it on first use):
      mkdir -p ~/.local/share/bash-completion/completions
      safehold completion bash > ~/.local/share/bash-completion/completions/safehold
    zsh (a directory in fpath, before compinit runs in ~/.zshrc):
      mkdir -p ~/.zfunc && safehold completion zsh > ~/.zfunc/_safehold
      # ~/.zshrc:  fpath=(~/.zfunc $fpath); autoload -Uz compinit && compinit
    fish:
      safehold completion fish > ~/.config/fish/completions/safehold.fish

    \b
    For the current shell only:
      eval "$(safehold completion bash)"      # bash or zsh (zsh after compinit)
      safehold completion fish | source       # fish
    """
    root = click.get_current_context().find_root()
    completion_class: type[ShellComplete] | None = (
        _ZshComplete if shell == "zsh" else get_completion_class(shell)
    )
    assert completion_class is not None  # click ships all three SHELLS
    script = completion_class(root.command, {}, root.info_name or "safehold", COMPLETE_VAR)
    click.echo(script.source())
