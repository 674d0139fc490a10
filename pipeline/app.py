"""The web page: caption a photo, see where each word looked, and search photos by what is in them.

    python -m pipeline.app [--host 127.0.0.1] [--port 8000] [--index DIR] [--checkpoint best.pt]

Serves one static page (pipeline/web: plain HTML and JavaScript) and a small JSON API:
    POST /api/caption   multipart `photo` -> {caption, words, attention: one G x G grid per word}
    GET  /api/search?q=..&top=..       -> {results: [{url, name, caption, score}], unknown: [words]}
    GET  /api/status                   -> {ready, message, photos}
    GET  /api/photo/{row}              -> a searched photo's file
The model is loaded once at startup; a lock lets one request at a time use it, so concurrent
requests are served correctly. Search covers --index (a folder indexed by `python -m pipeline.search
index`) or, without it, the dataset's own images. Without a trained model the page still opens and
says to run `dvc repro`. Bad uploads (not an image, truncated, over 20 MB or 40 megapixels) and
empty queries get a clear message; the server keeps running.
"""
from __future__ import annotations

import argparse
import io
import tempfile
import threading
from pathlib import Path

import uvicorn
from fastapi import FastAPI, HTTPException, UploadFile
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image

from pipeline.cli import EXPECTED_ERRORS, run
from pipeline.config import TrainConfig, load_section, params_path
from pipeline.encoder.images import IMAGE_ERRORS, ImageReadError, load_image
from pipeline.errors import InputError
from pipeline.evaluation.figures import attention_grid
from pipeline.photos import PhotoCaptioner
from pipeline.retrieval.likelihood import QueryError, unknown_words
from pipeline.retrieval.ranking import Gallery, Searcher, SearchError
from pipeline.runtime import resolve_device
from pipeline.search import project_defaults

WEB = Path(__file__).with_name("web")
MAX_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000
NO_MODEL = "No trained model yet ({checkpoint} not found): run `dvc repro` first, then restart the page."
EMPTY = ("There are no photos to search yet: index a folder with `python -m pipeline.search index PHOTOS_DIR` "
         "and start the page with --index PHOTOS_DIR/.caption-index.")


class Service:
    """The loaded model and search gallery, used by one request at a time."""

    def __init__(self, checkpoint: Path | None, index: Path | None, device_name: str = "auto") -> None:
        self.lock = threading.Lock()
        self.captioner: PhotoCaptioner | None = None
        self.searcher: Searcher | None = None
        self.message = ""
        _, beam_size, options = project_defaults()
        if checkpoint is None or not Path(checkpoint).is_file():
            self.message = NO_MODEL.format(checkpoint=checkpoint or "train.checkpoint")
            return
        device = resolve_device(device_name, "--device")
        try:
            self.captioner = PhotoCaptioner(checkpoint, device, beam_size)
        except InputError as error:
            self.message = f"The model cannot be loaded: {error}"
            return
        try:
            gallery = self._gallery(Path(checkpoint), index)
        except EXPECTED_ERRORS as error:
            self.message = f"Search is off: {error}"
            return
        model, vocabulary = self.captioner.model, self.captioner.vocabulary
        self.searcher = Searcher(model, vocabulary, gallery, device, options)

    def _gallery(self, checkpoint: Path, index: Path | None) -> Gallery:
        """The photo index, or the dataset's own images."""
        from pipeline.retrieval.dataset_gallery import dataset_gallery
        from pipeline.retrieval.photo_index import open_index

        if index is not None:
            return open_index(index, checkpoint)
        if not params_path().is_file():
            raise FileNotFoundError("no --index given and no params.yaml in this folder")
        assert self.captioner is not None
        return dataset_gallery(self.captioner.model, self.captioner.vocabulary, checkpoint, self.captioner.encoder_info,
                               self.captioner.device)

    def caption(self, data: bytes) -> dict:
        """The caption of an uploaded photo and each word's attention grid."""
        if self.captioner is None:
            raise HTTPException(503, self.message)
        check_photo(data)
        with tempfile.NamedTemporaryFile(suffix=".upload") as file:  # the same decoder as every other image
            file.write(data)
            file.flush()
            try:
                pixels = load_image(file.name, self.captioner.image_size)
            except ImageReadError:
                raise HTTPException(415, "That file is not an image the model can read (try JPEG or PNG).") from None
        with self.lock:
            caption = self.captioner.caption_pixels(pixels[None])[0]
        words = caption.words
        grids = [attention_grid(alpha).tolist() for alpha in caption.attention[:len(words)]]
        return {"caption": caption.text, "words": words, "attention": grids}

    def search(self, query: str, top: int) -> dict:
        """The best photos for a query."""
        if self.searcher is None:
            raise HTTPException(503, self.message or EMPTY)
        if not query.strip():
            raise HTTPException(400, "Type what the photos should show, then search.")
        try:
            with self.lock:
                hits = self.searcher.search(query, top)
        except QueryError:
            raise HTTPException(400, "The query has no words to search for: type some words.") from None
        except SearchError:
            raise HTTPException(404, EMPTY) from None
        return {"results": [{"url": f"/api/photo/{hit.row}", "name": hit.name, "caption": hit.caption,
                             "score": round(hit.score, 3)} for hit in hits],
                "unknown": unknown_words(query, self.searcher.scorer.vocabulary)}


