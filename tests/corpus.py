"""Bad and odd inputs, made on the fly: image files of every troublesome kind and a captions file
with every troublesome kind of line (Flickr8k token format).

    images = write_images(folder)             # {name: Kind}; MISSING is named by captions, not written
    write_captions(path, GOOD + BAD_IMAGES)   # the captions file, its lines described in CAPTION_LINES

Each odd-but-good image is built from known pixels (`ODD`), so that a decoder that gets it
wrong (a 16-bit image turned white, a palette lost, CMYK inverted) is caught.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 64  # odd-but-good images are SIDE x SIDE: left half one colour, right half another

# odd but good: (name, left RGB, right RGB, tolerance); prepare keeps them, load_image reads them right
ODD = {
    "cmyk.jpg": ((200, 30, 60), (20, 120, 220), 8),  # JPEG is lossy
    "grey16.png": ((100, 100, 100), (200, 200, 200), 0),  # 16-bit values 25700 and 51400
    "rgba.png": ((10, 200, 30), (250, 250, 0), 0),  # alpha 128 and 255; the colour is kept, alpha dropped
    "palette.png": ((255, 0, 0), (0, 0, 255), 0),
    "png_named.jpg": ((1, 2, 3), (250, 128, 7), 0),  # a PNG with a .jpg name
}
TINY = "tiny.png"  # 1 x 1, colour TINY_RGB
TINY_RGB = (5, 6, 7)
PLAIN = ["plain_1.jpg", "plain_2.jpg", "plain_3.jpg"]
GOOD = [*PLAIN, *ODD, TINY]

# unreadable: prepare drops them (unreadable_image), load_image refuses them
UNREADABLE = ["truncated.jpg", "zero_bytes.jpg", "not_an_image.jpg", "bomb.png", "huge.png"]
MISSING = "missing.jpg"  # named by the captions, not on disk
BAD_IMAGES = [*UNREADABLE, MISSING]

CAPTIONS_PER_BAD_IMAGE = 2


def _halves(left: tuple[int, ...], right: tuple[int, ...]) -> np.ndarray:
    array = np.zeros((SIDE, SIDE, len(left)), dtype=np.uint8)
    array[:, : SIDE // 2], array[:, SIDE // 2:] = left, right
    return array


def png_declaring(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares width x height, with a few bytes of data (enough to be opened)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def write_images(folder: Path) -> None:
    """Write every image of the corpus (all but MISSING) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in PLAIN:
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / name, quality=90)
    Image.fromarray(_halves(*ODD["cmyk.jpg"][:2])).convert("CMYK").save(folder / "cmyk.jpg", quality=100)
    grey = np.full((SIDE, SIDE), 25700, dtype=np.uint16)  # 257 * 100 -> 100 in 8 bits
    grey[:, SIDE // 2:] = 51400  # 257 * 200 -> 200
    Image.fromarray(grey).save(folder / "grey16.png")  # mode I;16
    left, right = ODD["rgba.png"][:2]
    Image.fromarray(_halves((*left, 128), (*right, 255)), "RGBA").save(folder / "rgba.png")
    palette = Image.fromarray(_halves((0,), (1,))[:, :, 0], "L").convert("P")
    palette.putpalette([*ODD["palette.png"][0], *ODD["palette.png"][1]] + [0] * 762)
    palette.save(folder / "palette.png")
    Image.fromarray(_halves(*ODD["png_named.jpg"][:2])).save(folder / "png_named.jpg", format="PNG")
    Image.new("RGB", (1, 1), TINY_RGB).save(folder / TINY)

    whole = (folder / PLAIN[0]).read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])  # cut mid-data: no end marker
    (folder / "zero_bytes.jpg").write_bytes(b"")
    (folder / "not_an_image.jpg").write_text("this is a text file with a .jpg name\n")
    side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 2  # over twice PIL's limit: DecompressionBombError
    png_declaring(folder / "bomb.png", side, side)
    png_declaring(folder / "huge.png", 12000, 12000)  # 144 M pixels: over the limit


LONG_CAPTION = " ".join(["word"] * 300)


def caption_lines() -> list[bytes]:
    """The captions file's lines (without line ends, except the CRLF ones), every oddity included.

    Lines, by image:
    - each GOOD image: `#0` and `#1`, ordinary captions;
    - plain_1.jpg: `#2` "A dog outside a caf\\xe9" in Latin-1 bytes, `#3` Windows-1252 curly quotes (2 non-UTF-8
      lines, fixed: read as Windows-1252), `#4` CRLF and `#5` CRLF (2 fixed), `#6` empty, `#7` punctuation only
      (2 empty_caption, dropped);
    - plain_2.jpg: `#2` a 300-word caption (kept; long_caption 1), `#0` again with another caption (kept;
      duplicate_id 1), `#3` twice with the same caption (duplicate_caption 1, dropped);
    - each BAD image: CAPTIONS_PER_BAD_IMAGE captions (dropped: unreadable_image or missing_image).
    """
    lines = []
    for name in GOOD:
        lines += [f"{name}#0\tA picture called {name.split('.')[0]} .".encode(), f"{name}#1\tAnother caption .".encode()]
    lines += [
        "plain_1.jpg#2\tA dog outside a caf\xe9 .".encode("latin-1"),
        "plain_1.jpg#3\tHe said \u201chello\u201d to me".encode("cp1252"),
        b"plain_1.jpg#4\tA line with a Windows line end\r",
        b"plain_1.jpg#5\tAnother Windows line end\r",
        b"plain_1.jpg#6\t",
        b"plain_1.jpg#7\t . , ! ?",
        f"plain_2.jpg#2\t{LONG_CAPTION}".encode(),
        b"plain_2.jpg#0\tThe same id as an earlier line, another caption",
        b"plain_2.jpg#3\tA repeated line",
        b"plain_2.jpg#3\tA repeated line",
    ]
    for name in BAD_IMAGES:
        lines += [f"{name}#{n}\tA caption of a bad image .".encode() for n in range(CAPTIONS_PER_BAD_IMAGE)]
    return lines


def write_captions(path: Path) -> None:
    """Write the captions file of `caption_lines`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(caption_lines()) + b"\n")
