"""Shared pieces of the command line: consoles, the progress bar handed to the library, errors,
size parsing and the option types several commands use.

Everything printed comes from the user's files at some point (paths, image names, CSV rows), so
the consoles never read markup in a string and show control characters as escapes: a photo named
`car[bold]_01.jpg` prints as itself and a name holding `\x1b[2J` cannot clear the terminal.
Colour comes only from `styled` parts, which are escaped the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download weights at run time

import typer
from rich.console import Console
from rich.progress import track as rich_track
from rich.text import Text


def printable(text: object) -> str:
    """`text` with every unprintable character (controls, line breaks, bidi overrides) written as
    its Python escape, e.g. ESC as `\\x1b`: what is shown is what the file holds."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class PlainConsole(Console):
    """A console that prints every string as plain, printable text: no markup, no :emoji: codes.

    rich turns every str it prints (arguments, table cells, titles) into Text here, so no caller
    can forget to escape.
    """

    def render_str(self, text: str, **options) -> Text:
        options.update(markup=False, emoji=False)
        return super().render_str(printable(text), **options)


console = PlainConsole(soft_wrap=True)  # never wrap paths and RLEs mid-line
err = PlainConsole(stderr=True, soft_wrap=True)


def styled(*parts: str | tuple[str, str]) -> Text:
    """One line of text from plain parts and (text, style) parts, each made printable."""
    line = Text()
    for part in parts:
        text, style = part if isinstance(part, tuple) else (part, "")
        line.append(printable(text), style=style)
    return line


def say(*parts: str | tuple[str, str], stderr: bool = False) -> None:
    """Print one line of `styled` parts on stdout (or stderr)."""
    (err if stderr else console).print(styled(*parts))


def warn(message: str, label: str = "warning:") -> None:
    """Print `label message` on stderr, the label in yellow."""
    err.print(styled((label, "yellow"), " ", message))


def by_model(counts) -> str:
    """"1 by the general model, 2 by the studio model" from a Counter of model roles."""
    return ", ".join(f"{count} by the {model} model" for model, count in sorted(counts.items()))


INCOMPLETE = 3  # exit code of a prediction that finished with failed or missing images

DataDir = Annotated[
    Path, typer.Option("--data", help="Kaggle-layout folder (train/, train_masks/, test/, metadata.csv).")
]
ModelOption = Annotated[
    Optional[str], typer.Option("--model", help="auto (the default: the studio model for photos that look like "
                                "Carvana's studio, the general model for any other), studio, general, "
                                "or a model file or run folder.")
]


def one_of(value: str, allowed: tuple[str, ...]) -> str:
    """A typer callback's check of a choice: `value`, or BadParameter listing the choices."""
    if value not in allowed:
        raise typer.BadParameter(f"{value!r} is not one of: {', '.join(allowed)}")
    return value


def _quality(value: str) -> str:
    from carmask.inference.refine import QUALITIES

    return one_of(value, QUALITIES)


QualityOption = Annotated[
    str, typer.Option(callback=_quality, metavar="[fast|best]",
                      help="fast: one pass. best: flip TTA on the studio model's larger file, "
                           "fine-tuned at 1024x1536, for fewer wrong pixels along the outline at "
                           "a fraction of the photos/s (the general model has no larger file, so "
                           "best is flip TTA there).")
]
TtaOption = Annotated[
    Optional[bool], typer.Option(help="Average with the horizontally flipped photo (default: with "
                                      "--quality best only).", show_default=False)
]


def progress(iterable, total=None, description=""):
    """A rich progress bar on stderr, handed to the library as its `track`."""
    return rich_track(
        iterable, total=total, description=description or "working", console=err, transient=True
    )


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` on stderr and return the Exit to raise."""
    err.print(styled(("error:", "bold red"), " ", message))
    return typer.Exit(code)


def require_data_folder(data: Path, option: str = "--data") -> None:
    """Exit 1 unless `data` is a folder, saying what it is instead (missing, a file, a broken or
    looping symbolic link and where it points)."""
    from carmask.data.path_problems import folder_problem

    if not data.is_dir():
        raise fail(f"{option} {data}: {folder_problem(data, 'data folder')}")


def require_torch(command: str) -> None:
    """Exit 1 with the one line a user needs when a command that trains or exports runs where
    only the inference install is (no torch)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise fail(f"`carmask {command}` needs torch: pip install 'carmask[train]'")


def parse_second_look(text: str, option: str = "--second-look") -> tuple[int, int] | None:
    """'544x736' → (544, 736), checked as a second look's size; 'none' → None (no second look)."""
    from carmask.inference.predictor import second_look_config

    if text.lower() == "none":
        return None
    size = parse_size(text, "HEIGHTxWIDTH", option)
    try:
        second_look_config(size)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint=option) from None
    return size


# A network's input side beyond this would need tens of GB; Carvana's photos are 1918 wide.
LARGEST_INPUT_SIDE = 4096


def parse_size(text: str, order: str, option: str = "--size",
               largest: int | None = LARGEST_INPUT_SIDE) -> tuple[int, int]:
    """'480x320' → (480, 320); `order` names the two numbers and `option` the option for the
    error message; each side at most `largest` (None: no limit here)."""
    try:
        first, second = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not {order}, e.g. 480x320", param_hint=option) from None
    if first <= 0 or second <= 0:
        raise typer.BadParameter(f"{text!r}: both sides must be positive", param_hint=option)
    if largest is not None and max(first, second) > largest:
        raise typer.BadParameter(f"{text!r}: each side must be at most {largest}", param_hint=option)
    return first, second
