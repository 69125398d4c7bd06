"""Carry the real Carvana data to a GPU machine whose transfers are capped (64 MiB a call here).

`pack` shrinks ../shared/data/carvana: the training photos at half size (959x640) as WebP, the
masks as one xz-compressed file of full-resolution Kaggle RLE rows (the masks lose nothing),
metadata.csv, and the first few test photos untouched for throughput runs. The 160 cars take
about 58 MiB at quality 70, more than one call carries beside the repository, so `--parts N`
deals the photos into N folders (part0 also holds the masks, metadata and test photos), each
carried by its own call into a folder the machine keeps while it stays warm.
`unpack` rebuilds the Kaggle layout from it: photos scaled back to 1918x1280 JPEGs (a model
trained at 640x960 sees the same pixels it would have seen; nothing above half size is carried),
masks as the Carvana GIFs. Validation Dice on the GPU is therefore on re-encoded photos; the
reported figures come from `carmask evaluate` on the original photos afterwards.

    python benchmarks/gpu_data.py pack .gpu/packed --parts 2 --quality 70 --test-photos 8
    python benchmarks/gpu_data.py unpack .gpu/packed/part0 .gpu/carvana   # one call per part
"""

from __future__ import annotations

import argparse
import lzma
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from carmask.kaggle import rle
from carmask.data.io import read_mask

FULL = (1918, 1280)  # (width, height)
HALF = (959, 640)


def _pack_photo(job: tuple[Path, Path, int]) -> int:
    source, target, quality = job
    with Image.open(source) as photo:
        photo.convert("RGB").resize(HALF, Image.BOX).save(target, "WEBP", quality=quality, method=4)
    return target.stat().st_size


def _mask_row(path: Path) -> str:
    return f"{path.name[: -len('_mask.gif')]},{rle.encode(read_mask(path))}\n"


def pack(source: Path, out: Path, quality: int, test_photos: int, workers: int, parts: int = 1) -> None:
    folders = [out / f"part{i}" for i in range(parts)] if parts > 1 else [out]
    for folder in folders:
        (folder / "train").mkdir(parents=True, exist_ok=True)
    photos = sorted((source / "train").glob("*.jpg"))
    masks = sorted((source / "train_masks").glob("*_mask.gif"))
    with ProcessPoolExecutor(workers) as pool:
        sizes = list(pool.map(_pack_photo, [(p, folders[i % parts] / "train" / f"{p.stem}.webp", quality)
                                            for i, p in enumerate(photos)], chunksize=16))
        rows = list(pool.map(_mask_row, masks, chunksize=16))
    out = folders[0]  # masks, metadata and test photos travel with the first part
    with lzma.open(out / "train_masks.csv.xz", "wt") as file:
        file.write("img,rle_mask\n")
        file.writelines(rows)
    shutil.copy(source / "metadata.csv", out / "metadata.csv")
    (out / "test").mkdir(exist_ok=True)
    for photo in sorted((source / "test").glob("*.jpg"))[:test_photos]:
        shutil.copy(photo, out / "test" / photo.name)
    for folder in folders:
        total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        print(f"{folder}: {total / 2**20:.1f} MiB")
    print(f"packed {len(sizes)} photos ({sum(sizes) / 2**20:.1f} MiB), {len(rows)} masks, "
          f"{test_photos} test photos")


def _unpack_photo(job: tuple[Path, Path]) -> None:
    source, target = job
    with Image.open(source) as photo:
        photo.convert("RGB").resize(FULL, Image.BICUBIC).save(target, "JPEG", quality=95)


def _unpack_mask(job: tuple[str, str, Path]) -> None:
    image_id, encoding, folder = job
    mask = Image.fromarray(rle.decode(encoding, (FULL[1], FULL[0])).astype(np.uint8), "P")
    mask.putpalette([0, 0, 0, 255, 255, 255])  # as Carvana's GIFs: indexes 0/1
    mask.save(folder / f"{image_id}_mask.gif")


def unpack(packed: Path, dest: Path, workers: int) -> None:
    """Rebuild one packed folder (or part) into `dest`, adding to what earlier parts left."""
    for folder in ("train", "train_masks", "test"):
        (dest / folder).mkdir(parents=True, exist_ok=True)
    rows = []
    if (packed / "train_masks.csv.xz").exists():
        with lzma.open(packed / "train_masks.csv.xz", "rt") as file:
            rows = [line.rstrip("\n").split(",", 1) for line in file][1:]
    photos = sorted((packed / "train").glob("*.webp"))
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_unpack_photo, [(p, dest / "train" / f"{p.stem}.jpg") for p in photos], chunksize=8))
        list(pool.map(_unpack_mask, [(i, e, dest / "train_masks") for i, e in rows], chunksize=8))
    if (packed / "metadata.csv").exists():
        shutil.copy(packed / "metadata.csv", dest / "metadata.csv")
    for photo in (packed / "test").glob("*.jpg"):
        shutil.copy(photo, dest / "test" / photo.name)
    print(f"unpacked {len(photos)} photos and {len(rows)} masks into {dest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack")
    packing.add_argument("out", type=Path)
    packing.add_argument("--source", type=Path,
                         default=Path(__file__).resolve().parents[2] / "shared" / "data" / "carvana")
    packing.add_argument("--quality", type=int, default=80, help="WebP quality of the photos")
    packing.add_argument("--test-photos", type=int, default=16)
    packing.add_argument("--parts", type=int, default=1, help="deal the photos into this many folders")
    unpacking = commands.add_parser("unpack")
    unpacking.add_argument("packed", type=Path)
    unpacking.add_argument("dest", type=Path)
    for sub in (packing, unpacking):
        sub.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.source, args.out, args.quality, args.test_photos, args.workers, args.parts)
    else:
        unpack(args.packed, args.dest, args.workers)


if __name__ == "__main__":
    main()
