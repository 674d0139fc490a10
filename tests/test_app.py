"""The web page in a real headless browser (Debian's chromium and chromedriver, through Selenium), opened
with its access token: upload -> caption, alt text and per-word heat map; search -> the photo the query
describes; a query of unknown words says its order means nothing; bad uploads -> a message, and the next
upload still works. Then the service itself, its queue bound, 24 concurrent uploads, and the command
bound to 0.0.0.0 with a token."""
from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
import uvicorn
from fastapi import HTTPException
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from pipeline.api import Captioner
from pipeline.commands.app import Service, create_app, exposure, parse_args
from pipeline.datasets.table import read_captions
from pipeline.defaults import package_defaults
from pipeline.encoder.feature_cache import FeatureStore
from pipeline.files import save_torch
from pipeline.model.architectures import build_decoder
from pipeline.model.checkpoint import checkpoint_payload
from pipeline.model.decoder import DecoderConfig, caption_loss
from pipeline.retrieval.likelihood import encode_queries
from pipeline.text import Vocabulary

# four demo images with different objects: (file, a colour and a shape it shows)
PHOTOS = {"img_00005.png": ("yellow", "triangle"), "img_00007.png": ("white", "square"),
          "img_00009.png": ("green", "square"), "img_00002.png": ("blue", "circle")}
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TOKEN = "correct-horse-battery-staple"


