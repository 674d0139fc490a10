"""The web page under load: clients uploading photos and searching at once, against a trained model.

    python -m benchmarks.web_load                     # 16 clients for 60 s, the demo model (after `dvc repro`)
    python -m benchmarks.web_load --clients 4 --seconds 10 --checkpoint CKPT --photos DIR   # a smoke run

Indexes `--index-photos` photos of `--photos` (default: the demo's images) with the checkpoint, starts
`caption-web` (python -m pipeline.commands.app) on loopback with that index, then runs `--clients`
threads for `--seconds`: each in turn uploads a photo (POST /api/caption) and searches for a demo
query (GET /api/search), over one keep-alive connection. Prints requests/s, p50/p95 latency per
kind, the errors (any answer but 200; there must be none) and the server's peak resident memory
(VmHWM). Every request goes to 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import http.client
import itertools
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import machine_line

QUERIES = ["a red circle", "a blue square", "a green triangle to the left of a yellow circle", "a white square",
           "two shapes", "a small yellow triangle above a red square", "a blue circle and a green square"]


@dataclass
class Record:
    """Every request's kind, latency and status, from all clients."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {"caption": [], "search": []})
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, seconds: float, status: int, detail: bytes) -> None:
        with self.lock:
            self.latencies[kind].append(seconds)
            if status != 200:
                self.errors.append(f"{kind} {status} {detail[:120]!r}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def multipart(data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"photo.png\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def client(port: int, photos: list[bytes], deadline: float, record: Record, seed: int) -> None:
    """Upload and search in turn until the deadline, on one keep-alive connection (reopened after an error)."""
    rng = random.Random(seed)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    for turn in itertools.count():
        if time.monotonic() >= deadline:
            break
        if turn % 2 == 0:
            kind, (body, content_type) = "caption", multipart(rng.choice(photos))
            request = ("POST", "/api/caption", body, {"Content-Type": content_type})
        else:
            kind = "search"
            request = ("GET", f"/api/search?q={rng.choice(QUERIES).replace(' ', '+')}&top=12", None, {})
        start = time.perf_counter()
        try:
            connection.request(*request)
            response = connection.getresponse()
            data = response.read()
            record.add(kind, time.perf_counter() - start, response.status, data)
        except (OSError, http.client.HTTPException) as error:
            record.add(kind, time.perf_counter() - start, 0, str(error).encode())
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    connection.close()


def peak_memory(pid: int) -> int:
    """The process's peak resident memory (VmHWM), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def start_page(checkpoint: Path, index: Path, port: int) -> subprocess.Popen:
    """caption-web on loopback, ready to answer."""
    server = subprocess.Popen([sys.executable, "-m", "pipeline.commands.app", "--checkpoint", str(checkpoint),
                               "--index", str(index), "--port", str(port), "--device", "cpu"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/api/status")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"web_load: the page did not start: {server.stderr.read()}") from None
            time.sleep(0.5)


def percentile(values: list[float], share: float) -> float:
    return statistics.quantiles(values, n=100)[int(share * 100) - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("data/scst/best.pt"),
                        help="the final model (scst.checkpoint)")
    parser.add_argument("--photos", type=Path, default=Path("data/shapes/images"))
    parser.add_argument("--index-photos", type=int, default=100, help="photos indexed and uploaded")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    files = sorted(path for path in args.photos.iterdir() if path.suffix.lower() in {".png", ".jpg", ".jpeg"})
    files = files[:args.index_photos]
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "photos"
        folder.mkdir()
        for path in files:
            shutil.copy(path, folder / path.name)
        subprocess.run([sys.executable, "-m", "pipeline.commands.search", "index", str(folder), "--checkpoint",
                        str(args.checkpoint), "--device", "cpu"], check=True, capture_output=True)
        port, machine = free_port(), machine_line()
        server = start_page(args.checkpoint, folder / ".caption-index", port)
        try:
            photos, record = [path.read_bytes() for path in files], Record()
            start = time.monotonic()
            threads = [threading.Thread(target=client, args=(port, photos, start + args.seconds, record, seed))
                       for seed in range(args.clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - start
            peak = peak_memory(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
    report(args, record, elapsed, peak, len(files), machine)


def report(args: argparse.Namespace, record: Record, elapsed: float, peak: int, photos: int, machine: str) -> None:
    total = sum(len(values) for values in record.latencies.values())
    print(f"web_load: {args.clients} clients, {elapsed:.0f} s, {photos} photos indexed, {args.checkpoint}")
    print(machine)
    print("| requests | requests/s | errors | server peak RSS |")
    print("| ---: | ---: | ---: | ---: |")
    print(f"| {total} | {total / elapsed:.1f} | {len(record.errors)} | {peak / 2**20:.0f} MB |")
    print("| kind | requests | p50 latency | p95 latency |")
    print("| --- | ---: | ---: | ---: |")
    for kind, values in record.latencies.items():
        if values:
            print(f"| {kind} | {len(values)} | {percentile(values, 0.5) * 1000:.0f} ms | "
                  f"{percentile(values, 0.95) * 1000:.0f} ms |")
    for error in record.errors[:10]:
        print(f"error: {error}", file=sys.stderr)
    if record.errors:
        raise SystemExit(f"web_load: {len(record.errors)} requests failed")


if __name__ == "__main__":
    main()
