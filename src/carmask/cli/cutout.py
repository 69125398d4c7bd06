"""`carmask cutout` and `carmask serve`: the commands for people who want the car, not the mask."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from carmask.cli.common import (INCOMPLETE, ModelOption, QualityOption, by_model, console, err, fail,
                                one_of, progress, warn)
from carmask.cli.predict import BackendOption, BatchOption


def _canvas(text: str) -> str:
    """--canvas: empty, or WIDTHxHEIGHT as a Canvas takes it."""
    from carmask.apps.canvas import Canvas

    if text:
        try:
            Canvas.parse(text)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--canvas") from None
    return text


def _align(value: str) -> str:
    from carmask.apps.canvas import ALIGNS

    return one_of(value, ALIGNS)


def _background(text: str) -> str:
    """--background: a colour is checked here; an image file when it is read (exit 1 if unusable)."""
    from carmask.apps.cutout import CutoutError, parse_background

    if not Path(text.strip()).is_file():
        try:
            parse_background(text)  # no file there: a colour, or the error says what it may be
        except CutoutError as error:
            raise typer.BadParameter(str(error), param_hint="--background") from None
    return text


def _misuse(message: str) -> Exception:
    """A usage mistake found once the options are read (two that conflict): exit 2, like one
    found while reading them."""
    from typer._click.exceptions import UsageError
    from typer._click.globals import get_current_context

    return UsageError(message, get_current_context(silent=True))


def cutout(
    inputs: Annotated[list[str], typer.Argument(
        help="Photos, folders of photos (searched to any depth), or globs; - reads one photo "
             "from standard input.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Folder for the cut-outs (the input folders' tree "
                                      "mirrored, plus manifest.jsonl), or for one photo a file: "
                                      "out.png, out.webp or out.jpg; - writes to standard output.")],
    background: Annotated[str, typer.Option(
        callback=_background,
        help="transparent, a colour (white, '#RRGGBB', any CSS name) or an image file, scaled to cover."
    )] = "transparent",
    feather: Annotated[float, typer.Option(
        min=0, max=64, help="Soft edge, in pixels inside the car's outline.")] = 0.0,
    shadow: Annotated[bool, typer.Option(
        help="A shadow under the car: a studio photo keeps its own floor shadow, any other photo "
             "gets a synthetic one made from the mask.")] = False,
    hard_edges: Annotated[bool, typer.Option(
        "--hard-edges", help="Alpha 0 or 255 (the mask) instead of soft, anti-aliased edges.")] = False,
    canvas: Annotated[str, typer.Option(
        callback=_canvas,
        help="Place each car on a WIDTHxHEIGHT canvas (e.g. 1600x1200), cropped to the car and scaled "
             "to fit within --margin: every car of a batch framed alike. A car enlarged over twice "
             "is listed to check (it would look soft).")] = "",
    margin: Annotated[float, typer.Option(
        min=0, max=0.49, help="With --canvas: the free border on each side, a fraction of the canvas.")] = 0.05,
    align: Annotated[str, typer.Option(
        callback=_align,
        help="With --canvas: center, or bottom (the car stands on the bottom margin).")] = "center",
    largest: Annotated[bool, typer.Option(
        help="Keep only the biggest car of a photo with several (default: every car).")] = False,
    model: ModelOption = None,
    quality: QualityOption = "fast",
    fmt: Annotated[str, typer.Option("--format", help="png or webp (keep alpha), or jpg (default: "
                                     "the --out file's, else png).")] = "",
    overwrite: Annotated[bool, typer.Option(help="Replace cut-outs that already exist.")] = False,
    resume: Annotated[bool, typer.Option(
        help="Skip the photos --out's manifest.jsonl records as written (after a kill).")] = False,
    backend: BackendOption = "auto",
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    batch: BatchOption = None,
) -> None:
    """Cut the car out of each photo: transparent with soft edges, or over a colour or an image,
    at the photo's full resolution or framed on a --canvas. Any photo size works; each photo
    gets the studio or the general model, as it needs.

    Exit code 0: all written (or already there); 3: some photos could not be read or written
    (one too big for --format: WebP holds 16383 pixels a side, JPEG 65500); 2: bad or
    conflicting options; 1: an input or --out that cannot be used.
    """
    from carmask.apps.batch import cutout_files, find_photos, format_of
    from carmask.apps.canvas import Canvas
    from carmask.apps.cutout import CutoutError, CutoutOptions, parse_background
    from carmask.inference.model_files import ModelFileError, load_model_config
    from carmask.inference.route import create_predictor, predictor_class
    from carmask.util.output_files import OutputError, check_output_dir

    def load_predictor():
        return create_predictor(model, backend=backend, device=device, batch=batch,
                                quality=quality, soft_edges=not hard_edges)

    def check_model() -> None:  # a bad --backend, --device or --model, before any folder is made
        predictor_class(backend, device)
        if model not in (None, "auto"):
            load_model_config(model)

    if Canvas.asked_without_canvas(canvas, margin, align):
        raise _misuse("--margin and --align place the car on a --canvas: give --canvas WxH")
    if hard_edges and feather:
        raise _misuse("--hard-edges and --feather: a feathered edge is soft; give one of them")
    if unwritable := _unwritable_suffix(out):
        raise _misuse(f"--out {out}: cut-outs are written as .png, .webp or .jpg, not {unwritable}")
    try:
        options = CutoutOptions(parse_background(background), feather, shadow, largest, hard_edges,
                                Canvas.parse(canvas, margin, align) if canvas else None)
        if inputs == ["-"] or str(out) == "-":
            check_model()
            return _cutout_stream(inputs, out, options, fmt, load_predictor)
        photos = find_photos(inputs)
        # one photo and --out car.png: that file; else a folder, the input tree mirrored in it
        names_a_file = format_of(out) is not None and not out.is_dir()
        single_file = len(photos) == 1 and names_a_file
        if len(photos) > 1 and names_a_file:
            raise _misuse(f"--out {out} names one file, for {len(photos)} photos: give a folder")
        if single_file and fmt and format_of(Path(f"x.{fmt}")) != format_of(out):
            raise _misuse(f"--format {fmt} and --out {out} disagree: give one of them")
        fmt = (format_of(out) if single_file else fmt) or "png"
        if not single_file:
            check_output_dir(out, "--out folder")  # before the model loads
        check_model()
        summary = cutout_files(  # the model loads only when there is a photo to cut out
            load_predictor, photos, out, options, fmt=fmt, overwrite=overwrite,
            single_file=single_file, resume=resume, track=progress)
    except (CutoutError, ModelFileError, OutputError, ValueError) as error:
        raise fail(str(error)) from None
    for path, warning in summary.warnings:
        warn(f"{path}: {warning}", label="check:")
    models = by_model(summary.models)
    if single_file and summary.written:
        console.print(f"wrote {out}" + (f" ({models})" if models else ""))
    elif single_file and summary.skipped:
        console.print(f"{out} is already there (--overwrite replaces it)")
    elif not single_file:
        console.print(f"{len(summary.written)} cut-outs written to {out}/"
                      + (f" ({models})" if models else "")
                      + (f", {len(summary.skipped)} already there (--overwrite replaces them)"
                         if summary.skipped else ""))
    if summary.failed:
        for _, problem in summary.failed:
            warn(str(problem), label="skipped")
        raise typer.Exit(INCOMPLETE)


def _unwritable_suffix(out: Path) -> str | None:
    """The extension of an --out that names a picture carmask does not write (x.gif, x.tiff),
    which would otherwise become a folder of that name."""
    from PIL import Image

    from carmask.apps.batch import format_of

    suffix = out.suffix.lower()
    if str(out) == "-" or out.is_dir() or format_of(out) is not None:
        return None
    return suffix if suffix in Image.registered_extensions() else None


def _cutout_stream(inputs: list[str], out: Path, options, fmt: str, load_predictor) -> None:
    """One photo from standard input or a file, its cut-out to standard output or a file."""
    import sys

    from carmask.apps.batch import cutout_bytes, format_of
    from carmask.apps.cutout import CutoutError, EncodeError
    from carmask.data.io import DataError
    from carmask.util.atomic import write_bytes

    if len(inputs) != 1:
        raise CutoutError("- (standard input or output) takes exactly one photo")
    source = inputs[0]
    data = sys.stdin.buffer.read() if source == "-" else _read_file(source)
    fmt = fmt or (format_of(out) if str(out) != "-" else None) or "png"
    try:
        encoded, prediction = cutout_bytes(load_predictor(), data, options, fmt,
                                           name="standard input" if source == "-" else source)
    except DataError as error:
        raise fail(str(error), code=INCOMPLETE) from None
    except EncodeError as error:  # this photo cannot be written so: as a batch records it
        raise fail(f"{'standard input' if source == '-' else source}: {error}", code=INCOMPLETE) from None
    for warning in prediction.warnings:
        warn(f"{source}: {warning}", label="check:")
    if str(out) == "-":
        sys.stdout.buffer.write(encoded)
        sys.stdout.buffer.flush()
    else:
        write_bytes(out, encoded)
        err.print(f"wrote {out} (1 by the {prediction.model} model)", highlight=False)


def _read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise fail(f"{path}: {error.strerror}") from None


def serve(
    host: Annotated[str, typer.Option(
        help="Address to bind; 0.0.0.0 exposes it to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    model: ModelOption = None,
    quality: QualityOption = "fast",
    backend: Annotated[str, typer.Option(help="onnx (faster on a CPU), torch, or auto (onnx).")] = "onnx",
    workers: Annotated[int, typer.Option(min=1, help="Photos processed at once.")] = 2,
    max_queue: Annotated[int, typer.Option(min=0, help="Requests waiting beyond those; more get 503.")] = 16,
    max_megabytes: Annotated[float, typer.Option(min=0.001, help="Largest upload per file.")] = 25.0,
    max_megapixels: Annotated[float, typer.Option(
        min=0.001, help="Largest image, checked before decoding.")] = 40.0,
) -> None:
    """Serve the web page (/), the HTTP API (/v1/mask, /v1/cutout, rembg's /api/remove,
    /v1/models, /healthz) and its OpenAPI docs (/docs), on the two shipped models (each photo
    gets the one it needs) or the --model given, at one --quality for every request."""
    from carmask.inference.model_files import ModelFileError, load_model_config
    from carmask.inference.predictor import resolve_backend
    from carmask.apps.serve import ServeConfig
    from carmask.apps.serve import serve as run_server

    # Every option is checked before the model loads, which takes a while.
    try:
        if check_listen(host, port):
            warn(f"--host {host}: the service will be reachable from the network, with no "
                 "authentication; anyone who can reach this machine can use it")
        resolve_backend(backend, "cpu")
        load_model_config(model)
    except (ModelFileError, ValueError) as error:
        raise fail(str(error)) from None
    config = ServeConfig(max_bytes=int(max_megabytes * 2**20), max_pixels=int(max_megapixels * 1e6),
                         workers=workers, max_queue=max_queue)
    err.print(f"carmask: web page at http://{host}:{port}/ , API docs at http://{host}:{port}/docs",
              highlight=False)
    try:
        run_server(host, port, model=model, backend=backend, config=config, quality=quality)
    except (ModelFileError, ValueError) as error:
        raise fail(str(error)) from None


def check_listen(host: str, port: int) -> bool:
    """ValueError unless `host:port` can be listened on now; True when `host` is reachable from
    other machines (anything but a loopback address)."""
    import ipaddress
    import socket

    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise ValueError(f"--host {host}: not an address of this machine ({error.strerror})") from None
    family, kind, proto, _, address = addresses[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as error:
            raise ValueError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return not all(ipaddress.ip_address(a[4][0].split("%")[0]).is_loopback for a in addresses)