def train_decoder(project: Path, images: list[str], out: Path, steps: int = 80, demo: bool = False) -> Path:
    """A checkpoint whose decoder has learnt the captions of `images` (the tiny project's 2 epochs are too few);
    its encoder record says whether the features are of the demo (`demo`: the demo model's notice)."""
    store = FeatureStore(project / "data/features/features.h5")
    vocabulary = Vocabulary.from_json(project / "data/vocab/vocab.json")
    table = read_captions(project / "data/prepared/captions.csv")
    table = table[table["image"].isin(images)]
    features = store.load(store.rows_of(list(table["image"]))).float()  # (C, P, E)
    tokens = encode_queries(list(table["caption"]), vocabulary, 12)
    torch.manual_seed(0)
    model = build_decoder(DecoderConfig(vocab_size=len(vocabulary), embed_dim=16, encoder_dim=store.feature_dim,
                                        attention_dim=16, decoder_dim=48, dropout=0.0, pad_index=0,
                                        max_caption_length=12, architecture="sat"))
    regions = features.flatten(0, 1)
    model.set_feature_statistics(regions.mean(0), regions.std(0))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        logits, alphas = model(features, tokens)
        loss, _ = caption_loss(logits, tokens[:, 1:], alphas, vocabulary.pad, 0.0)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    save_torch(out, checkpoint_payload(model.eval(), list(vocabulary.words), {**store.attrs, "demo_dataset": demo}))
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(app: Any) -> tuple[str, uvicorn.Server, threading.Thread]:
    """Start an app on a free local port in a thread; returns its address, the server and the thread."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, thread


@pytest.fixture(scope="module")
def photos(trained_project: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> tuple[Path, Path]:
    """(a checkpoint that knows the four photos, untrained encoder and not the demo; the photos' folder, indexed)."""
    folder = tmp_path_factory.mktemp("web")
    checkpoint = train_decoder(trained_project, list(PHOTOS), folder / "model.pt")
    (folder / "photos").mkdir()
    for name in PHOTOS:
        shutil.copy(trained_project / "data/shapes/images" / name, folder / "photos" / name)
    Captioner(checkpoint, "cpu").index(folder / "photos")
    return checkpoint, folder / "photos"


@pytest.fixture(scope="module")
def site(photos: tuple[Path, Path], trained_project: Path) -> Iterator[str]:
    """The page over the indexed photos, with the access token, served on loopback: its address."""
    checkpoint, folder = photos
    previous = Path.cwd()
    os.chdir(trained_project)  # params.yaml: the ranking options
    try:
        url, server, thread = serve(create_app(Service(checkpoint, folder / ".caption-index", "cpu"), TOKEN))
        yield url
        server.should_exit = True
        thread.join(timeout=10)
    finally:
        os.chdir(previous)


def call(url: str, path: str, method: str = "GET", body: bytes | None = None,
         headers: dict[str, str] | None = None, token: str | None = TOKEN) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request: (status, headers in lower case, body)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    sent = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
    connection.request(method, path, body=body, headers=sent)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, {key.lower(): value for key, value in response.getheaders()}, data


def form(data: bytes, field: str = "photo") -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body with one file field, and its Content-Type header."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"upload\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def open_browser(width: int = 1200, height: int = 1000) -> webdriver.Chrome:
    """Headless chromium driven through the system's chromedriver (nothing downloaded)."""
    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(argument)
    return webdriver.Chrome(service=DriverService(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def page(site: str) -> Iterator[tuple[webdriver.Chrome, str]]:
    browser = open_browser()
    try:
        yield browser, site
    finally:
        browser.quit()


def upload(browser: webdriver.Chrome, path: Path) -> None:
    browser.find_element(By.ID, "photo").send_keys(str(path))


def wait_for(browser: webdriver.Chrome, condition: Callable[[webdriver.Chrome], Any], seconds: float = 20) -> Any:
    return WebDriverWait(browser, seconds).until(condition)


@pytest.mark.slow  # a real browser or server process
def test_upload_shows_caption_alt_text_and_word_heat_maps(page: tuple[webdriver.Chrome, str],
                                                          photos: tuple[Path, Path]) -> None:
    browser, url = page
    browser.get(f"{url}/#token={TOKEN}")  # a fragment: never sent to the server
    wait_for(browser, lambda b: "4 photos to search" in b.find_element(By.ID, "status").text)
    assert "token" not in browser.current_url  # taken out of the address bar
    notice = browser.find_element(By.ID, "notice")
    assert notice.is_displayed() and "the encoder is untrained" in notice.text
    upload(browser, photos[1] / "img_00005.png")
    caption = wait_for(browser, lambda b: b.find_element(By.ID, "caption").text)
    assert "yellow" in caption.split() and "triangle" in caption.split()
    assert browser.find_element(By.ID, "preview").get_attribute("alt") == caption
    buttons = browser.find_elements(By.CSS_SELECTOR, "#words button")
    assert [button.text for button in buttons] == caption.split()
    painted = "const c = document.getElementById('heatmap'); const d = c.getContext('2d')" \
              ".getImageData(0, 0, c.width, c.height).data; let a = 0; for (let i = 3; i < d.length; i += 4) a += d[i];" \
              " return a;"
    assert browser.execute_script(painted) == 0  # nothing drawn before a word is chosen
    buttons[caption.split().index("yellow")].click()
    assert browser.find_element(By.ID, "heatmap").get_attribute("data-word") == str(caption.split().index("yellow"))
    assert browser.execute_script(painted) > 0
    assert buttons[caption.split().index("yellow")].get_attribute("aria-pressed") == "true"


def search_in(browser: webdriver.Chrome, query: str) -> list[Any]:
    browser.find_element(By.ID, "query").clear()
    browser.find_element(By.ID, "query").send_keys(query)
    browser.find_element(By.CSS_SELECTOR, "#search button").click()
    return wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#results figure"))


@pytest.mark.slow  # a real browser or server process
def test_search_finds_the_photo_the_query_describes(page: tuple[webdriver.Chrome, str]) -> None:
    browser, url = page
    browser.get(url)  # the token of the first visit is kept for the tab
    wait_for(browser, lambda b: "4 photos to search" in b.find_element(By.ID, "status").text)
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{url}/?token={TOKEN}")  # the query form works as well
    wait_for(browser, lambda b: "4 photos to search" in b.find_element(By.ID, "status").text)
    assert "token" not in browser.current_url
    figures = search_in(browser, "a green square")
    assert len(figures) == 4 and not browser.find_elements(By.CSS_SELECTOR, "#results .results-notice")
    first = figures[0]
    assert "img_00009.png" in first.text and "green square" in first.text
    image = first.find_element(By.TAG_NAME, "img")
    wait_for(browser, lambda b: b.execute_script("return arguments[0].naturalWidth", image) > 0)  # fetched with the token
    # a query of words the model has never seen: the results say that their order means nothing
    search_in(browser, "zebra xylophone")
    notice = browser.find_element(By.CSS_SELECTOR, "#results .results-notice")
    assert "knows none of the words zebra, xylophone" in notice.text and "say nothing about the query" in notice.text
    assert all("no known word" in figure.text for figure in browser.find_elements(By.CSS_SELECTOR, "#results figure"))
    # an empty query gets a message, not a request
    browser.find_element(By.ID, "query").clear()
    browser.find_element(By.CSS_SELECTOR, "#search button").click()
    assert "Type what the photos should show" in browser.find_element(By.ID, "search-message").text


@pytest.mark.slow  # a real browser or server process
def test_bad_uploads_get_a_message_and_the_page_keeps_working(page: tuple[webdriver.Chrome, str],
                                                             photos: tuple[Path, Path],
                                                             tmp_path: Path) -> None:
    browser, url = page
    browser.get(url)
    not_image = tmp_path / "letter.jpg"
    not_image.write_text("Dear photo album, this is text.")
    upload(browser, not_image)
    message = wait_for(browser, lambda b: b.find_element(By.ID, "message").text)
    assert "not an image" in message and not browser.find_element(By.ID, "result").is_displayed()
    data = (photos[1] / "img_00007.png").read_bytes()
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(data[: len(data) // 2])
    upload(browser, truncated)
    wait_for(browser, lambda b: "truncated" in b.find_element(By.ID, "message").text)
    upload(browser, photos[1] / "img_00007.png")
    caption = wait_for(browser, lambda b: b.find_element(By.ID, "caption").text)
    assert {"white", "square"} <= set(caption.split())
    assert not browser.find_element(By.ID, "message").is_displayed()


@pytest.mark.slow  # a real browser or server process
def test_without_the_token_the_page_says_it_needs_one(page: tuple[webdriver.Chrome, str]) -> None:
    browser, url = page
    browser.execute_script("sessionStorage.clear()")
    browser.get(url)
    wait_for(browser, lambda b: "needs its access token" in b.find_element(By.ID, "status").text)


def test_24_concurrent_uploads_of_one_photo_get_one_caption(site: str, photos: tuple[Path, Path]) -> None:
    body, headers = form((photos[1] / "img_00009.png").read_bytes())
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda _: call(site, "/api/caption", "POST", body, headers), range(24)))
    assert [status for status, _, _ in answers] == [200] * 24
    assert len({data for _, _, data in answers}) == 1 and b"green" in answers[0][2]


class SlowService:
    """A stand-in for Service whose searches wait until released, to fill the model's queue."""

    def __init__(self) -> None:
        self.calls, self.release, self.lock = 0, threading.Event(), threading.Lock()

    def status(self) -> dict:
        return {"ready": True, "message": "", "photos": 0, "notice": None}

    def search(self, query: str, top: int) -> dict:
        with self.lock:
            self.calls += 1
        self.release.wait(60)
        return {"results": [], "unknown": [], "notice": None}


def test_at_most_max_queue_requests_wait_and_the_rest_get_503() -> None:
    service = SlowService()
    url, server, thread = serve(create_app(service, max_queue=1))  # one served, one waiting
    try:
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(call, url, "/api/search?q=a", token=None) for _ in range(2)]
            deadline = time.monotonic() + 30
            while service.calls < 2:
                assert time.monotonic() < deadline, "the two requests did not reach the service"
                time.sleep(0.02)
            status, headers, data = call(url, "/api/search?q=a", token=None)
            assert status == 503 and b"busy" in data and headers["retry-after"] == "2"
            assert call(url, "/api/status", token=None)[0] == 200  # no model work: not queued
            service.release.set()
            assert [future.result()[0] for future in held] == [200, 200]
        assert call(url, "/api/search?q=a", token=None)[0] == 200  # places are given back
    finally:
        service.release.set()
        server.should_exit = True
        thread.join(timeout=10)


def test_without_a_model_the_page_says_what_to_run(tmp_path: Path) -> None:
    service = Service(tmp_path / "missing.pt", None, "cpu", package_defaults())
    assert "run `dvc repro` first" in service.message and str(tmp_path / "missing.pt") in service.message
    with pytest.raises(HTTPException) as refused:
        service.require_model()
    assert refused.value.status_code == 503
    with pytest.raises(HTTPException):
        service.search("a red circle", 5)


def test_a_damaged_model_is_said_on_the_page(tmp_path: Path) -> None:
    damaged = tmp_path / "best.pt"
    damaged.write_bytes(b"")
    service = Service(damaged, None, "cpu", package_defaults())
    assert service.message.startswith(f"The model cannot be loaded: {damaged} cannot be loaded: it is cut off")
    with pytest.raises(HTTPException) as refused:
        service.require_model()
    assert refused.value.status_code == 503 and refused.value.detail == service.message


def test_an_empty_index_is_reported_and_a_demo_model_says_what_it_knows(trained_project: Path, tmp_path: Path) -> None:
    checkpoint = train_decoder(trained_project, list(PHOTOS), tmp_path / "demo.pt", steps=1, demo=True)
    (tmp_path / "empty").mkdir()
    Captioner(checkpoint, "cpu").index(tmp_path / "empty")
    service = Service(checkpoint, tmp_path / "empty/.caption-index", "cpu", package_defaults())
    status = service.status()
    assert status == {"ready": True, "message": "", "photos": 0, "notice": status["notice"]}
    assert "the built-in demo's model" in status["notice"] and "the encoder is untrained" in status["notice"]
    with pytest.raises(HTTPException) as refused:
        service.search("a red circle", 5)
    assert refused.value.status_code == 404 and "no photos to search" in refused.value.detail
    with pytest.raises(HTTPException) as refused:
        service.search("   ", 5)
    assert refused.value.status_code == 400


def test_binding_beyond_loopback_warns_and_the_token_comes_from_the_environment(
        monkeypatch: pytest.MonkeyPatch, photos: tuple[Path, Path]) -> None:
    assert exposure("127.0.0.1", None) is None and exposure("::1", None) is None and exposure("localhost", None) is None
    assert "without an access token" in exposure("0.0.0.0", None) and "CAPTION_WEB_TOKEN" in exposure("0.0.0.0", None)
    assert "once they have the access token" in exposure("192.0.2.1", "t")
    monkeypatch.setenv("CAPTION_WEB_TOKEN", "from-env")
    args = parse_args(["--checkpoint", str(photos[0])], package_defaults())
    assert args.token == "from-env" and args.max_queue == 32


@pytest.mark.slow  # a real browser or server process
def test_served_on_all_interfaces_with_a_token_api_calls_need_it(photos: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, folder = photos
    port = free_port()
    command = [sys.executable, "-m", "pipeline.commands.app", "--host", "0.0.0.0", "--port", str(port),
               "--checkpoint", str(checkpoint), "--index", str(folder / ".caption-index"), "--device", "cpu",
               "--token", TOKEN]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:  # only loopback is ever called
            try:
                status, _, _ = call(url, "/api/status", token=TOKEN)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the page did not start"
                time.sleep(0.2)
        assert status == 200
        status, headers, data = call(url, "/api/status", token=None)
        assert status == 401 and b"access token" in data and headers["www-authenticate"] == "Bearer"
        assert call(url, "/api/status", token="wrong")[0] == 401
        assert call(url, "/api/search?q=a+red+circle", token=None)[0] == 401
        assert call(url, "/api/search?q=a+red+circle")[0] == 200
        assert call(url, "/api/photo/0", token=None)[0] == 401 and call(url, "/api/photo/0")[0] == 200
        assert call(url, "/", token=None)[0] == 200  # the page itself, which then sends the token
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    warnings = [line for line in err.splitlines() if "serving on 0.0.0.0" in line]
    assert len(warnings) == 1 and "once they have the access token" in warnings[0]
