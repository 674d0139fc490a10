"""The web page: caption a photo, see where each word looked, and search photos by what is in them.

    caption-web [--host 127.0.0.1] [--port 8000] [--index DIR] [--checkpoint best.pt] [--max-queue 32]
    CAPTION_WEB_TOKEN=... caption-web --host 0.0.0.0          # shared on a network: require a token
    (or: python -m pipeline.commands.app ...)

Serves one static page (pipeline/web/static: plain HTML and JavaScript) and a small JSON API over
`pipeline.api` (one Captioner, loaded at startup, and the PhotoLibrary it searches):
    POST /api/caption   multipart `photo` -> {caption, words, attention: one G x G grid per word}
    GET  /api/search?q=..&top=..       -> {results: [{url, name, caption, score}], unknown: [words], notice}
    GET  /api/status                   -> {ready, message, photos, notice}
    GET  /api/photo/{row}              -> a searched photo's file
Search covers --index (a folder indexed by `caption-search index`) or, inside a project without
it, the dataset's own images. Without a trained model the page still opens and says what to run.

Safe to share (pipeline/web/guards.py, uploads.py): bodies over the limit are refused from their
Content-Length or cut off while they stream in; uploads open only as JPEG, PNG, WebP, GIF, BMP or
TIFF, at most 40 megapixels, decoded to the end before use; at most --max-queue requests wait for
the model (the rest get 503); every response carries security headers. It binds to loopback; any
other --host is said on stderr, and with --token (or $CAPTION_WEB_TOKEN, which stays out of `ps`)
every API call needs `Authorization: Bearer TOKEN`: open the page as http://HOST:PORT/#token=TOKEN.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image

from pipeline.api import Captioner, PhotoLibrary
from pipeline.cli import EXPECTED_ERRORS, exit_status
from pipeline.defaults import Defaults, command_defaults, in_project
from pipeline.errors import ConfigError
from pipeline.retrieval.likelihood import QueryError
from pipeline.retrieval.ranking import SearchError
from pipeline.web.guards import LimitBody, ModelQueue, RequireToken, SecurityHeaders, read_body
from pipeline.web.uploads import MAX_BODY, decode_photo, open_photo, photo_part

STATIC = Path(__file__).resolve().parents[1] / "web" / "static"  # the page: index.html, app.js, style.css
TOKEN_ENV = "CAPTION_WEB_TOKEN"
MAX_QUEUE = 32  # requests waiting for the model; each holds at most one upload (MAX_BODY) in memory
CONNECTIONS = 64  # open connections and tasks beyond the queue (photos, the page); uvicorn answers 503 past them
NO_MODEL = "No trained model yet ({checkpoint} not found): run `dvc repro` first, then restart the page."
EMPTY = ("There are no photos to search yet: index a folder with `caption-search index PHOTOS_DIR` "
         "and start the page with --index PHOTOS_DIR/.caption-index.")


class Service:
    """The loaded captioner and photo library; the model serves one request at a time."""

    def __init__(self, checkpoint: Path | None, index: Path | None, device: str = "auto",
                 defaults: Defaults | None = None) -> None:
        self.lock = threading.Lock()
        self.captioner: Captioner | None = None
        self.library: PhotoLibrary | None = None
        self.message = ""
        defaults = defaults or command_defaults()
        if checkpoint is None or not Path(checkpoint).is_file():
            self.message = NO_MODEL.format(checkpoint=checkpoint or "scst.checkpoint")
            return
        try:
            self.captioner = Captioner(checkpoint, device, beam_size=defaults.decoding.beam_size,
                                       length_penalty=defaults.decoding.length_penalty,
                                       no_repeat_ngram=defaults.decoding.no_repeat_ngram,
                                       allow_unk=defaults.decoding.allow_unk)
        except EXPECTED_ERRORS as error:
            self.message = f"The model cannot be loaded: {error}"
            return
        try:
            self.library = self._library(index, defaults)
        except EXPECTED_ERRORS as error:
            self.message = f"Search is off: {error}"

    def _library(self, index: Path | None, defaults: Defaults) -> PhotoLibrary:
        """The photo index, or inside a project the dataset's own images."""
        assert self.captioner is not None
        if index is not None:
            return self.captioner.open_index(index, defaults.ranking)
        if not in_project():
            raise ConfigError("no --index given and no params.yaml in this folder")
        from pipeline.retrieval.dataset_gallery import dataset_gallery

        captioner = self.captioner
        gallery = dataset_gallery(captioner.model, captioner.vocabulary, captioner.checkpoint, captioner.encoder_info,
                                  captioner.device)
        return PhotoLibrary(captioner, gallery, defaults.ranking)

    @property
    def notice(self) -> str | None:
        """What a person must know about the model's captions (an untrained encoder), or None."""
        return self.captioner.notice if self.captioner else None

    def status(self) -> dict:
        return {"ready": self.captioner is not None, "message": self.message,
                "photos": len(self.library) if self.library else 0, "notice": self.notice}

    def require_model(self) -> Captioner:
        if self.captioner is None:
            raise HTTPException(503, self.message)
        return self.captioner

    def caption(self, image: Image.Image) -> dict:
        """The caption of an opened upload and each word's attention grid (decoded here, one at a time)."""
        captioner = self.require_model()
        with self.lock:  # one decoded photo in memory at a time, however many wait
            decode_photo(image)
            result = captioner.caption([image])[0]
        return {"caption": result.text, "words": result.words, "attention": result.attention.tolist()}

    def search(self, query: str, top: int) -> dict:
        """The best photos for a query, the words the model does not know and, when it knows none, why
        the order means nothing."""
        if self.library is None:
            raise HTTPException(503, self.message or EMPTY)
        if not query.strip():
            raise HTTPException(400, "Type what the photos should show, then search.")
        try:
            with self.lock:
                found = self.library.search(query, top)
        except QueryError:
            raise HTTPException(400, "The query has no words to search for: type some words.") from None
        except SearchError:
            raise HTTPException(404, EMPTY) from None
        return {"results": [{"url": f"/api/photo/{hit.row}", "name": hit.name, "caption": hit.caption,
                             "score": round(hit.score, 3)} for hit in found.hits],
                "unknown": found.unknown, "notice": found.notice}

    def photo(self, row: int) -> Path:
        gallery = self.library.gallery if self.library else None
        if gallery is None or not 0 <= row < len(gallery) or not gallery.paths[row].is_file():
            raise HTTPException(404, "No such photo.")
        return gallery.paths[row]