def check_photo(data: bytes) -> None:
    """Refuse an upload that is empty, too large, not an image or cut off, with a message for the page."""
    if not data:
        raise HTTPException(400, "The file is empty: choose a photo.")
    if len(data) > MAX_BYTES:
        raise HTTPException(413, f"The file is larger than {MAX_BYTES // 2**20} MB: choose a smaller photo.")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise HTTPException(413, f"The photo has {image.width * image.height / 1e6:.0f} megapixels; "
                                         f"the limit is {MAX_PIXELS // 1_000_000}.")
            image.load()  # decodes every byte: a truncated file fails here
    except HTTPException:
        raise
    except Image.DecompressionBombError:
        raise HTTPException(413, f"The photo has too many pixels; the limit is {MAX_PIXELS // 1_000_000} "
                                 f"megapixels.") from None
    except IMAGE_ERRORS as error:
        what = "cut off (truncated)" if "truncated" in str(error) else "not an image the model can read"
        raise HTTPException(415, f"That file is {what}: try another photo.") from None


def create_app(service: Service) -> FastAPI:
    """The page and its API around a loaded service."""
    app = FastAPI(title="Caption and search photos")

    @app.get("/api/status")
    def status() -> dict:
        photos = len(service.searcher.gallery) if service.searcher else 0
        return {"ready": service.captioner is not None, "message": service.message, "photos": photos}

    @app.post("/api/caption")
    def caption(photo: UploadFile) -> dict:
        return service.caption(photo.file.read(MAX_BYTES + 1))

    @app.get("/api/search")
    def search(q: str = "", top: int = 12) -> dict:
        return service.search(q, max(1, min(top, 100)))

    @app.get("/api/photo/{row}")
    def photo(row: int) -> FileResponse:
        gallery = service.searcher.gallery if service.searcher else None
        if gallery is None or not 0 <= row < len(gallery) or not gallery.paths[row].is_file():
            raise HTTPException(404, "No such photo.")
        return FileResponse(gallery.paths[row])

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(WEB / "index.html")

    app.mount("/static", StaticFiles(directory=WEB), name="static")
    return app


def main(argv: list[str] | None = None) -> None:
    checkpoint = load_section(TrainConfig).checkpoint if params_path().is_file() else None
    parser = argparse.ArgumentParser(prog="python -m pipeline.app", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--index", type=Path, help="photo index to search (default: the dataset's images)")
    parser.add_argument("--checkpoint", type=Path, default=checkpoint, help="the model (default: train.checkpoint)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    service = Service(args.checkpoint, args.index, args.device)
    if service.message:
        print(f"app: {service.message}")
    print(f"app: open http://{args.host}:{args.port}/")
    uvicorn.run(create_app(service), host=args.host, port=args.port, workers=1)


if __name__ == "__main__":
    run(main, "app")
