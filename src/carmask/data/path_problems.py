"""What is wrong with a path where a file or folder is expected, in words a user can act on:
it does not exist, it is a folder or a file in the other's place, or it is a symbolic link (or a
chain of them) that leads nowhere, loops, or ends at the wrong kind of thing, saying where."""

from __future__ import annotations

import os
from pathlib import Path


def _follow(link: Path, limit: int = 40) -> tuple[list[str], str]:
    """The targets a chain of symbolic links passes through, as each link writes it, and how it
    ends: missing, loop, folder, file or other (a device, a socket; or too long a chain)."""
    hops, seen, current = [], {os.path.abspath(link)}, os.path.abspath(link)
    while len(hops) < limit:
        try:
            written = os.readlink(current)
        except OSError:
            return hops, "other"
        hops.append(written)
        current = os.path.normpath(os.path.join(os.path.dirname(current), written))
        if current in seen:
            return hops, "loop"
        seen.add(current)
        if not os.path.islink(current):
            break
    else:
        return hops, "other"
    if not os.path.lexists(current):
        return hops, "missing"
    return hops, "folder" if os.path.isdir(current) else "file" if os.path.isfile(current) else "other"


def _link_text(link: Path, hops: list[str], loop: bool = False) -> str:
    """'a symbolic link to T' (T made absolute where the link wrote it relative), and each
    further link on the way: 'a symbolic link to b.jpg (/data/b.jpg), a symbolic link to
    /data/c.jpg'; with `loop`, the last hop goes back to a link already passed."""
    start = os.path.abspath(link)
    parts, folder = [], os.path.dirname(start)
    for number, written in enumerate(hops, 1):
        target = os.path.normpath(os.path.join(folder, written))
        shown = written if os.path.isabs(written) else f"{written} ({target})"
        if loop and number == len(hops):
            shown = "to itself" if number == 1 and target == start else f"back to {shown}"
        else:
            shown = f"to {shown}"
        parts.append(f"a symbolic link {shown}")
        folder = os.path.dirname(target)
    return ", ".join(parts)


_ENDS = {"missing": ", which does not exist", "other": ", which leads to no file or folder",
         "loop": ": a loop of links that leads nowhere"}


def link_problem(link: Path, what: str, folder: bool = False) -> str:
    """Where a symbolic link, where a `what` is expected, points and what is wrong there: its
    target does not exist, the links loop, or it is a file where a `folder` is expected (a
    folder where a file is)."""
    hops, end = _follow(link)
    wrong = "file" if folder else "folder"
    ending = {wrong: f", which is a {wrong}, not a {what}", **_ENDS}.get(end, "")
    return _link_text(link, hops, end == "loop") + ending


def not_a_file(path: Path, what: str) -> str:
    """Why `path`, where a `what` (photo, mask, CSV file) is expected, is not one: what it is
    instead, and for a symbolic link where it points and what is wrong there."""
    if path.is_symlink():
        return link_problem(path, what)
    return f"a folder, not a {what}" if path.is_dir() else f"not a regular file, not a {what}"


def folder_problem(path: Path, what: str = "folder") -> str:
    """Why `path`, where a `what` (data folder, folder) is expected, is not one: it does not
    exist, it is a file, or it is a symbolic link leading to no folder (saying where)."""
    if path.is_symlink():
        return f"the {what} is {link_problem(path, what, folder=True)}"
    return f"{what} does not exist" if not path.exists() else f"a file, not a {what}"
