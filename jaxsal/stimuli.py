"""Stimulus files (``.stim.csv``) and image loading.

This module is pure Python + Pillow + numpy (pandas for the table): it does not import JAX, so
the command line can validate a stimulus file before anything heavy is loaded.

A ``.stim.csv`` file (DNNBrain's format, SPEC §2) looks like::

    type=image
    path=/data/stimuli
    title=saliency demo
    data=stimID,label
    n03223299_27176.JPEG,539
    ImageNet/n01518878_5028.JPEG,9

Image path of a row = ``join(path, stimID)``: an absolute ``stimID`` overrides ``path``, and a
``stimID`` may contain sub-folders. A *relative* ``path`` is looked up first under the folder
that holds the ``.stim.csv`` file, then under the current working directory; see
:func:`read_stim_csv` for the exact rule.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import os
import pathlib
import stat
import threading
from typing import TYPE_CHECKING, Any, BinaryIO, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps

from jaxsal.errors import UsageError
from jaxsal.models.spec import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

if TYPE_CHECKING:  # pandas is imported lazily: it is only needed once a file is parsed.
    import pandas

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_LISTED_PROBLEMS",
    "StimulusSet",
    "as_pil",
    "decoded_image",
    "load_image",
    "read_stim_csv",
    "to_network_input",
]


# At most this many problems are listed in one error message; the rest are counted.
MAX_LISTED_PROBLEMS = 20
# A stimulus list larger than this is refused unread (a million rows take about 40 MB).
MAX_STIM_FILE_BYTES = 64 * 2**20
# Images with more pixels are refused before any is decoded; the environment variable changes
# it. The default is Pillow's own hard limit (twice its DecompressionBombWarning threshold),
# so no image Pillow would decode is refused.
MAX_IMAGE_PIXELS_ENV = "JAXSAL_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970

_SUFFIX = ".stim.csv"
_STR_COLUMNS = ("stimID", "condition")
_INT_COLUMNS = ("label",)
_VIDEO_TYPES = ("video", "video_clip")


@dataclasses.dataclass(frozen=True)
class StimulusSet:
    """A parsed and validated ``.stim.csv`` file.

    Attributes:
      stim_file: the file as given (not resolved).
      header: the header lines as ``key -> value`` strings (``type``, ``path``, ``title``, ...),
        in file order; keys and values are not stripped.
      ids: the ``stimID`` column, in row order (duplicates allowed).
      paths: the absolute image path of each row, in row order.
      columns: every ``data=`` column's values, in file order.
      table (property): the columns as a pandas DataFrame: ``stimID`` and ``condition`` as str,
        ``label`` as int64, any other column as float64. Built on first use: the command never
        needs it, and importing pandas would cost it ~0.3 s of start-up.
    """

    stim_file: pathlib.Path
    header: dict[str, str]
    ids: tuple[str, ...]
    paths: tuple[pathlib.Path, ...]
    columns: dict[str, tuple]

    def __len__(self) -> int:
        return len(self.ids)

    @functools.cached_property
    def table(self) -> "pandas.DataFrame":
        import pandas as pd

        table = pd.DataFrame({c: list(v) for c, v in self.columns.items()},
                             columns=list(self.columns))
        for column in self.columns:  # str columns keep pandas' default string dtype
            if column in _INT_COLUMNS:
                table[column] = table[column].astype(np.int64)
            elif column not in _STR_COLUMNS:
                table[column] = table[column].astype(np.float64)
        return table


class _Problems:
    """Collects (line number, message) pairs and raises them as one UsageError."""

    def __init__(self, name: str):
        self.name = name
        self.items: list[tuple[int, str]] = []

    def add(self, lineno: int, message: str) -> None:
        """Records a problem; ``lineno`` 0 means 'the file as a whole'."""
        self.items.append((lineno, message))

    def raise_if_any(self, note: str | None = None) -> None:
        if not self.items:
            return
        items = sorted(self.items, key=lambda item: item[0])  # stable: keeps discovery order
        texts = [f"line {n}: {m}" if n else m for n, m in items]
        if len(texts) == 1 and note is None:
            raise UsageError(f"{self.name}: {texts[0]}")
        shown = texts[:MAX_LISTED_PROBLEMS]
        lines = [f"{self.name}: {len(texts)} problem{'s' if len(texts) != 1 else ''}:"]
        lines += [f"  {t}" for t in shown]
        if len(texts) > len(shown):
            lines.append(f"  ... and {len(texts) - len(shown)} more")
        if note:
            lines.append(f"  ({note})")
        raise UsageError("\n".join(lines))


def _read_lines(path: pathlib.Path, problems: _Problems) -> list[tuple[int, str]] | None:
    """Returns the non-blank lines as (1-based line number, text); None if unreadable."""
    try:
        with open_regular(path) as f:
            too_large = os.fstat(f.fileno()).st_size > MAX_STIM_FILE_BYTES
            raw = b"" if too_large else f.read(MAX_STIM_FILE_BYTES + 1)  # + 1: still growing?
        if too_large or len(raw) > MAX_STIM_FILE_BYTES:
            problems.add(0, f"larger than {MAX_STIM_FILE_BYTES // 2**20} MB, the most a "
                            "stimulus list may be")
            return None
        # utf-8-sig drops a leading BOM, which would otherwise glue itself to the first header
        # key; '\n', '\r\n' and '\r' all end a line.
        text = raw.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
    except FileNotFoundError:
        problems.add(0, "file not found")
        return None
    except NotRegularFile as e:
        problems.add(0, f"is {e.kind}, not a .stim.csv file (a stimulus list must be a regular file)")
        return None
    except UnicodeDecodeError as e:
        problems.add(0, f"not a UTF-8 text file ({e.reason} at byte {e.start})")
        return None
    except OSError as e:
        problems.add(0, f"cannot read the file: {e.strerror or e}")
        return None
    return [(i, line) for i, line in enumerate(text.split("\n"), start=1) if line.strip()]


class NotRegularFile(OSError):
    """A path names a folder, a FIFO, a device or a socket, where a file's bytes were expected."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _check_regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise NotRegularFile(next((k for test, k in _KINDS if test(mode)), "not a regular file"))


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """`path` opened for binary reading if it is a regular file (symlinks followed); else
    `NotRegularFile` saying what it is. Why: opening a FIFO blocks until a writer comes, and a
    device such as /dev/zero never ends; neither is opened (stat first), and the open itself
    does not block (O_NONBLOCK, then checked with fstat: no race with a swapped file)."""
    _check_regular(os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        _check_regular(os.fstat(fd).st_mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _parse_header(lines, problems: _Problems):
    """Splits the lines into header dict, the data= line and the data rows."""
    header: dict[str, str] = {}
    header_lines: dict[str, int] = {}
    for index, (lineno, line) in enumerate(lines):
        if line.startswith("data="):
            return header, header_lines, (lineno, line), lines[index + 1:]
        key, sep, value = line.partition("=")
        if not sep:
            problems.add(lineno, f"header line has no '=' (expected key=value): {line!r}")
            continue
        header[key] = value
        header_lines[key] = lineno
    problems.add(0, "no 'data=' line (expected e.g. 'data=stimID,label' after the header)")
    return header, header_lines, None, []


def _check_header(header: dict[str, str], header_lines: dict[str, int],
                  problems: _Problems) -> None:
    for key in ("type", "path"):
        if key in header:
            continue
        near = [k for k in header if k.strip() == key]
        hint = f" (found {near[0]!r}: spaces around keys are not stripped)" if near else ""
        problems.add(0, f"no '{key}=' header line{hint}")
    if "type" in header:
        stim_type = header["type"]
        if stim_type in _VIDEO_TYPES:
            problems.add(header_lines["type"],
                         f"type={stim_type} is not supported by dnn_saliency "
                         "(images only: use type=image)")
        elif stim_type != "image":
            problems.add(header_lines["type"], f"type must be 'image', got {stim_type!r}")


def _parse_rows(data_line: tuple[int, str], rows, problems: _Problems):
    """Parses the data= line and the rows after it.

    Returns (columns, typed values of the good rows, [(line number, stimID)] of every row with
    the right number of fields); the last list lets images be checked even when some rows have
    other problems.
    """
    data_lineno, text = data_line
    columns = text[len("data="):].split(",")
    if "stimID" not in columns:
        problems.add(data_lineno, f"the data= line has no 'stimID' column: {text!r}")
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        problems.add(data_lineno, f"duplicate column name(s) in the data= line: "
                                  f"{', '.join(map(repr, duplicated))}")
    if not rows:
        problems.add(data_lineno, "no stimulus rows after the data= line")

    values: dict[str, list[Any]] = {c: [] for c in columns}
    image_rows: list[tuple[int, str]] = []
    for lineno, line in rows:
        fields = line.split(",")
        if len(fields) != len(columns):
            problems.add(lineno, f"{len(fields)} value{'s' if len(fields) != 1 else ''} but "
                                 f"the data= line (line {data_lineno}) names {len(columns)} "
                                 f"columns: {line!r}")
            continue
        if "stimID" not in columns:
            continue  # a misnamed stimID column would be read as float: one error is enough
        row: dict[str, Any] = {}
        for column, field in zip(columns, fields):
            if column in _STR_COLUMNS:
                row[column] = field
                continue
            kind, convert = ("an integer", int) if column in _INT_COLUMNS else ("a number", float)
            try:
                row[column] = convert(field)
            except ValueError:
                problems.add(lineno, f"column {column!r} must be {kind}, got {field!r}")
        if "stimID" in row:
            image_rows.append((lineno, row["stimID"]))
        if len(row) == len(columns):
            for column, value in row.items():
                values[column].append(value)
    return columns, values, image_rows


def _resolve_paths(stim_file: pathlib.Path, path_value: str, ids: Sequence[str]):
    """Applies the path rule of :func:`read_stim_csv`; returns (paths, note or None)."""
    csv_dir = pathlib.Path(os.path.abspath(stim_file)).parent
    base_path = pathlib.Path(path_value)
    if base_path.is_absolute():
        return [base_path / s for s in ids], None  # an absolute stimID wins in the join
    relative = [s for s in ids if not os.path.isabs(s)]
    cwd = pathlib.Path.cwd()
    chosen = csv_dir
    if relative and csv_dir != cwd:
        if not all((csv_dir / base_path / s).exists() for s in relative) and all(
            (cwd / base_path / s).exists() for s in relative
        ):
            chosen = cwd
    note = None
    if csv_dir != cwd:
        note = (f"the relative path={path_value} is looked up under the .stim.csv's folder "
                f"{csv_dir}, then under the current directory {cwd}; the first that holds every "
                "image is used")
    return [chosen / base_path / s for s in ids], note


def _image_problem(path: pathlib.Path) -> str | None:
    """None if :func:`load_image` can load the file; otherwise what is wrong with it."""
    try:
        with decoded_image(path, draft=True):  # the later real load's code path, every byte
            return None
    except UsageError as e:
        return str(e)


def read_stim_csv(path: str | os.PathLike, check_images: bool = True) -> StimulusSet:
    """Reads and validates a ``.stim.csv`` file (SPEC §2, with the fixes of §13 rows 5 and 6).

    Format: header lines ``key=value`` (split on the first ``=``; ``type`` and ``path`` are
    required and ``type`` must be ``image``), then a line ``data=<col>,<col>,...`` that names
    the columns and must include ``stimID``, then one comma-separated row per stimulus (no
    quoting, no stripping). ``\\n``, ``\\r\\n`` and ``\\r`` line ends are accepted;
    empty and whitespace-only lines are ignored. Column types: ``stimID`` and ``condition``
    str, ``label`` int, any other column float. Stimulus order is row order; duplicate
    stimIDs are allowed.

    Image paths: ``join(path, stimID)``; an absolute ``stimID`` overrides ``path``, and a
    ``stimID`` may contain sub-folders. A relative ``path`` is resolved against the folder of
    the ``.stim.csv`` file if every image is found there, otherwise against the current working
    directory if every image is found there; if neither holds them all, the missing ones are
    reported relative to the ``.stim.csv``'s folder. The returned paths are absolute.

    Everything is checked before returning, and every problem found (bad header, ragged or
    mistyped rows with their line numbers, and, when ``check_images`` is true, every missing or
    undecodable image) is reported at once in one :class:`~jaxsal.errors.UsageError`.

    Args:
      path: the ``.stim.csv`` file; its name must end in ``.stim.csv``.
      check_images: open and decode every image (in a small thread pool; JPEGs at 1/8 scale,
        which still decodes every byte) and report the missing or broken ones. Path resolution
        uses file existence either way.

    Returns:
      The parsed :class:`StimulusSet`.

    Raises:
      UsageError: listing every problem found, one per line with its line number.
    """
    stim_file = pathlib.Path(path)
    problems = _Problems(os.fspath(path))
    if not stim_file.name.endswith(_SUFFIX):
        problems.add(0, f"the stimulus file name must end in '{_SUFFIX}'")
    lines = _read_lines(stim_file, problems)
    if lines is None:
        problems.raise_if_any()
    if not lines:
        problems.add(0, "the file is empty")
        problems.raise_if_any()

    header, header_lines, data_line, rows = _parse_header(lines, problems)
    _check_header(header, header_lines, problems)
    if data_line is None:
        problems.raise_if_any()
    columns, values, image_rows = _parse_rows(data_line, rows, problems)

    note = None  # says where relative paths were looked up; shown only if an image is missing
    row_paths: list[pathlib.Path] = []
    if "path" in header and image_rows:
        row_ids = [stim_id for _, stim_id in image_rows]
        row_paths, where = _resolve_paths(stim_file, header["path"], row_ids)
        if check_images:
            unique = list(dict.fromkeys(row_paths))
            workers = min(8, len(unique))
            with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
                found = dict(zip(unique, pool.map(_image_problem, unique)))
            missing = False
            for (lineno, _), image_path in zip(image_rows, row_paths):
                problem = found[image_path]
                if problem is not None:
                    problems.add(lineno, problem)
                    missing = missing or problem.startswith("image not found")
            note = where if missing else None
    problems.raise_if_any(note)
    # No problem recorded: every row had the right fields and types, so row_paths covers all.
    ids = tuple(values["stimID"])
    paths = row_paths

    return StimulusSet(stim_file=stim_file, header=dict(header), ids=ids, paths=tuple(paths),
                       columns={c: tuple(values[c]) for c in columns})


# --------------------------------------------------------------------------------------------
# Images


def _to_rgb(image: Image.Image) -> Image.Image:
    """Converts any Pillow mode to 8-bit RGB; alpha is dropped (not composited)."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):
        # 16-bit gray: keep the top 8 bits (Pillow's own conversion clips at 255).
        array = np.asarray(image).astype(np.uint16) >> 8
        return Image.fromarray(array.astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        return image.convert("RGBA").convert("RGB")
    if image.mode == "LA":
        return image.getchannel("L").convert("RGB")
    return image.convert("RGB")


def load_image(path_or_pil: str | os.PathLike | Image.Image) -> Image.Image:
    """Loads an image as 8-bit RGB, with its EXIF orientation applied first (SPEC §13 rows 10-11).

    Any Pillow mode is accepted: L, LA, P, RGBA, CMYK, 1, I;16 (top 8 bits kept), ...; alpha is
    dropped. For a multi-frame file, the first frame is used. The returned image is a new,
    fully loaded image with no open file handle.

    Raises:
      UsageError: the file is missing, not a regular file, larger than the pixel limit
        (:func:`max_image_pixels`) or not a decodable image.
    """
    if isinstance(path_or_pil, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(path_or_pil))
    with decoded_image(pathlib.Path(path_or_pil)) as image:
        return image


def max_image_pixels() -> int:
    """The most pixels an image may have: ``$JAXSAL_MAX_IMAGE_PIXELS``, else
    `DEFAULT_MAX_IMAGE_PIXELS` (about 179 million, e.g. 13000 x 13000)."""
    value = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_IMAGE_PIXELS
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"{MAX_IMAGE_PIXELS_ENV} must be a whole number of pixels (at least 1), "
                         f"got {value!r}")
    return int(value)


def use_own_pixel_limit() -> None:
    """For a process that reads its images through jaxsal only (the command): turn Pillow's
    decompression-bomb check off, so that jaxsal's limit (`max_image_pixels`), checked on every
    image before it is decoded, is the only one and its one-line message replaces Pillow's
    warning. The library never calls it: Pillow's setting is the whole process's."""
    Image.MAX_IMAGE_PIXELS = None


class _PixelBudget:
    """The pixels of the images being decoded (and handled, until released) at once: at most
    the pixel limit together, so a thread waits while larger images are in flight; an image
    alone never waits. Why: the validation's and the run's decoding threads (up to 8) would
    otherwise hold up to 8 full-size images at once (4.4 GB for four 12000x12000 PNGs); with
    the budget, memory stays near that of the largest image, whatever the thread count."""

    def __init__(self):
        self._changed = threading.Condition()
        self._held = 0

    @contextlib.contextmanager
    def hold(self, pixels: int, limit: int) -> Iterator[None]:
        with self._changed:
            while self._held and self._held + pixels > limit:
                self._changed.wait()
            self._held += pixels
        try:
            yield
        finally:
            with self._changed:
                self._held -= pixels
                self._changed.notify_all()


_DECODING = _PixelBudget()


@contextlib.contextmanager
def decoded_image(path: pathlib.Path, draft: bool = False) -> Iterator[Image.Image]:
    """The image at `path` as :func:`load_image` gives it, while its pixels count against the
    decoding budget (`_PixelBudget`): a caller that reduces it (the pipeline's decoder) holds
    its share until done. Its size is checked against `max_image_pixels` before any pixel is
    decoded. ``draft``: decode a JPEG at 1/8 scale (libjpeg's DCT scaling), which still reads
    and entropy-decodes every byte, so a truncated or corrupt file fails just as in a full
    decode, for a third of the time -- how every stimulus is checked up front."""
    limit = max_image_pixels()
    try:
        f = open_regular(path)
    except FileNotFoundError:
        raise UsageError(f"image not found: {path}") from None
    except NotRegularFile as e:
        raise UsageError(f"not a regular file ({e.kind}): {path}") from None
    except OSError as e:
        raise UsageError(f"cannot read image {path}: {e.strerror or e}") from None
    with f:
        with _decode_errors(path):
            opened = Image.open(f)
        width, height = opened.size
        if width * height > limit:
            raise UsageError(
                f"image {path} is {width}x{height} pixels ({width * height:,}), more than the "
                f"limit of {limit:,} pixels: reduce it, or raise the limit with "
                f"{MAX_IMAGE_PIXELS_ENV}=<pixels>")
        if draft and opened.format == "JPEG":
            with _decode_errors(path):
                opened.draft(None, (max(1, width // 8), max(1, height // 8)))
        with _DECODING.hold(opened.size[0] * opened.size[1], limit):
            with _decode_errors(path):
                opened.load()
                ImageOps.exif_transpose(opened, in_place=True)  # in place: no second copy
                image = _to_rgb(opened)
            opened = None  # if converted, the original's pixels go now
            yield image


@contextlib.contextmanager
def _decode_errors(path: pathlib.Path) -> Iterator[None]:
    """Whatever Pillow raises for a broken file, as one UsageError naming it."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
        raise UsageError(f"cannot decode image {path}: {str(e) or type(e).__name__}") from None


_ARRAY_SHAPES = "(H, W, 3), (H, W) or channel-first (3, H, W)"


def as_pil(image: Any) -> Image.Image:
    """Returns an RGB PIL image from a path, a PIL image or a uint8 array.

    Accepted: a ``str``/``os.PathLike`` path (loaded with :func:`load_image`), a PIL image
    (EXIF orientation applied, converted to RGB), or a uint8 array shaped ``(H, W, 3)``,
    ``(H, W)`` (gray) or channel-first ``(3, H, W)``. A ``(3, H, 3)`` array is read as
    ``(H, W, 3)``.

    Raises:
      UsageError: any other input, with what was expected.
    """
    if isinstance(image, (str, os.PathLike, Image.Image)):
        return load_image(image)
    if isinstance(image, np.ndarray) or (hasattr(image, "__array__")
                                         and not isinstance(image, (list, tuple))):
        array = np.asarray(image)
        if array.dtype != np.uint8:
            raise UsageError(
                f"image array must be uint8 (0..255) shaped {_ARRAY_SHAPES}; got dtype "
                f"{array.dtype} with shape {array.shape}")
        if array.ndim == 2:
            return Image.fromarray(np.ascontiguousarray(array), mode="L").convert("RGB")
        if array.ndim == 3 and array.shape[-1] == 3:
            return Image.fromarray(np.ascontiguousarray(array), mode="RGB")
        if array.ndim == 3 and array.shape[0] == 3:
            return Image.fromarray(np.ascontiguousarray(array.transpose(1, 2, 0)), mode="RGB")
        raise UsageError(f"image array must be shaped {_ARRAY_SHAPES}; got shape {array.shape}")
    raise UsageError(f"expected an image path, a PIL image or a uint8 array shaped "
                     f"{_ARRAY_SHAPES}; got {type(image).__name__}")


def preprocess(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """`to_network_input` with a network's own preprocessing (`NetSpec.preprocessing`)."""
    p = preprocessing
    return to_network_input(image, p.size, p.mean, p.std, p.scale)


def to_network_input(image: Image.Image, size: int = 224,
                     mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD,
                     scale: float = 1.0) -> np.ndarray:
    """Preprocesses one image for the network (SPEC §3), as torchvision does.

    Steps: PIL ``resize((size, size), BILINEAR)`` (direct resize, aspect not kept, no crop;
    antialiased when downscaling), ``/255`` in float32, ``* scale``, then ``(x - mean) / std``
    per colour channel. ``scale=255`` with VggFace's mean and ``std=(1, 1, 1)`` gives the
    VggFace preprocessing of SPEC §8; ``scale=1`` (the default) is exact, not an extra rounding.

    Args:
      image: a PIL image; converted to RGB first if it is not RGB.
      size: output side in pixels (224; 299 for InceptionV3).
      mean, std: per-channel normalisation, RGB order.
      scale: factor applied after the division by 255.

    Returns:
      float32 array (size, size, 3), channels last (HWC).
    """
    if image.mode != "RGB":
        image = _to_rgb(image)
    resized = image.resize((size, size), Image.BILINEAR)
    x = np.asarray(resized, dtype=np.float32) / np.float32(255)
    if scale != 1.0:
        x = x * np.float32(scale)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)
