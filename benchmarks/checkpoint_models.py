"""Turn training checkpoints (.ckpt) into model files with their run's config, so `carmask
evaluate` can score each and `carmask average` can make a soup of them (issue 24: the studio
run's last checkpoints down its cosine).

    python benchmarks/checkpoint_models.py runs/campaign/studio-all150-640/soup/*.ckpt \\
        --like runs/campaign/studio-all150-640/model.safetensors --out runs/campaign/soup-members
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from carmask.training.models.io import load_model, save_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--like", type=Path, required=True,
                        help="a model file of the run: its architecture and config are kept")
    parser.add_argument("--out", type=Path, required=True, help="folder for the model files")
    args = parser.parse_args()
    model, config = load_model(args.like)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.checkpoints:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()
                 if k.startswith("model.")}
        model.load_state_dict(state, strict=True)
        step = checkpoint["global_step"]
        record = dict(config.get("training") or {}, checkpoint=path.name, step=step)
        out = save_model(model, args.out / f"step-{step:05d}.safetensors", {**config, "training": record},
                         half=True)
        print(out)


if __name__ == "__main__":
    main()
