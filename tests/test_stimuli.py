"""Tests for jaxsal.stimuli: .stim.csv parsing (SPEC §2, §13 rows 5-6) and image loading (§3)."""

import io
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxsal import stimuli
from jaxsal.errors import UsageError
from jaxsal.stimuli import as_pil, load_image, read_stim_csv, to_network_input

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def _write_image(path: pathlib.Path, size=(8, 6), color=(200, 30, 60)) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _write_csv(folder: pathlib.Path, text: str, name="s.stim.csv", newline="\n"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(text.replace("\n", newline).encode())
    return path


def _problem_lines(excinfo) -> list[str]:
    return str(excinfo.value).splitlines()


# --------------------------------------------------------------------------------------------
# Parsing


def _spec_example(tmp_path):
    images = tmp_path / "stimuli"
    _write_image(images / "n03223299_27176.JPEG")
    _write_image(images / "ImageNet" / "n01518878_5028.JPEG")
    text = (f"type=image\npath={images}\ntitle=saliency demo\ndata=stimID,label\n"
            "n03223299_27176.JPEG,539\nImageNet/n01518878_5028.JPEG,9\n")
    return images, text


def test_spec_example_golden(tmp_path):
    images, text = _spec_example(tmp_path)
    stim = read_stim_csv(_write_csv(tmp_path, text, name="demo.stim.csv"))
    assert stim.header == {"type": "image", "path": str(images), "title": "saliency demo"}
    assert stim.ids == ("n03223299_27176.JPEG", "ImageNet/n01518878_5028.JPEG")
    assert stim.paths == (images / "n03223299_27176.JPEG",
                          images / "ImageNet" / "n01518878_5028.JPEG")
    assert list(stim.table.columns) == ["stimID", "label"]
    assert stim.table["label"].dtype == np.int64
    assert stim.table["label"].tolist() == [539, 9]
    assert stim.table["stimID"].tolist() == list(stim.ids)
    assert len(stim) == 2
    assert stim.stim_file == tmp_path / "demo.stim.csv"


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_other_line_endings(tmp_path, newline):
    images, text = _spec_example(tmp_path)
    unix = read_stim_csv(_write_csv(tmp_path / "a", text))
    other = read_stim_csv(_write_csv(tmp_path / "b", text, newline=newline))
    assert other.header == unix.header
    assert other.ids == unix.ids
    assert other.paths == unix.paths
    assert other.table.equals(unix.table)


def test_header_split_on_first_equals_and_not_stripped(tmp_path):
    _write_image(tmp_path / "a.png")
    path = _write_csv(tmp_path, "type=image\npath=.\ntitle=x=y=z\nnote= spaced \n"
                                "data=stimID\na.png\n")
    stim = read_stim_csv(path)
    assert stim.header["title"] == "x=y=z"
    assert stim.header["note"] == " spaced "


def test_whitespace_only_lines_are_blank(tmp_path):
    _write_image(tmp_path / "a.png")
    _write_image(tmp_path / "b.png")
    path = _write_csv(tmp_path, "\n  \ntype=image\n\t\npath=.\n \ndata=stimID,label\n   \n"
                                "a.png,1\n\n \t \nb.png,2\n  \n")
    stim = read_stim_csv(path)
    assert stim.ids == ("a.png", "b.png")
    assert stim.table["label"].tolist() == [1, 2]


def test_typed_columns(tmp_path):
    _write_image(tmp_path / "a.png")
    _write_image(tmp_path / "b.png")
    path = _write_csv(tmp_path, "type=image\npath=.\n"
                                "data=stimID,label,condition,onset,duration,RT\n"
                                "a.png,3,01,0.5,2,1e-3\nb.png,-1,face,1,2.25,nan\n")
    table = read_stim_csv(path).table
    assert list(table.columns) == ["stimID", "label", "condition", "onset", "duration", "RT"]
    assert table["label"].dtype == np.int64
    assert table["label"].tolist() == [3, -1]
    assert table["condition"].tolist() == ["01", "face"]  # str: leading zero kept
    assert all(isinstance(v, str) for v in table["condition"])
    assert all(isinstance(v, str) for v in table["stimID"])
    for column in ("onset", "duration", "RT"):
        assert table[column].dtype == np.float64
    assert table["onset"].tolist() == [0.5, 1.0]
    assert table["duration"].tolist() == [2.0, 2.25]
    assert table["RT"][0] == 1e-3 and np.isnan(table["RT"][1])


def test_no_stripping_of_row_values(tmp_path):
    _write_image(tmp_path / "a.png")
    path = _write_csv(tmp_path, "type=image\npath=.\ndata=stimID,condition\na.png, x \n")
    assert read_stim_csv(path).table["condition"].tolist() == [" x "]


def test_duplicate_stim_ids_allowed(tmp_path):
    _write_image(tmp_path / "a.png")
    path = _write_csv(tmp_path, "type=image\npath=.\ndata=stimID\na.png\na.png\na.png\n")
    stim = read_stim_csv(path)
    assert stim.ids == ("a.png",) * 3
    assert len(set(stim.paths)) == 1


def test_utf8_bom_is_ignored(tmp_path):
    _write_image(tmp_path / "a.png")
    path = tmp_path / "bom.stim.csv"
    path.write_bytes(b"\xef\xbb\xbftype=image\npath=.\ndata=stimID\na.png\n")
    assert read_stim_csv(path).header["type"] == "image"


# --------------------------------------------------------------------------------------------
# Path resolution


def test_relative_path_resolves_against_csv_folder(tmp_path, monkeypatch):
    csv_dir = tmp_path / "project"
    _write_image(csv_dir / "imgs" / "a.png")
    path = _write_csv(csv_dir, "type=image\npath=imgs\ndata=stimID\na.png\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    stim = read_stim_csv(os.path.relpath(path, elsewhere))
    assert stim.paths == (csv_dir / "imgs" / "a.png",)
    assert stim.paths[0].is_absolute()


def test_relative_path_falls_back_to_cwd(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    _write_image(cwd / "imgs" / "a.png")
    _write_image(cwd / "imgs" / "sub" / "b.png")
    path = _write_csv(tmp_path / "csvs", "type=image\npath=imgs\ndata=stimID\na.png\nsub/b.png\n")
    monkeypatch.chdir(cwd)
    stim = read_stim_csv(path)
    assert stim.paths == (cwd / "imgs" / "a.png", cwd / "imgs" / "sub" / "b.png")


def test_csv_folder_wins_when_both_hold_all_images(tmp_path, monkeypatch):
    csv_dir, cwd = tmp_path / "c", tmp_path / "w"
    _write_image(csv_dir / "a.png")
    _write_image(cwd / "a.png")
    path = _write_csv(csv_dir, "type=image\npath=.\ndata=stimID\na.png\n")
    monkeypatch.chdir(cwd)
    assert read_stim_csv(path).paths == (csv_dir / "a.png",)


def test_split_images_are_reported_relative_to_csv_folder(tmp_path, monkeypatch):
    csv_dir, cwd = tmp_path / "c", tmp_path / "w"
    _write_image(csv_dir / "a.png")  # a only next to the csv, b only under the cwd
    _write_image(cwd / "b.png")
    path = _write_csv(csv_dir, "type=image\npath=.\ndata=stimID\na.png\nb.png\n")
    monkeypatch.chdir(cwd)
    with pytest.raises(UsageError) as excinfo:
        read_stim_csv(path)
    message = str(excinfo.value)
    assert f"line 5: image not found: {csv_dir / 'b.png'}" in message
    assert "a.png" not in message.split("(")[0]  # a exists relative to the csv folder
    assert "current directory" in message  # the note says where relative paths are looked up


def test_absolute_stim_id_overrides_path(tmp_path):
    absolute = _write_image(tmp_path / "elsewhere" / "abs.png")
    _write_image(tmp_path / "imgs" / "rel.png")
    path = _write_csv(tmp_path, f"type=image\npath=imgs\ndata=stimID\n{absolute}\nrel.png\n")
    stim = read_stim_csv(path)
    assert stim.paths == (absolute, tmp_path / "imgs" / "rel.png")


def test_absolute_path_with_subfolder_stim_id(tmp_path, monkeypatch):
    _write_image(tmp_path / "root" / "ImageNet" / "x.JPEG")
    path = _write_csv(tmp_path / "c", f"type=image\npath={tmp_path / 'root'}\n"
                                      "data=stimID\nImageNet/x.JPEG\n")
    monkeypatch.chdir(tmp_path)
    assert read_stim_csv(path).paths == (tmp_path / "root" / "ImageNet" / "x.JPEG",)


def test_check_images_false_skips_decoding(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    path = _write_csv(tmp_path, "type=image\npath=.\ndata=stimID\nbroken.jpg\nmissing.png\n")
    stim = read_stim_csv(path, check_images=False)
    assert stim.paths == (tmp_path / "broken.jpg", tmp_path / "missing.png")
    with pytest.raises(UsageError):
        read_stim_csv(path)


# --------------------------------------------------------------------------------------------
# Errors (SPEC §13 row 6): one UsageError, line numbers, everything at once


def _error(tmp_path, text, name="s.stim.csv") -> str:
    _write_image(tmp_path / "a.png")
    path = _write_csv(tmp_path, text, name=name)
    with pytest.raises(UsageError) as excinfo:
        read_stim_csv(path)
    return str(excinfo.value)


def test_error_suffix(tmp_path):
    message = _error(tmp_path, "type=image\npath=.\ndata=stimID\na.png\n", name="s.csv")
    assert message == f"{tmp_path / 's.csv'}: the stimulus file name must end in '.stim.csv'"


def test_error_missing_file(tmp_path):
    with pytest.raises(UsageError, match=r"nope\.stim\.csv: file not found"):
        read_stim_csv(tmp_path / "nope.stim.csv")


def test_error_directory_and_binary(tmp_path):
    (tmp_path / "d.stim.csv").mkdir()
    with pytest.raises(UsageError, match="is a directory"):
        read_stim_csv(tmp_path / "d.stim.csv")
    (tmp_path / "b.stim.csv").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(UsageError, match="not a UTF-8 text file"):
        read_stim_csv(tmp_path / "b.stim.csv")


def test_error_empty_file(tmp_path):
    assert _error(tmp_path, " \n\n").endswith("s.stim.csv: the file is empty")


def test_error_no_data_line(tmp_path):
    message = _error(tmp_path, "type=image\npath=.\nstimID\n")
    assert "no 'data=' line" in message
    assert "line 3: header line has no '='" in message


def test_error_no_stim_id_column(tmp_path):
    message = _error(tmp_path, "type=image\npath=.\ndata=stim,label\na.png,1\n")
    assert message.endswith("line 3: the data= line has no 'stimID' column: 'data=stim,label'")


def test_error_missing_type_and_path(tmp_path):
    message = _error(tmp_path, "title=t\ndata=stimID\na.png\n")
    lines = message.splitlines()
    assert lines[0].endswith("s.stim.csv: 2 problems:")
    assert lines[1:] == ["  no 'type=' header line", "  no 'path=' header line"]


def test_error_key_with_spaces_gets_a_hint(tmp_path):
    message = _error(tmp_path, "type =image\npath=.\ndata=stimID\na.png\n")
    assert "no 'type=' header line (found 'type '" in message


@pytest.mark.parametrize("stim_type", ["video", "video_clip"])
def test_error_video_type(tmp_path, stim_type):
    message = _error(tmp_path, f"path=.\ntype={stim_type}\ndata=stimID\na.png\n")
    assert message.endswith(f"line 2: type={stim_type} is not supported by dnn_saliency "
                            "(images only: use type=image)")


def test_error_bad_type(tmp_path):
    message = _error(tmp_path, "type=Image\npath=.\ndata=stimID\na.png\n")
    assert message.endswith("line 1: type must be 'image', got 'Image'")


def test_error_ragged_rows(tmp_path):
    message = _error(tmp_path, "type=image\npath=.\ndata=stimID,label\na.png,1\na.png\n"
                               "a.png,1,2\na.png,3\n")
    lines = message.splitlines()
    assert lines[0].endswith(": 2 problems:")
    assert lines[1] == ("  line 5: 1 value but the data= line (line 3) names 2 columns: "
                        "'a.png'")
    assert lines[2] == ("  line 6: 3 values but the data= line (line 3) names 2 columns: "
                        "'a.png,1,2'")


def test_error_zero_rows(tmp_path):
    message = _error(tmp_path, "type=image\npath=.\ndata=stimID,label\n  \n")
    assert message.endswith("line 3: no stimulus rows after the data= line")


def test_error_non_numeric_columns(tmp_path):
    message = _error(tmp_path, "type=image\npath=.\ndata=stimID,label,onset\n"
                               "a.png,1,0.5\na.png,x,0.5\na.png,2,soon\na.png,2.0,1\n")
    lines = message.splitlines()
    assert lines[0].endswith(": 3 problems:")
    assert lines[1:] == [
        "  line 5: column 'label' must be an integer, got 'x'",
        "  line 6: column 'onset' must be a number, got 'soon'",
        "  line 7: column 'label' must be an integer, got '2.0'",
    ]


def test_error_duplicate_column(tmp_path):
    message = _error(tmp_path, "type=image\npath=.\ndata=stimID,onset,onset\na.png,1,2\n")
    assert "line 3: duplicate column name(s) in the data= line: 'onset'" in message


def test_all_problems_reported_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # csv folder == cwd: no note about where paths were looked up
    _write_image(tmp_path / "ok.png")
    (tmp_path / "garbage.jpg").write_bytes(b"this is not a jpeg")
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (tmp_path / "folder.png").mkdir()
    path = _write_csv(tmp_path, "type=video\npath=.\ndata=stimID,onset\n"
                                "ok.png,1\nmissing1.png,2\ngarbage.jpg,3\nok.png,oops\n"
                                "truncated.jpg,4\nok.png\nsub/missing2.png,5\nfolder.png,6\n")
    with pytest.raises(UsageError) as excinfo:
        read_stim_csv(path)
    lines = _problem_lines(excinfo)
    assert lines[0] == f"{path}: 8 problems:"
    body = lines[1:]
    assert body[0] == "  line 1: type=video is not supported by dnn_saliency (images only: " \
                      "use type=image)"
    assert body[1] == f"  line 5: image not found: {tmp_path / 'missing1.png'}"
    assert body[2].startswith(f"  line 6: cannot decode image {tmp_path / 'garbage.jpg'}: ")
    assert body[3] == "  line 7: column 'onset' must be a number, got 'oops'"
    assert body[4].startswith(f"  line 8: cannot decode image {tmp_path / 'truncated.jpg'}: ")
    assert body[5].startswith("  line 9: 1 value but the data= line (line 3) names 2 columns")
    assert body[6] == f"  line 10: image not found: {tmp_path / 'sub' / 'missing2.png'}"
    assert body[7] == f"  line 11: not a regular file (a directory): {tmp_path / 'folder.png'}"
    assert len(body) == 8
    assert not any(str(tmp_path / "ok.png") in line for line in body)  # good images: silent


def test_problem_list_is_capped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = "".join(f"m{i}.png\n" for i in range(25))
    path = _write_csv(tmp_path, "type=image\npath=.\ndata=stimID\n" + rows)
    with pytest.raises(UsageError) as excinfo:
        read_stim_csv(path)
    lines = _problem_lines(excinfo)
    assert lines[0] == f"{path}: 25 problems:"
    assert len(lines) == 1 + stimuli.MAX_LISTED_PROBLEMS + 1
    assert lines[1] == f"  line 4: image not found: {tmp_path / 'm0.png'}"
    assert lines[20] == f"  line 23: image not found: {tmp_path / 'm19.png'}"
    assert lines[-1] == "  ... and 5 more"


# --------------------------------------------------------------------------------------------
# Images


def _mode_image(mode):
    if mode == "L":
        return Image.new("L", (4, 3), 100), (100, 100, 100)
    if mode == "LA":
        return Image.new("LA", (4, 3), (90, 0)), (90, 90, 90)
    if mode == "1":
        return Image.new("1", (4, 3), 1), (255, 255, 255)
    if mode == "P":
        image = Image.new("P", (4, 3), 1)
        image.putpalette([0, 0, 0, 10, 20, 30] + [0] * (256 * 3 - 6))
        return image, (10, 20, 30)
    if mode == "P+transparency":
        image = Image.new("P", (4, 3), 1)
        image.putpalette([0, 0, 0, 10, 20, 30] + [0] * (256 * 3 - 6))
        image.info["transparency"] = 1
        return image, (10, 20, 30)
    if mode == "RGBA":
        return Image.new("RGBA", (4, 3), (10, 20, 30, 0)), (10, 20, 30)  # alpha dropped
    if mode == "CMYK":
        image = Image.new("CMYK", (4, 3), (0, 255, 255, 0))
        return image, (255, 0, 0)
    if mode == "I;16":
        return Image.fromarray(np.full((3, 4), 0x1234, np.uint16)), (0x12, 0x12, 0x12)
    raise AssertionError(mode)


@pytest.mark.parametrize("mode", ["L", "LA", "1", "P", "P+transparency", "RGBA", "CMYK",
                                  "I;16"])
@pytest.mark.parametrize("source", ["pil", "file"])
def test_modes_convert_to_rgb(tmp_path, mode, source):
    image, expected = _mode_image(mode)
    if source == "file":
        fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
        path = tmp_path / f"img.{fmt.lower()}"
        image.save(path, format=fmt)
        loaded = load_image(path)
    else:
        loaded = load_image(image)
    assert loaded.mode == "RGB"
    assert loaded.size == (4, 3)
    pixels = np.asarray(loaded)
    assert (pixels == np.array(expected, np.uint8)).all(), (mode, pixels[0, 0])


def _exif_oriented_jpeg(path, orientation):
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20] = (255, 0, 0)  # left half red
    array[:, 20:] = (0, 0, 255)  # right half blue
    image = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def test_exif_orientation_is_applied(tmp_path):
    path = _exif_oriented_jpeg(tmp_path / "rot.jpg", 6)
    with Image.open(path) as raw:
        assert raw.size == (40, 20)  # stored landscape
    loaded = load_image(path)
    assert loaded.size == (20, 40)  # orientation 6: shown rotated 90° clockwise, portrait
    pixels = np.asarray(loaded).astype(int)
    # The stored left (red) half is now the top, the right (blue) half the bottom.
    assert np.abs(pixels[2:18, 2:18] - (255, 0, 0)).max() < 40
    assert np.abs(pixels[22:38, 2:18] - (0, 0, 255)).max() < 40
    assert np.asarray(as_pil(str(path))).shape == (40, 20, 3)
    with Image.open(path) as opened:
        assert load_image(opened).size == (20, 40)


def test_load_image_errors(tmp_path):
    with pytest.raises(UsageError, match="image not found"):
        load_image(tmp_path / "none.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(UsageError, match="cannot decode image"):
        load_image(tmp_path / "bad.png")


def test_load_image_has_no_open_handle(tmp_path):
    path = _write_image(tmp_path / "a.png")
    image = load_image(path)
    os.remove(path)  # would fail on Windows with an open handle; here: data already loaded
    assert np.asarray(image).shape == (6, 8, 3)


def _reference_normalise(image, size, mean, std):
    resized = np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.float64)
    return (resized / 255.0 - np.array(mean)) / np.array(std)


@pytest.mark.parametrize("size", [224, 299])
def test_to_network_input_matches_independent_computation(size):
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (90, 130, 3), dtype=np.uint8))
    x = to_network_input(image, size=size)
    assert x.shape == (size, size, 3) and x.dtype == np.float32
    expected = _reference_normalise(image, size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    np.testing.assert_allclose(x, expected, rtol=0, atol=2e-6)
    # Direct resize, not crop: the image's corners end up in the corners.
    assert not np.allclose(x[0, 0], x[-1, -1])


def test_to_network_input_bitwise_as_torchvision():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8))
    resized = image.resize((224, 224), Image.BILINEAR)
    t = torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1).float().div(255)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    expected = ((t - mean) / std).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(to_network_input(image), expected)


