"""carmask: cut cars out of photos, Carvana's studio at Kaggle-winner level and cars anywhere else.

    >>> import carmask
    >>> carmask.remove("car.jpg", background="white").save("car-white.jpg")   # the cut-out
    >>> carmask.mask("car.jpg").save("car-mask.png")                         # the mask
    >>> session = carmask.load()                                              # models kept loaded

See `carmask.api` for every option and input kind. The package's layers, from the bottom up:
`util`, `data` and `kaggle` (photos, the Kaggle folder and formats), `inference` (onnxruntime,
no torch), `apps` (cut-outs, the service, evaluation, reports, the demo) and `cli`; `training`
(torch: the model registry, training, export, the torch backend) sits beside `apps`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.2.0"
__all__ = ["Cutout", "Session", "load", "mask", "remove", "__version__"]

if TYPE_CHECKING:
    from carmask.api import Cutout, Session, load, mask, remove


def __getattr__(name: str):
    # loaded on first use, so `import carmask` (and `carmask --help`) stays instant
    if name in ("Cutout", "Session", "load", "mask", "remove"):
        from carmask import api

        return getattr(api, name)
    raise AttributeError(f"module 'carmask' has no attribute {name!r}")
