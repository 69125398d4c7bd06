"""How every `carmask` command reads its arguments, whatever the command.

- A mistake is one line, `error: carmask CMD: ... (see carmask CMD --help)`, exit 2, like every
  other refusal; typer would draw a boxed panel with the usage around it.
- An empty value is refused: `--out ""` would otherwise become the current folder.
- A number must be finite (`--lr nan` passes any range check) and fit in 32 bits: nothing
  carmask counts comes near, and a seed or a size beyond that fails deep in numpy or torch.
The ranges that depend on the option (`--epochs` at least 1) are declared on the option itself.
"""

from __future__ import annotations

import inspect
import math
import re
import sys
from typing import Any

from typer.core import TyperCommand, TyperGroup

from carmask.cli.common import fail

LARGEST_NUMBER = 2**32 - 1


def first_sentence(text: str) -> str:
    """The first sentence of a help text, its line breaks made spaces."""
    words = " ".join(text.split("\n\n")[0].split())
    end = re.search(r"\.(\s|$)", words)
    return words[:end.start() + 1] if end else words


def reflowed(text: str) -> str:
    """A docstring's prose paragraphs each on one line, for the help to wrap at the terminal's
    width (typer keeps the docstring's line breaks, which wrap raggedly in 80 columns); a
    paragraph of list items or indented lines stays as written."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(
        paragraph if any(line.startswith((" ", "-", "*", "\b")) for line in paragraph.splitlines())
        else " ".join(paragraph.split())
        for paragraph in paragraphs)


class CarmaskGroup(TyperGroup):
    """The `carmask` command: usage errors as one line (see the module's docstring)."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        from typer._click.exceptions import ClickException, NoArgsIsHelpError
        from typer.exceptions import Abort

        try:
            # the program is `carmask` however it was started (python -m, a test runner)
            code = super().main(args, "carmask", complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as error:  # the help is printed already
            code = error.exit_code
        except ClickException as error:
            code = usage_error(error).exit_code
        except Abort:
            code = fail("aborted").exit_code
        if standalone_mode:
            sys.exit(code or 0)
        return code


class CarmaskCommand(TyperCommand):
    """Every leaf command: empty values and non-finite or huge numbers are refused, naming the
    option, before the command's own code runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.help:
            self.help = reflowed(self.help)
        if self.help and not self.short_help:
            # `carmask --help` would list each command by its help's whole first paragraph,
            # keeping the docstring's line breaks: the first sentence, on one line, reads better
            self.short_help = first_sentence(self.help)

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        self._refuse_empty_values(ctx, args)
        rest = super().parse_args(ctx, args)
        for param in self.params:
            value = ctx.params.get(param.name)
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if problem := number_problem(item):
                    raise _bad(problem, ctx, param)
        return rest

    def _refuse_empty_values(self, ctx, args: list[str]) -> None:
        takes_value = {opt: param for param in self.params if not getattr(param, "is_flag", False)
                       for opt in getattr(param, "opts", []) if opt.startswith("-")}
        positional = [param for param in self.params if not param.opts[0].startswith("-")]
        previous = None
        for arg in args:
            if arg == "--":
                break
            option, _, inline = arg.partition("=")
            if arg.startswith("--") and "=" in arg and option in takes_value and not inline:
                self._refuse_empty(ctx, takes_value[option])
            elif arg == "" and previous in takes_value:
                self._refuse_empty(ctx, takes_value[previous])
            elif arg == "" and positional:
                raise _bad("an empty argument", ctx, positional[0])
            previous = arg if previous not in takes_value else None

    @staticmethod
    def _refuse_empty(ctx, param) -> None:
        if param.default != "":  # where '' is the default, it means "none" (--canvas '')
            raise _bad("an empty value", ctx, param)


def number_problem(value: object) -> str | None:
    """Why a parsed number is unusable whatever the option, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number"
    if abs(value) > LARGEST_NUMBER:
        return f"{value} is beyond any value carmask can use (at most {LARGEST_NUMBER})"
    return None


def usage_error(error) -> Any:
    """`error: carmask rle decode: No such option: -1 (see carmask rle decode --help)`."""
    message = " ".join(error.format_message().split())
    context = getattr(error, "ctx", None)
    if context is None:
        return fail(message, error.exit_code)
    return fail(f"{context.command_path}: {message} (see {context.command_path} --help)",
                error.exit_code)


def _bad(message: str, ctx, param):
    from typer._click.exceptions import BadParameter

    return BadParameter(message, ctx, param)
