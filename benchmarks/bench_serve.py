"""The service under load, bounded in count: the server runs in its own process (so its memory
is its own), fed real photos of the shipped model's held-out cars by N concurrent clients.

1. baseline: one client, requests one after another (throughput and latency);
2. load: N clients, a fixed number of requests each; every answer must be 200 and exactly the
   mask the baseline got for that photo; the server's RSS is sampled throughout;
3. bad input interleaved with good: every bad upload gets its 4xx and code, every good one its
   correct mask, and the server is still healthy at the end.

Targets: no errors, all masks correct, throughput with N clients >= the single client's, and no
memory growth: peak RSS in the second half of the load within 10% of the first half's.
The mask cache is off, so every request runs the model.

    python benchmarks/bench_serve.py [--clients 8] [--requests 12] [--endpoint mask|cutout]
"""

from __future__ import annotations

import argparse
import io
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psutil
from common import report, require_data
from PIL import Image

SERVER = """
import sys
from carmask.apps.serve import ServeConfig, serve
serve("127.0.0.1", int(sys.argv[1]), backend=sys.argv[2],
      config=ServeConfig(cache=0, max_pixels=12_000_000, max_bytes=4 * 2**20))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def held_out_photos(count: int) -> list[bytes]:
    from carmask.data.layout import index_dataset
    from carmask.data.split import split_by_car
    from carmask.training.models.io import SHIPPED_MODEL, read_config

    training = read_config(SHIPPED_MODEL)["training"]
    index = index_dataset(require_data(), check_pixels=False)
    val = split_by_car(index.train, training["fold"], training["folds"], training.get("seed", 0),
                       stratify_by_make=True)[1]
    return [record.image_path.read_bytes() for record in val[:count]]


def post(client: httpx.Client, endpoint: str, data: bytes) -> tuple[httpx.Response, float]:
    start = time.perf_counter()
    response = client.post(f"/v1/{endpoint}", files={"image": ("car.jpg", data, "image/jpeg")})
    return response, time.perf_counter() - start


def answer(response: httpx.Response, endpoint: str) -> np.ndarray:
    image = np.asarray(Image.open(io.BytesIO(response.content)))
    return image > 127 if endpoint == "mask" else image[..., 3] > 127


def bad_uploads(photo: bytes) -> list[tuple[str, bytes, int, str]]:
    text = b"not a photo at all"
    big = io.BytesIO()
    Image.new("L", (4000, 4000)).save(big, "PNG")
    return [("empty", b"", 400, "empty_body"), ("text", text, 415, "not_an_image"),
            ("truncated", photo[: len(photo) // 2], 400, "truncated_image"),
            ("16 MP", big.getvalue(), 413, "too_many_pixels"),
            ("5 MB", photo + bytes(5 * 2**20), 413, "too_large")]


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process, self.samples, self.running = psutil.Process(pid), [], True

    def run(self) -> None:
        while self.running:
            self.samples.append((time.perf_counter(), self.process.memory_info().rss / 2**20))
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=12, help="per client")
    parser.add_argument("--endpoint", choices=["mask", "cutout"], default="mask")
    parser.add_argument("--backend", choices=["onnx", "torch"], default="onnx")
    args = parser.parse_args()
    photos = held_out_photos(16)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), args.backend],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=300) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    client.get("/healthz").raise_for_status()
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("the server did not start") from None
                    time.sleep(0.2)

            # 1. baseline: one client; its masks are the reference for every later answer
            reference, single = {}, []
            for i, photo in enumerate(photos):
                response, seconds = post(client, args.endpoint, photo)
                response.raise_for_status()
                reference[i] = answer(response, args.endpoint)
                single.append(seconds)
            single_rps = 1 / statistics.mean(single[1:])

            # 2. load: N clients, fixed count
            sampler = RssSampler(server.pid)
            sampler.start()
            jobs = [(c * args.requests + r) % len(photos) for c in range(args.clients)
                    for r in range(args.requests)]

            def one(i):
                response, seconds = post(client, args.endpoint, photos[i])
                ok = response.status_code == 200 and np.array_equal(answer(response, args.endpoint),
                                                                    reference[i])
                return ok, response.status_code, seconds

            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                results = list(pool.map(one, jobs))
            elapsed = time.perf_counter() - started
            sampler.running = False
            sampler.join()
            latencies = sorted(seconds for _, _, seconds in results)
            middle = started + elapsed / 2
            first = max((rss for t, rss in sampler.samples if t < middle), default=0.0)
            second = max((rss for t, rss in sampler.samples if t >= middle), default=0.0)
            errors = sum(status != 200 for _, status, _ in results)
            wrong = sum(not ok for ok, status, _ in results if status == 200)

            # 3. bad input interleaved with good, concurrently
            mixed = []
            for k, (name, body, status, code) in enumerate(bad_uploads(photos[0]) * 2):
                mixed += [("good", k % len(photos)), ("bad", (name, body, status, code))]

            def check(item):
                kind, value = item
                if kind == "good":
                    return one(value)[0]
                name, body, status, code = value
                response, _ = post(client, args.endpoint, body)
                return response.status_code == status and response.json()["error"]["code"] == code

            with ThreadPoolExecutor(args.clients) as pool:
                mixed_ok = list(pool.map(check, mixed))
            healthy = client.get("/healthz").json()["status"] == "ok"
    finally:
        server.terminate()
        server.wait(timeout=30)

    throughput = len(jobs) / elapsed
    growth = (second - first) / first * 100 if first else 0.0
    report(
        f"serve_{args.endpoint}_load",
        backend=args.backend, clients=args.clients, requests=len(jobs), errors=errors,
        wrong_masks=wrong, p50_ms=round(statistics.median(latencies) * 1e3, 1),
        p95_ms=round(latencies[int(0.95 * (len(latencies) - 1))] * 1e3, 1),
        throughput_rps=round(throughput, 2), single_client_rps=round(single_rps, 2),
        single_client_p50_ms=round(statistics.median(single[1:]) * 1e3, 1),
        ratio_to_single=round(throughput / single_rps, 2),
        rss_first_half_mb=round(first), rss_second_half_mb=round(second),
        rss_growth_pct=round(growth, 1),
        bad_and_good_interleaved=f"{sum(mixed_ok)}/{len(mixed_ok)} as expected",
        target_met=bool(errors == 0 and wrong == 0 and all(mixed_ok) and healthy
                        and throughput >= 0.95 * single_rps and growth <= 10),
    )


if __name__ == "__main__":
    main()
