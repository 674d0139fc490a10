"""The web page in a real headless browser (Debian's chromium and chromedriver, through Selenium):
upload -> caption, alt text and per-word heat map; search -> the photo the query describes; bad
uploads -> a message, and the next upload still works."""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import uvicorn
from fastapi import HTTPException
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from pipeline.app import MAX_BYTES, Service, check_photo, create_app
from pipeline.datasets.table import read_captions
from pipeline.encoder.feature_cache import FeatureStore
from pipeline.files import save_torch
from pipeline.model.architectures import build_decoder
from pipeline.model.checkpoint import checkpoint_payload
from pipeline.model.decoder import DecoderConfig, caption_loss
from pipeline.photos import PhotoCaptioner
from pipeline.retrieval.likelihood import encode_queries
from pipeline.retrieval.photo_index import update_index
from pipeline.text import Vocabulary

# four demo images with different objects: (file, a colour and a shape it shows)
PHOTOS = {"img_00005.png": ("yellow", "triangle"), "img_00007.png": ("white", "square"),
          "img_00009.png": ("green", "square"), "img_00002.png": ("blue", "circle")}
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def train_decoder(project: Path, images: list[str], out: Path, steps: int = 80) -> Path:
    """A checkpoint whose decoder has learnt the captions of `images` (the tiny project's 2 epochs are too few)."""
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
    save_torch(out, checkpoint_payload(model.eval(), list(vocabulary.words), store.attrs))
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(service: Service) -> tuple[str, uvicorn.Server, threading.Thread]:
    """Start the page on a free local port in a thread; returns its address, the server and the thread."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, thread


def open_browser(width: int = 1200, height: int = 1000) -> webdriver.Chrome:
    """Headless chromium driven through the system's chromedriver (nothing downloaded)."""
    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(argument)
    return webdriver.Chrome(service=DriverService(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def photos(trained_project: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> tuple[Path, Path]:
    """(a checkpoint that knows the four photos, the folder of those photos, indexed)."""
    folder = tmp_path_factory.mktemp("web")
    checkpoint = train_decoder(trained_project, list(PHOTOS), folder / "model.pt")
    (folder / "photos").mkdir()
    for name in PHOTOS:
        shutil.copy(trained_project / "data/shapes/images" / name, folder / "photos" / name)
    update_index(PhotoCaptioner(checkpoint, torch.device("cpu")), folder / "photos", show_progress=False)
    return checkpoint, folder / "photos"


@pytest.fixture(scope="module")
def page(photos: tuple[Path, Path], trained_project: Path) -> Iterator[tuple[webdriver.Chrome, str]]:
    checkpoint, folder = photos
    previous = Path.cwd()
    os.chdir(trained_project)  # params.yaml: the ranking options
    try:
        url, server, thread = serve(Service(checkpoint, folder / ".caption-index", "cpu"))
        browser = open_browser()
        try:
            yield browser, url
        finally:
            browser.quit()
            server.should_exit = True
            thread.join(timeout=10)
    finally:
        os.chdir(previous)


def upload(browser: webdriver.Chrome, path: Path) -> None:
    browser.find_element(By.ID, "photo").send_keys(str(path))


def wait_for(browser: webdriver.Chrome, condition: Callable[[webdriver.Chrome], Any], seconds: float = 20) -> Any:
    return WebDriverWait(browser, seconds).until(condition)


def test_upload_shows_caption_alt_text_and_word_heat_maps(page: tuple[webdriver.Chrome, str],
                                                          photos: tuple[Path, Path]) -> None:
    browser, url = page
    browser.get(url)
    wait_for(browser, lambda b: "4 photos to search" in b.find_element(By.ID, "status").text)
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


def test_search_finds_the_photo_the_query_describes(page: tuple[webdriver.Chrome, str]) -> None:
    browser, url = page
    browser.get(url)
    browser.find_element(By.ID, "query").send_keys("a green square")
    browser.find_element(By.CSS_SELECTOR, "#search button").click()
    figures = wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#results figure"))
    assert len(figures) == 4
    first = figures[0]
    assert "img_00009.png" in first.text and "green square" in first.text
    assert browser.execute_script("return arguments[0].naturalWidth", first.find_element(By.TAG_NAME, "img")) > 0
    # an empty query gets a message, not a request
    browser.find_element(By.ID, "query").clear()
    browser.find_element(By.CSS_SELECTOR, "#search button").click()
    assert "Type what the photos should show" in browser.find_element(By.ID, "search-message").text


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


def test_without_a_model_the_page_says_what_to_run(tmp_path: Path) -> None:
    service = Service(tmp_path / "missing.pt", None, "cpu")
    assert "run `dvc repro` first" in service.message and str(tmp_path / "missing.pt") in service.message
    with pytest.raises(HTTPException) as refused:
        service.caption(b"anything")
    assert refused.value.status_code == 503
    with pytest.raises(HTTPException):
        service.search("a red circle", 5)


def test_a_damaged_model_is_said_on_the_page(tmp_path: Path) -> None:
    damaged = tmp_path / "best.pt"
    damaged.write_bytes(b"")
    service = Service(damaged, None, "cpu")
    assert service.message.startswith(f"The model cannot be loaded: {damaged} cannot be loaded: it is cut off")
    with pytest.raises(HTTPException) as refused:
        service.caption(b"anything")
    assert refused.value.status_code == 503 and refused.value.detail == service.message


def test_too_large_uploads_are_refused(tmp_path: Path) -> None:
    with pytest.raises(HTTPException) as refused:
        check_photo(b"0" * (MAX_BYTES + 1))
    assert refused.value.status_code == 413 and "20 MB" in refused.value.detail
    huge = tmp_path / "huge.png"
    Image.new("1", (8000, 6000)).save(huge)  # 48 megapixels in a small file
    with pytest.raises(HTTPException) as refused:
        check_photo(huge.read_bytes())
    assert refused.value.status_code == 413 and "48 megapixels" in refused.value.detail


def test_an_empty_index_is_reported(photos: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, _ = photos
    (tmp_path / "empty").mkdir()
    update_index(PhotoCaptioner(checkpoint, torch.device("cpu")), tmp_path / "empty", show_progress=False)
    service = Service(checkpoint, tmp_path / "empty/.caption-index", "cpu")
    with pytest.raises(HTTPException) as refused:
        service.search("a red circle", 5)
    assert refused.value.status_code == 404 and "no photos to search" in refused.value.detail
    with pytest.raises(HTTPException) as refused:
        service.search("   ", 5)
    assert refused.value.status_code == 400
