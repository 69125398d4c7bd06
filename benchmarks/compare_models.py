"""Train every registry model on the same car split for a fixed small budget and compare them.

Writes a markdown table (model, params, train size, epochs, time per epoch, val Dice at full
resolution, CPU inference time per image) to bench-output/compare_models.md and prints JSON lines.
The budget is the same for all: `--cars` cars (car-grouped `--folds`, fold 0 held out) for
`--epochs` epochs; flexible-size models train at `--size`, the seed models at their fixed size.

    python benchmarks/compare_models.py --cars 20 --epochs 3 --size 160x240
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import CARVANA, OUTPUT, machine, report

from carmask.training.models import create_bare_model, list_models
from carmask.training.train import TrainConfig, train


def inference_ms(name: str, size: tuple[int, int], channels: int, repeat: int = 3) -> float:
    model = create_bare_model(name).eval()
    x = torch.randn(1, channels, *size)
    with torch.no_grad():
        model(x)
        start = time.perf_counter()
        for _ in range(repeat):
            model(x)
    return (time.perf_counter() - start) / repeat * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=CARVANA)
    parser.add_argument("--cars", type=int, default=20)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", default="160x240", help="HxW for models of any size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--models", nargs="*", help="default: every registered model")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    rows = []
    for info in list_models():
        if (args.models and info.name not in args.models) or info.role != "segmenter":
            continue
        train_size = info.default_size if info.fixed_size else size
        out = OUTPUT / "compare" / info.name
        config = TrainConfig(data=args.data, model=info.name, out=out, size=train_size,
                             epochs=args.epochs, batch=args.batch, folds=args.folds, max_cars=args.cars,
                             patience=args.epochs, workers=1, seed=0)
        summary = train(config, progress_bar=False)
        params = sum(p.numel() for p in create_bare_model(info.name).parameters())
        row = report("compare_models", model=info.name, params_m=round(params / 1e6, 2),
                     train_size=f"{train_size[0]}x{train_size[1]}", epochs=summary["epochs_run"],
                     seconds_per_epoch=round(summary["seconds"] / max(1, summary["epochs_run"])),
                     val_dice_full=summary["best_val_dice_full"],
                     cpu_inference_ms=round(inference_ms(info.name, train_size, info.channels)),
                     epoch_dice=_dice_by_epoch(out))
        rows.append(row)
    table = ["| model | params | train size | epochs | s/epoch | val Dice (1280x1918) | CPU ms/image | val Dice by epoch |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['model']} | {r['params_m']}M | {r['train_size']} | {r['epochs']} | "
                     f"{r['seconds_per_epoch']} | {r['val_dice_full']} | {r['cpu_inference_ms']} | "
                     f"{', '.join(f'{d:.3f}' for d in r['epoch_dice'])} |")
    OUTPUT.mkdir(exist_ok=True)
    text = f"Machine: {machine()}. Budget: {args.cars} cars, {args.epochs} epochs.\n\n" + "\n".join(table)
    (OUTPUT / "compare_models.md").write_text(text + "\n")
    print(text)


def _dice_by_epoch(out: Path) -> list[float]:
    import pandas as pd
    frame = pd.read_csv(out / "metrics.csv")
    return frame.dropna(subset=["val_dice_full"]).groupby("epoch")["val_dice_full"].max().tolist()


if __name__ == "__main__":
    main()
