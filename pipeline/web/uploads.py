"""An uploaded photo: the multipart part that holds it, then the checks before any pixel is decoded.

    data = photo_part(body, content_type)    # the `photo` field of a multipart/form-data body
    image = open_photo(data)                 # a PIL image, header read: format and size checked
    decode_photo(image)                      # every byte decoded: a truncated file fails here

Only the formats the page names are opened (FORMATS: Pillow never tries EPS, which it would hand to
Ghostscript, nor PDF, SVG or any other plugin); a photo over MAX_PIXELS is refused from its header,
before its pixels are decoded. Each refusal is an HTTPException with a message for the page.
"""
from __future__ import annotations

import io
import warnings

from fastapi import HTTPException
from PIL import Image
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from pipeline.encoder.images import IMAGE_ERRORS

FIELD = "photo"
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP or TIFF"
MAX_BYTES = 20 * 2**20  # a photo file
MAX_PIXELS = 40_000_000
MULTIPART_SLACK = 64 * 2**10  # the form's boundaries and part headers around the photo
MAX_BODY = MAX_BYTES + MULTIPART_SLACK


def photo_part(body: bytes, content_type: str | None) -> bytes:
    """The bytes of the form's `photo` field; 400 when the body is not such a form."""
    kind, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise HTTPException(400, f"Send the photo as multipart/form-data, in a field named '{FIELD}'.")
    parts: list[tuple[dict[bytes, bytes], bytearray]] = []
    header = [bytearray(), bytearray()]  # the name and value of the part header being read

    def header_end() -> None:
        parts[-1][0][bytes(header[0]).lower()] = bytes(header[1])
        header[0].clear()
        header[1].clear()

    parser = MultipartParser(boundary, {
        "on_part_begin": lambda: parts.append(({}, bytearray())),
        "on_part_data": lambda data, start, end: parts[-1][1].extend(data[start:end]),
        "on_header_field": lambda data, start, end: header[0].extend(data[start:end]),
        "on_header_value": lambda data, start, end: header[1].extend(data[start:end]),
        "on_header_end": header_end,
    })
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError:
        raise HTTPException(400, "The upload is not a well-formed multipart form: send the photo again.") from None
    for headers, data in parts:
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        if disposition.get(b"name") == FIELD.encode():
            return bytes(data)
    raise HTTPException(400, f"The form has no '{FIELD}' field: choose a photo.")


def open_photo(data: bytes) -> Image.Image:
    """The photo's header read by Pillow (no pixels decoded yet): 4xx when it is empty, too large, or not
    one of the FORMATS."""
    if not data:
        raise HTTPException(400, "The file is empty: choose a photo.")
    if len(data) > MAX_BYTES:
        raise HTTPException(413, f"The file is larger than {MAX_BYTES // 2**20} MB: choose a smaller photo.")
    too_many = (f"The photo has too many pixels; the limit is {MAX_PIXELS // 1_000_000} megapixels: "
                "choose a smaller photo.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise HTTPException(413, too_many) from None
    except IMAGE_ERRORS:
        raise HTTPException(415, f"That file is not an image the page reads: choose a {FORMAT_NAMES} photo.") from None
    if image.width * image.height > MAX_PIXELS:
        raise HTTPException(413, f"The photo has {image.width * image.height / 1e6:.0f} megapixels; the limit is "
                                 f"{MAX_PIXELS // 1_000_000}: choose a smaller photo.")
    return image


def decode_photo(image: Image.Image) -> None:
    """Decode every byte of an opened photo; 400 when the file is cut off or its data is damaged."""
    try:
        image.load()  # Pillow's default (ImageFile.LOAD_TRUNCATED_IMAGES false): a cut-off file raises
    except IMAGE_ERRORS as error:
        what = "cut off (truncated)" if "truncated" in str(error) else "damaged"
        raise HTTPException(400, f"That photo is {what}: try another photo.") from None
