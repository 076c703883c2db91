"""Images inside conversations: where a record names them, and the checks each one passes.

A conversation's images are listed in `Conversation.images`, in order, and each one's place in the
text is the placeholder `<image>` (LLaMA-Factory's and ShareGPT's convention; OpenAI typed parts are
converted to it). An image is a local file path (relative paths are relative to the data file's
folder) or a `data:image/...;base64,` URL. Web URLs are refused: nothing is downloaded.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from pathlib import Path
from typing import Any

from sftune.data.errors import DataError

PLACEHOLDER = "<image>"
# Limits that only broken or mistaken data reaches; a processor resizes anything below them.
MAX_PIXELS = 64_000_000  # Pillow's own decompression-bomb warning is at 89M
MAX_BYTES = 50_000_000
MIN_SIDE = 2  # a 1-pixel image is a placeholder someone forgot to replace


def from_part(part: dict, field: str) -> str:
    """The image a typed content part names: OpenAI `{"type": "image_url", "image_url": {"url": ...}}`,
    or `{"type": "image", "image" | "url" | "path": ...}` (transformers' and LLaMA-Factory v1's)."""
    value = part.get("image_url", part.get("image", part.get("url", part.get("path"))))
    if isinstance(value, dict):
        value = value.get("url", value.get("path"))
    if not isinstance(value, str) or not value.strip():
        raise DataError("wrong_type", field, "is an image part without a path or URL",
                        'write {"type": "image_url", "image_url": {"url": "images/cat.png"}} '
                        "(a local path, or a data:image/png;base64,... URL)")
    return value


def from_column(value: Any, field: str = "images") -> list[str]:
    """A record's `images` (or `image`) column: one path or a list of paths."""
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v.strip() for v in value):
        return list(value)
    raise DataError("wrong_type", field, f"is {type(value).__name__} {str(value)[:60]!r}",
                    f"give {field} as a list of image paths, e.g. [\"images/cat.png\"]")


def resolve(ref: str, folder: Path | None, field: str) -> str:
    """A path relative to the data file's folder made absolute; data URLs kept; web URLs refused."""
    if ref.startswith("data:"):
        return ref
    if ref.startswith(("http://", "https://")):
        raise DataError("missing_image", field, f"is a web URL ({ref[:60]})",
                        "sftune reads local images only: download the images and write their paths")
    path = Path(ref[len("file://"):] if ref.startswith("file://") else ref).expanduser()
    if not path.is_absolute() and folder is not None:
        path = folder / path
    return str(path)


def _bytes(ref: str, field: str) -> bytes:
    if ref.startswith("data:"):
        head, _, body = ref.partition(",")
        if not head.startswith("data:image/") or ";base64" not in head:
            raise DataError("bad_image", field, f"is a data URL that is not a base64 image ({head[:40]})",
                            "write data:image/png;base64,<the image's base64>")
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise DataError("bad_image", field, "is a data URL whose base64 does not decode",
                            "encode the image file again with base64") from None
    path = Path(ref)
    fix = "fix the path (relative paths are relative to the data file's folder) or drop the record"
    if not path.is_file():
        what = "is not a regular file (a folder, a device, a pipe or a link loop)" if os.path.lexists(path) else \
            "does not exist"
        raise DataError("missing_image", field, f"names {ref}, which {what}", fix)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise DataError("image_too_large", field, f"is {size:,} bytes, over the limit of {MAX_BYTES:,}",
                        "shrink the image (a processor resizes it to well under a megapixel anyway)")
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_BYTES + 1)  # a file under /proc says size 0 and may hold more
    except OSError as err:
        raise DataError("missing_image", field, f"names {ref}, which cannot be read ({err.strerror})", fix) from None


def load(ref: str, field: str = "image") -> Any:
    """The image as an RGB PIL image, decoded fully; DataError when it is missing, broken or too big."""
    from PIL import Image, UnidentifiedImageError

    data = _bytes(ref, field)
    if len(data) > MAX_BYTES:
        raise DataError("image_too_large", field, f"is {len(data):,} bytes, over the limit of {MAX_BYTES:,}",
                        "shrink the image")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height <= MAX_PIXELS:
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        where = "" if ref.startswith("data:") else f" ({ref})"
        why = "not an image format Pillow knows" if isinstance(err, UnidentifiedImageError) else str(err)
        raise DataError("bad_image", field, f"does not decode as an image{where}: {why}",
                        "replace the file with a valid PNG / JPEG / WebP, or drop the record") from None
    if width * height > MAX_PIXELS:
        raise DataError("image_too_large", field, f"is {width}x{height} pixels, over {MAX_PIXELS:,}",
                        "shrink the image")
    if min(width, height) < MIN_SIDE:
        raise DataError("bad_image", field, f"is {width}x{height} pixels", f"use an image at least {MIN_SIDE} pixels a side")
    return image.convert("RGB")


def check(conversation: Any, folder: Path | None, relative_to: Path | None = None) -> None:
    """Resolve every image of a conversation against `folder`, in place, and decode each one.

    With `relative_to` (the folder of a file the conversation is written to), a path that was relative
    becomes relative to that folder, so it names the same image from there; absolute paths and data
    URLs stay as they are.
    """
    given = conversation.images
    conversation.images = [resolve(ref, folder, f"images[{i}]") for i, ref in enumerate(given)]
    for i, ref in enumerate(conversation.images):
        load(ref, f"images[{i}]")
    if relative_to is not None:
        conversation.images = [
            os.path.relpath(os.path.abspath(ref), relative_to) if _relative(original) else ref
            for original, ref in zip(given, conversation.images)]


def _relative(ref: str) -> bool:
    """Whether an image reference is a path relative to the data file's folder."""
    if ref.startswith(("data:", "file://")):
        return False
    return not Path(ref).expanduser().is_absolute()


def count_placeholders(conversation: Any) -> int:
    return sum(m.content.count(PLACEHOLDER) for m in conversation.messages)