def test_to_network_input_vggface_scale_and_gray():
    image = Image.new("L", (50, 40), 128)
    mean = (129.186279296875, 104.76238250732422, 93.59396362304688)
    x = to_network_input(image, mean=mean, std=(1.0, 1.0, 1.0), scale=255.0)
    np.testing.assert_allclose(x[0, 0], 128.0 - np.array(mean), atol=1e-4)


def test_as_pil_arrays():
    rng = np.random.default_rng(3)
    hwc = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(as_pil(hwc)), hwc)
    np.testing.assert_array_equal(np.asarray(as_pil(hwc.transpose(2, 0, 1))), hwc)
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    out = np.asarray(as_pil(gray))
    assert out.shape == (5, 7, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)
    assert as_pil(Image.fromarray(hwc)).mode == "RGB"


@pytest.mark.parametrize("bad, pattern", [
    (np.zeros((5, 7, 3), np.float32), "must be uint8"),
    (np.zeros((5, 7, 4), np.uint8), r"shaped \(H, W, 3\), \(H, W\) or channel-first"),
    (np.zeros((2, 5, 7), np.uint8), r"got shape \(2, 5, 7\)"),
    (np.zeros((1, 5, 7, 3), np.uint8), "got shape"),
    ([[0, 1], [2, 3]], "got list"),
    (42, "got int"),
    (None, "got NoneType"),
])
def test_as_pil_rejects_bad_input(bad, pattern):
    with pytest.raises(UsageError, match=pattern):
        as_pil(bad)


