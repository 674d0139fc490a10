"""The web page's limits over real HTTP: bodies over the limit refused from their Content-Length or cut off
while they stream (nothing over the limit stored), only the photo formats the page names, photos too large
or cut off refused with a clear 4xx while the server stays up, and the security headers on every response."""
from __future__ import annotations

import io
import re
import socket
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.web.guards import CONTENT_SECURITY_POLICY
from pipeline.web.uploads import MAX_BODY
from tests.test_app import TOKEN, call, form, photos, site  # noqa: F401 - the fixtures

WEB = Path(__file__).resolve().parents[1] / "pipeline/web/static"


def send_streaming(url: str, head: str, chunks: Iterable[bytes]) -> tuple[int, bytes, int]:
    """Send request `head` then `chunks` on a raw socket while reading the answer; (status, body, bytes sent).

    Sending stops as soon as the server has answered (it may close the connection while we still send)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    answer, done = bytearray(), threading.Event()

    def complete() -> bool:
        """The whole answer is in: its headers and the Content-Length bytes of body they announce."""
        headers, found, body = bytes(answer).partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", headers)
        return bool(found and length and len(body) >= int(length[1]))

    def read() -> None:  # until the answer is complete or the server closes the connection
        try:
            while not complete() and (data := sock.recv(65536)):
                answer.extend(data)
        except OSError:
            pass
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sent = 0
    try:
        sock.sendall(head.encode())
        for chunk in chunks:
            if b"\r\n\r\n" in answer:  # the server has answered: stop sending
                break
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:  # the server closed the connection after answering
        pass
    done.wait(60)
    sock.close()
    status = int(answer.split(b" ", 2)[1]) if answer else 0
    return status, bytes(answer.partition(b"\r\n\r\n")[2]), sent


@pytest.fixture
def temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """The server's temporary folder (it runs in this process), watched: {"peak": its largest size in bytes}."""
    folder = tmp_path / "server-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    seen, stop = {"peak": 0}, threading.Event()

    def watch() -> None:
        while not stop.is_set():
            size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
            seen["peak"] = max(seen["peak"], size)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    yield seen
    stop.set()
    watcher.join()


def head(length: int | None) -> str:
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST /api/caption HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: multipart/form-data; boundary=xyz\r\n{size}\r\n\r\n")


def megabytes(count: int, chunked: bool) -> Iterator[bytes]:
    """`count` MiB of a multipart body, one MiB at a time (never all in memory); chunked-encoded if asked."""
    block = bytes(2**20)
    for index in range(count):
        data = (b"--xyz\r\nContent-Disposition: form-data; name=\"photo\"\r\n\r\n" + block[56:]) if index == 0 else block
        yield f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data


def test_a_300_mb_chunked_upload_is_cut_off_at_the_limit(site: str, temp_folder: dict[str, int]) -> None:
    status, body, sent = send_streaming(site, head(None), megabytes(300, chunked=True))
    assert status == 413 and b"larger than 20 MB" in body
    assert sent < 64 * 2**20  # cut off while streaming, not after 300 MB
    assert temp_folder["peak"] <= MAX_BODY
    assert call(site, "/api/status")[0] == 200


def test_a_content_length_over_the_limit_is_refused_before_reading(site: str, temp_folder: dict[str, int]) -> None:
    status, body, sent = send_streaming(site, head(300 * 2**20), [])  # headers only: not a byte of the body
    assert status == 413 and b"larger than 20 MB" in body and sent == 0
    status, _, sent = send_streaming(site, head(300 * 2**20), megabytes(300, chunked=False))
    assert status == 413 and sent < 64 * 2**20 and temp_folder["peak"] == 0
    assert call(site, "/api/status")[0] == 200


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG file whose header claims `width` x `height` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
       b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n")
SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'


@pytest.mark.parametrize(("name", "data", "status", "said"), [
    ("eps", EPS, 415, b"JPEG, PNG, WebP, GIF, BMP or TIFF"),
    ("svg", SVG, 415, b"JPEG, PNG, WebP, GIF, BMP or TIFF"),
    ("40000 x 40000 png", png_claiming(40_000, 40_000), 413, b"the limit is 40 megapixels"),
    ("48 megapixel png", png_claiming(8000, 6000), 413, b"48 megapixels; the limit is 40"),
    ("truncated jpeg", truncated_jpeg(), 400, b"cut off (truncated)"),
    ("empty", b"", 400, b"The file is empty"),
])
def test_files_that_are_not_photos_the_page_reads_get_a_clear_4xx(site: str, name: str, data: bytes, status: int,
                                                                  said: bytes) -> None:
    body, headers = form(data)
    answer = call(site, "/api/caption", "POST", body, headers)
    assert answer[0] == status and said in answer[2], (name, answer)
    assert call(site, "/api/status")[0] == 200  # still up


def test_a_body_that_is_not_a_form_is_a_clear_400(site: str) -> None:
    assert call(site, "/api/caption", "POST", b"raw bytes", {"Content-Type": "image/png"})[0] == 400
    body, headers = form(b"\x89PNG", field="picture")
    status, _, data = call(site, "/api/caption", "POST", body, headers)
    assert status == 400 and b"no 'photo' field" in data


def test_every_response_carries_the_security_headers(site: str) -> None:
    oversized = f"POST /api/caption HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n"
    answers = [call(site, "/"), call(site, "/static/app.js"), call(site, "/api/status"), call(site, "/api/photo/99"),
               call(site, "/api/status", token=None), call(site, "/nowhere")]
    for status, headers, _ in answers:
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY, status
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
    assert [status for status, _, _ in answers] == [200, 200, 200, 404, 401, 404]
    assert call(site, "/static/guards.py")[0] == 404  # only the page's own files are served
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY and "script-src 'self';" in CONTENT_SECURITY_POLICY
    status, _, _ = send_streaming(site, oversized, [])
    assert status == 413


def test_the_page_has_no_inline_script_or_style_for_the_policy_to_block() -> None:
    page = (WEB / "index.html").read_text()
    scripts = re.findall(r"<script[^>]*>", page)
    assert scripts and all('src="/static/' in tag for tag in scripts)
    assert not re.search(r"<script[^>]*>\s*[^<\s]", page)  # no script body
    assert not re.search(r"\s(style|on[a-z]+)=", page) and "<style" not in page
    assert "innerHTML" not in (WEB / "app.js").read_text()  # text only: no markup from the server's answers
