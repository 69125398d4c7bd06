"""Shared pieces of the command line: consoles, the progress bar handed to the library, errors,
size parsing and the option types several commands use."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download weights at run time

import typer
from rich.console import Console
from rich.progress import track as rich_track

console = Console(soft_wrap=True)  # never wrap paths and RLEs mid-line
err = Console(stderr=True, soft_wrap=True)
INCOMPLETE = 3  # exit code of a prediction that finished with failed or missing images

DataDir = Annotated[
    Path, typer.Option("--data", help="Kaggle-layout folder (train/, train_masks/, test/, metadata.csv).")
]
ModelOption = Annotated[
    Optional[str], typer.Option("--model", help="Model file or run folder (default: the shipped model).")
]


def progress(iterable, total=None, description=""):
    """A rich progress bar on stderr, handed to the library as its `track`."""
    return rich_track(
        iterable, total=total, description=description or "working", console=err, transient=True
    )


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def parse_size(text: str, order: str) -> tuple[int, int]:
    """'480x320' → (480, 320); `order` names the two numbers for the error message."""
    try:
        first, second = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not {order}, e.g. 480x320") from None
    if first <= 0 or second <= 0:
        raise typer.BadParameter(f"{text!r}: both sides must be positive")
    return first, second