# --------------------------------------------------------------------------------------------
# The bundled examples and the no-JAX promise


def test_bundled_examples(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # path=. must resolve against the csv's folder
    stim = read_stim_csv(EXAMPLES / "examples.stim.csv")
    assert stim.header["type"] == "image" and stim.header["path"] == "."
    assert 6 <= len(stim) <= 8
    assert len(stim) > 6  # two figures: exercises the short last figure
    assert all(p.parent == EXAMPLES for p in stim.paths)
    sizes, modes = [], []
    for p in stim.paths:
        with Image.open(p) as image:
            sizes.append(image.size)
            modes.append(image.mode)
    assert max(max(s) for s in sizes) <= 500
    assert any(w != h for w, h in sizes)
    assert "L" in modes  # a grayscale stimulus exercises the gray stimulus path
    assert sum(p.stat().st_size for p in stim.paths) < 1.5e6
    assert all(0 <= label < 1000 for label in stim.table["label"])
    sources = (EXAMPLES / "SOURCES.md").read_text()
    for stim_id in stim.ids:
        assert stim_id in sources


def test_modules_do_not_import_jax():
    code = ("import sys, jaxsal.stimuli, jaxsal.render; "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', "
            "'flax', 'torch')); print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.fullmatch(r"\[\]\s*", result.stdout)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
def test_up_front_check_decodes_jpegs_at_one_eighth_and_still_finds_truncation(tmp_path, keep):
    from jaxsal import stimuli

    rng = np.random.default_rng(0)
    data = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)).save(data, "JPEG")
    whole = tmp_path / "whole.jpg"
    whole.write_bytes(data.getvalue())
    with stimuli.decoded_image(whole, draft=True) as image:
        assert image.size == (100, 75)  # the cheap check
    with stimuli.decoded_image(whole) as image:
        assert image.size == (800, 600)  # the real load is never drafted
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data.getvalue()[: int(len(data.getvalue()) * keep)])
    assert stimuli._image_problem(whole) is None
    assert stimuli._image_problem(cut).startswith(f"cannot decode image {cut}: ")
