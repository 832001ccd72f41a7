"""The errors a user's input causes, told apart from bugs.

    UserError        bad input: a value, a file, a setting. `gencycle VERB` prints its message on one
                     line (`gencycle VERB: error: ...`) and exits with status 2; anything else keeps its
                     traceback, because it is a bug.
    OptionError      a bad value of one named option (a config field, and so a command-line flag):
                     `OptionError("batch_size", "must be >= 1", -2)` reads "batch_size must be >= 1,
                     got -2"; the CLI names the flag: "argument --batch-size: must be >= 1, got -2".

Both are ValueErrors, so code that catches ValueError (and tests that expect it) keep working.
`check_output` refuses an output path that cannot be written before any work starts.
"""

from __future__ import annotations

from pathlib import Path

_UNSET = object()


class UserError(ValueError):
    """Bad input from the user; its message names the problem (the option, the file, the value)."""


class OptionError(UserError):
    """A bad value of the option `option` (a config field name such as "batch_size")."""

    def __init__(self, option: str, problem: str, value=_UNSET, *, message: str | None = None):
        self.option, self.problem = option, problem
        got = "" if value is _UNSET else f", got {value!r}"
        super().__init__(message or f"{option} {problem}{got}")


def check_output(path: str | Path, option: str = "out", kind: str = "folder") -> Path:
    """`path` as a Path, if it can be written as a `kind` ("folder" or "file"); else an OptionError.

    Checked before any work starts, so a run never ends by failing to write what it computed:
    a folder must not be an existing file, a file not an existing folder, and no parent may be a file.
    """
    path = Path(path).expanduser()
    if kind == "folder" and path.exists() and not path.is_dir():
        raise OptionError(option, f"names an existing file, {str(path)!r}; give a folder")
    if kind == "file" and path.is_dir():
        raise OptionError(option, f"names an existing folder, {str(path)!r}; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OptionError(option, f"{str(path)!r} cannot be created: {str(parent)!r} is a file")
            break
    return path


def check_input(path: str | Path, option: str, kind: str = "file or folder") -> Path:
    """`path` as a Path if it exists (a file, a folder, or either as `kind` says); else an OptionError."""
    path = Path(path).expanduser()
    if not path.exists():
        raise OptionError(option, f"names no file or folder: {str(path)!r} does not exist")
    if kind == "file" and path.is_dir():
        raise OptionError(option, f"names a folder, {str(path)!r}; give a file")
    if kind == "folder" and not path.is_dir():
        raise OptionError(option, f"names a file, {str(path)!r}; give a folder")
    return path
