"""How the CLI reports a failure: one line, no traceback.

Bad input (``InputError``) exits with status 2. A fault of the environment, an ``OSError`` (a full
or read-only disk, a folder that is a file, a file that vanished) or a failed allocation (sizes the
machine cannot hold), exits with status 1 and says what failed, where, and what usually fixes it.
The atomic writes leave no partial file behind, so the same command can simply be run again once the
cause is gone.
"""

from __future__ import annotations

import errno
import functools
import re
from typing import Callable

import typer
from rich.console import Console
from rich.markup import escape

from sitcli.errors import InputError

console = Console(stderr=True)

# What usually fixes an OSError, by errno.
REMEDIES = {
    errno.ENOSPC: "free some space or write elsewhere (--out)",
    errno.EDQUOT: "free some space or write elsewhere (--out)",
    errno.EACCES: "write elsewhere (--out) or change the folder's permissions",
    errno.EPERM: "write elsewhere (--out) or change the folder's permissions",
    errno.EROFS: "the file system is read-only: write elsewhere (--out)",
    errno.ENOTDIR: "a part of that path is a file, not a folder: pick another path",
    errno.EISDIR: "that path is a folder: pass a file name",
    errno.ENOENT: "check the path",
}


def environment_message(err: OSError) -> str:
    """One line for an OSError: what failed, on which path, and the usual fix."""
    where = f" ({err.filename})" if err.filename is not None else ""
    what = err.strerror or str(err) or type(err).__name__
    fix = REMEDIES.get(err.errno)
    return f"{what}{where}" + (f"; {fix}" if fix else "")


def user_errors(fn: Callable) -> Callable:
    """Turn an InputError into a one-line message and exit status 2, an OSError into one and status 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as err:
            console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as err:
            console.print(f"[bold red]error:[/] {escape(environment_message(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except (MemoryError, RuntimeError) as err:
            message = memory_message(err)
            if message is None:
                raise
            console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def memory_message(err: BaseException) -> str | None:
    """One line for a failed allocation (Python's MemoryError, torch's CPU allocator or CUDA out of memory), or
    None for any other error: sizes the machine cannot hold are a fault of the environment, not a traceback."""
    text = str(err)
    asked = re.search(r"allocate ([\d.]+ ?[KMGTP]?i?B|\d+ bytes)", text, re.IGNORECASE)
    if not isinstance(err, MemoryError) and "can't allocate memory" not in text and "out of memory" not in text:
        return None
    what = f" (could not allocate {asked.group(1)})" if asked else ""
    return (f"out of memory{what}: lower the sizes asked for (--batch-size, --num-samples, --steps, --image-size, "
            "the model) or free memory")