def create_app(service: Service, token: str | None = None, max_queue: int = MAX_QUEUE) -> FastAPI:
    """The page and its API around a loaded service, behind the guards."""
    app = FastAPI(title="Caption and search photos", docs_url=None, redoc_url=None, openapi_url=None)
    queue = ModelQueue(max_queue)

    @app.get("/api/status")
    def status() -> dict:
        return service.status()

    @app.post("/api/caption")
    async def caption(request: Request) -> dict:
        service.require_model()
        with queue.place():
            upload = photo_part(await read_body(request), request.headers.get("content-type"))
            return await run_in_threadpool(service.caption, open_photo(upload))

    @app.get("/api/search")
    async def search(q: str = "", top: int = 12) -> dict:
        with queue.place():
            return await run_in_threadpool(service.search, q, max(1, min(top, 100)))

    @app.get("/api/photo/{row}")
    def photo(row: int) -> FileResponse:
        return FileResponse(service.photo(row))

    @app.api_route("/", methods=["GET", "HEAD"])
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(LimitBody, limit=MAX_BODY)  # the last added runs first: headers, token, body
    app.add_middleware(RequireToken, token=token)
    app.add_middleware(SecurityHeaders)
    return app


def exposure(host: str, token: str | None) -> str | None:
    """The one-line warning for a page bound to anything but loopback, or None."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        loopback = False
    if loopback:
        return None
    who = "anyone who can reach this machine can open the page, caption photos and see every indexed photo"
    if token:
        return f"serving on {host}: {who} once they have the access token"
    return f"serving on {host} without an access token: {who}; set {TOKEN_ENV} (or --token) to require one"


def parse_args(argv: Sequence[str] | None, defaults: Defaults) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="caption-web", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="the address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--index", type=Path, help="photo index to search (default in a project: the dataset's images)")
    parser.add_argument("--checkpoint", type=Path, default=defaults.checkpoint, required=defaults.checkpoint is None,
                        help="the model (default in a project: scst.checkpoint, the final model)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV) or None,
                        help=f"require this access token on every API call (default: ${TOKEN_ENV}, which `ps` "
                             "does not show)")
    parser.add_argument("--max-queue", type=int, default=MAX_QUEUE,
                        help=f"requests that may wait for the model; the rest get 503 (default {MAX_QUEUE})")
    args = parser.parse_args(argv)
    if args.max_queue < 0:
        parser.error("--max-queue must be at least 0")
    return args


def serve(argv: Sequence[str] | None = None) -> None:
    """Load the model, say what a person must know, and serve the page until interrupted."""
    defaults = command_defaults()
    args = parse_args(argv, defaults)
    service = Service(args.checkpoint, args.index, args.device, defaults)
    for line in (service.message, service.notice, exposure(args.host, args.token)):
        if line:
            print(f"app: {line}", file=sys.stderr)
    print(f"app: open http://{args.host}:{args.port}/{'#token=TOKEN' if args.token else ''}", flush=True)
    uvicorn.run(create_app(service, args.token, args.max_queue), host=args.host, port=args.port, workers=1,
                limit_concurrency=args.max_queue + CONNECTIONS)


def main(argv: Sequence[str] | None = None) -> int:
    """The command: its exit status (an expected error is one line on stderr and status 2)."""
    return exit_status(lambda: serve(argv), "app")


if __name__ == "__main__":
    sys.exit(main())
