"""The model behind `carmask serve`'s endpoints: the service's limits, uploads decoded and checked,
and a bounded pool of workers with a small prediction cache."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from carmask.apps.service_options import ApiError
from carmask.data.io import Photo, PhotoError, read_photo
from carmask.inference.streaming import Prediction


@dataclass(frozen=True)
class ServeConfig:
    max_bytes: int = 25 * 2**20  # per uploaded file
    max_pixels: int = 40_000_000  # per decoded image (a 1918x1280 photo is 2.5 MP)
    workers: int = 2  # photos processed at once
    max_queue: int = 16  # requests waiting beyond those; more get 503
    cache: int = 16  # recent masks kept by upload hash, so re-composing a photo skips the model


_PHOTO_ERRORS = {"empty": (400, "empty_body"), "not-an-image": (415, "not_an_image"),
                 "too-many-pixels": (413, "too_many_pixels"), "truncated": (400, "truncated_image"),
                 "corrupt": (400, "corrupt_image")}


def decode_upload(data: bytes, field: str, config: ServeConfig,
                  cover: tuple[int, int] | None = None) -> Photo:
    """Upload bytes → the photo (RGB uint8, upright as displayed; JPEGs decoded only as large as
    `cover` needs), or an ApiError that names the field and the problem. The command line's
    reader (carmask.data.io.read_photo), so masks match `carmask cutout`'s of the same file."""
    if not data:
        raise ApiError(400, "empty_body", f"{field}: the upload is empty")
    if len(data) > config.max_bytes:
        raise ApiError(413, "too_large", f"{field}: more than the limit of {config.max_bytes:,} bytes")
    try:
        return read_photo(data, name=field, max_pixels=config.max_pixels, cover=cover)
    except PhotoError as error:
        status, code = _PHOTO_ERRORS.get(error.kind, (400, "corrupt_image"))
        raise ApiError(status, code, str(error)) from None


@dataclass(frozen=True)
class _Cached:
    """A prediction in the cache, small: the mask a bit a pixel, the probability compressed."""
    packed: np.ndarray
    shape: tuple[int, int]
    model: str
    confidence: Any
    probability: bytes | None

    @classmethod
    def of(cls, prediction: Prediction) -> _Cached:
        soft = prediction.probability
        # the probability is 0 or 255 nearly everywhere but along the outline: zlib at level 1
        # takes a few milliseconds and leaves a few percent of it
        return cls(np.packbits(prediction.mask), prediction.mask.shape, prediction.model,
                   prediction.confidence, None if soft is None else zlib.compress(soft.tobytes(), 1))

    def prediction(self) -> Prediction:
        count = self.shape[0] * self.shape[1]
        mask = np.unpackbits(self.packed, count=count).reshape(self.shape).astype(bool)
        soft = None
        if self.probability is not None:
            soft = np.frombuffer(zlib.decompress(self.probability), np.uint8).reshape(self.shape)
        return Prediction(None, mask, model=self.model, confidence=self.confidence, probability=soft)


class MaskService:
    """The model behind the endpoints: one predictor, a bounded pool, a small prediction cache."""

    def __init__(self, predictor, config: ServeConfig) -> None:
        self.predictor, self.config = predictor, config
        self.pool = ThreadPoolExecutor(config.workers, thread_name_prefix="carmask-serve")
        self.in_flight = 0
        self.handled = 0  # requests admitted, answered or refused
        self._cache: OrderedDict[tuple[str, str], _Cached] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return self.config.workers + self.config.max_queue

    @asynccontextmanager
    async def admitted(self):
        """Hold one of `capacity` places for a whole request, from before its upload is read;
        503 when none is free, so a crowd of clients cannot pile uploads up in memory."""
        if self.in_flight >= self.capacity:
            raise ApiError(503, "busy", f"{self.in_flight} requests in progress; retry shortly",
                           headers={"Retry-After": "1"})
        self.in_flight += 1  # only touched on the event loop thread
        try:
            yield
        finally:
            self.in_flight -= 1
            self.handled += 1

    async def run(self, fn, *args):
        """Run `fn` on one of the `workers` threads."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def predictor_for(self, model: str):
        """The predictor a request's `model` asks for: the service's own for auto, else that
        sub-predictor of its AutoPredictor; 422 where it was started with one model file."""
        if model == "auto":
            return self.predictor
        if not hasattr(self.predictor, "general"):
            raise ApiError(422, "model_unavailable", f"model: this service was started with one model "
                           f"file ({self.predictor.path.name}), so only model=auto (that model) is "
                           f"available; start `carmask serve` without --model for {model}")
        return getattr(self.predictor, model)

    def predict(self, data: bytes, model: str = "auto", field: str = "image") -> Prediction:
        """The prediction for a photo's upload bytes (the form's `field`) by the `model` asked
        for: the mask at the photo's size (the command line's mask of the same file), the model
        that made it, the probability for soft edges where the predictor keeps it."""
        key = (model, hashlib.sha256(data).hexdigest())
        with self._lock:
            cached = self._cache.get(key)
            if cached:
                self._cache.move_to_end(key)
        if cached:
            return cached.prediction()
        predictor = self.predictor_for(model)
        # decoded as `predict_paths` decodes a file (libjpeg may shrink it to what the model needs)
        photo = decode_upload(data, field, self.config, cover=predictor.decode_cover)
        prediction = predictor.predict_decoded(photo.pixels, photo.size)
        if self.config.cache:
            with self._lock:
                self._cache[key] = _Cached.of(prediction)
                while len(self._cache) > self.config.cache:
                    self._cache.popitem(last=False)
        return prediction

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
