"""s2dask.scene.mask: SCL and user masks to codes, alignment with the scene reader, options, grid check."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

from affine import Affine  # noqa: E402

from s2dask.errors import ParameterError, SceneError  # noqa: E402
from s2dask.scene import mask as m  # noqa: E402

CRS = "EPSG:32617"
X0, Y0 = 600000.0, 5000000.0


def write(path, data, res, *, crs=CRS, x0=X0, y0=Y0, count=1):
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=count,
                       dtype=data.dtype, crs=crs, transform=Affine(res, 0, x0, 0, -res, y0), nodata=0,
                       tiled=True, blockxsize=16, blockysize=16) as dst:
        dst.write(data[:count])
    return path


# ------------------------------------------------------------------------- codes


def test_scl_classes_to_codes_default_and_custom():
    scl = np.arange(12, dtype=np.uint8).reshape(3, 4)
    codes = m.scl_to_mask(scl)
    assert codes.dtype == np.uint8 and codes.shape == (3, 4)
    expected = {0: m.NODATA, 1: m.DEFECTIVE, 3: m.SHADOW, 8: m.CLOUD, 9: m.CLOUD, 10: m.CIRRUS}
    assert codes.ravel().tolist() == [expected.get(v, m.VALID) for v in range(12)]
    # snow and water only when asked for; 2, 4, 5, 7 share "scl_other"
    codes = m.scl_to_mask(scl, classes=(6, 11, 2, 7))
    assert codes.ravel().tolist() == [m.SCL_OTHER if v in (2, 7) else m.WATER if v == 6 else
                                      m.SNOW if v == 11 else 0 for v in range(12)]
    assert m.scl_to_mask(np.array([[200, 12]], dtype=np.uint16)).tolist() == [[0, 0]]
    with pytest.raises(SceneError, match="must be integer"):
        m.scl_to_mask(np.zeros((2, 2), dtype="float32"))


def test_code_table_is_complete():
    assert [c.code for c in m.MASK_CODES] == list(range(len(m.MASK_CODES)))
    assert sorted(m.SCL_TO_CODE) == list(range(12)) == sorted(m.SCL_CLASSES)
    assert m.DEFAULT_MASK_CLASSES == (0, 1, 3, 8, 9, 10)
    assert m.MASK_CODE_NAMES[m.CLOUD] == "cloud" and m.MASK_CODE_NAMES[m.USER] == "user"


def test_user_mask_and_combine_precedence():
    user = m.user_mask_to_codes(np.array([[0, 1, 255], [0, 0, 7]], dtype=np.uint8))
    assert user.tolist() == [[0, m.USER, m.USER], [0, 0, m.USER]]
    assert m.user_mask_to_codes(np.array([np.nan, 0.0, 0.5])).tolist() == [m.USER, 0, m.USER]
    nodata = np.array([[True, False, False], [False, False, False]])
    scl = np.array([[m.CLOUD, m.SHADOW, 0], [0, m.CIRRUS, 0]], dtype=np.uint8)
    # nodata beats everything, the SCL reason beats the user mask, the user mask fills the rest
    assert m.combine(nodata, scl, user).tolist() == [[m.NODATA, m.SHADOW, m.USER], [0, m.CIRRUS, m.USER]]
    assert m.combine(nodata).tolist() == [[m.NODATA, 0, 0], [0, 0, 0]]
    assert m.combine(nodata, None, user).tolist() == [[m.NODATA, m.USER, m.USER], [0, 0, m.USER]]


def test_statistics_attrs_and_legend():
    codes = np.array([[0, 0, 1, 2], [2, 3, 6, 0]], dtype=np.uint8)
    counts = m.count_codes(codes)
    counts = m.count_codes(np.full((2, 2), m.CIRRUS, dtype=np.uint8), counts)
    stats = m.mask_statistics(counts)
    assert stats == {"pixels": 12, "valid_pixels": 3, "nodata_pixels": 1, "masked_pixels": 8,
                     "masked_by_reason": {"cloud": 2, "shadow": 1, "cirrus": 4, "defective": 0, "user": 1,
                                          "snow": 0, "water": 0, "scl_other": 0}}
    spec = m.parse_mask_option("scl")
    attrs = m.mask_attrs(spec)
    assert attrs["flag_values"] == list(range(11))  # 10: outside_aoi
    assert attrs["flag_meanings"].split() == [c.name for c in m.MASK_CODES]
    assert attrs["mask_settings"] == {"mode": "scl", "scl_classes": [0, 1, 3, 8, 9, 10], "scl_class_names": {
        "0": "no data", "1": "saturated or defective", "3": "cloud shadows", "8": "cloud medium probability",
        "9": "cloud high probability", "10": "thin cirrus"}}
    entry = m.legend_entry(spec)
    assert entry["name"] == "masked (cloud, cloud shadow, thin cirrus, saturated or defective)"
    assert entry["colour"] == m.MASKED_COLOUR
    assert m.legend_entry(m.parse_mask_option("none")) is None


# ------------------------------------------------------------------------- options


@pytest.mark.parametrize("text, classes", [
    (None, (0, 1, 3, 8, 9, 10)),
    ("0,1,3,8,9,10", (0, 1, 3, 8, 9, 10)),
    (" 10, 9,3 ,3", (3, 9, 10)),
    ("11", (11,)),
    ([8, 9], (8, 9)),
])
def test_parse_mask_classes(text, classes):
    assert m.parse_mask_classes(text) == classes


@pytest.mark.parametrize("text", ["12", "-1", "3,x", "1.5", [True], ","])
def test_parse_mask_classes_refused(text):
    with pytest.raises(ParameterError) as err:
        m.parse_mask_classes(text)
    msg = str(err.value)
    assert "\n" not in msg and ("0..11" in msg or "empty" in msg)


def test_parse_mask_option_and_resolve(tmp_path):
    assert m.parse_mask_option(None) == m.MaskSpec("auto", None, m.DEFAULT_MASK_CLASSES)
    assert m.parse_mask_option("SCL", classes="8,9") == m.MaskSpec("scl", None, (8, 9))
    assert m.parse_mask_option("none") == m.MaskSpec("none", None, m.DEFAULT_MASK_CLASSES)
    path = write(tmp_path / "clouds.tif", np.zeros((4, 4), "uint8"), 10)
    assert m.parse_mask_option(path) == m.MaskSpec("file", str(path), ())
    assert m.parse_mask_option(path).to_json() == {"mode": "file", "path": str(path)}
    with pytest.raises(ParameterError, match=r"--mask .*nope.tif: no such file; give scl, none, or"):
        m.parse_mask_option(tmp_path / "nope.tif")
    with pytest.raises(ParameterError, match="--mask-classes applies to the SCL mask"):
        m.parse_mask_option("none", classes="8")
    with pytest.raises(ParameterError, match="--mask-classes applies to the SCL mask, not to --mask"):
        m.parse_mask_option(path, classes="8")

    auto = m.parse_mask_option(None, classes="9")
    assert auto.resolve(scene="S", has_scl=True) == m.MaskSpec("scl", None, (9,))
    assert auto.resolve(scene="S", has_scl=False).mode == "none"
    with pytest.raises(SceneError) as err:
        m.parse_mask_option("scl").resolve(scene="T17TNH_20230801T160000_L1C", has_scl=False)
    assert str(err.value).startswith("--mask scl: scene T17TNH_20230801T160000_L1C has no Scene Classification")
    assert "--mask none" in str(err.value) and "--mask FILE" in str(err.value)


# ------------------------------------------------------------------------- alignment


def test_scl_windows_align_with_the_scene_reader(tmp_path):
    """The 20 m SCL replicated by mask.py equals a 20 m band replicated by open_scene, on odd windows."""
    from s2dask.scene import open_scene

    h, w = 121, 97  # odd sizes: the 20 m raster is ceil(h / 2) x ceil(w / 2)
    rng = np.random.default_rng(5)
    scl = rng.integers(0, 12, size=(-(-h // 2), -(-w // 2))).astype("uint16")
    folder = tmp_path / "scene"
    folder.mkdir()
    write(folder / "B02.tif", rng.integers(1, 9000, size=(h, w)).astype("uint16"), 10)
    write(folder / "B05.tif", scl, 20)  # the SCL values carried as a 20 m band
    write(tmp_path / "SCL.tif", scl.astype("uint8"), 20)
    scene = open_scene(folder, chunks=(37, 29))
    replicated = scene.sel(band="B05").values  # open_scene's nearest-neighbour replication
    assert replicated.shape == (h, w)

    reader = m.MaskReader(str(tmp_path / "SCL.tif"), kind="scl", factor=2, classes=tuple(range(12)))
    reader = pickle.loads(pickle.dumps(reader))
    assert hash(reader) == hash(m.MaskReader(str(tmp_path / "SCL.tif"), kind="scl", factor=2,
                                             classes=tuple(range(12))))
    with rasterio.open(tmp_path / "SCL.tif") as src:
        for y0, x0, hh, ww in [(0, 0, 37, 29), (37, 29, 37, 29), (1, 3, 5, 7), (111, 87, 10, 10),
                               (120, 96, 1, 1), (0, 0, h, w), (74, 58, 47, 39)]:
            sy, sx, sh, sw = m.source_window(y0, x0, hh, ww, 2, src.height, src.width)
            raw = src.read(1, window=rasterio.windows.Window(sx, sy, sw, sh))
            window = m.replicate(raw, 2, y0, x0, hh, ww)
            np.testing.assert_array_equal(window, replicated[y0:y0 + hh, x0:x0 + ww])
            np.testing.assert_array_equal(reader(y0, x0, hh, ww),
                                          m.scl_to_mask(replicated[y0:y0 + hh, x0:x0 + ww], range(12)))


def test_source_window_and_replicate_3d():
    assert m.source_window(3, 5, 4, 4, 2, 10, 10) == (1, 2, 3, 3)
    assert m.source_window(18, 18, 2, 2, 2, 10, 10) == (9, 9, 1, 1)
    block = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    out = m.replicate(block, 2, 1, 1, 4, 4)
    assert out.shape == (2, 4, 4)
    assert out[1].tolist() == [[9, 10, 10, 11], [12, 13, 13, 14], [12, 13, 13, 14], [15, 16, 16, 17]]


def test_scl_factor():
    assert m.scl_factor(20, 10, scene="S") == 2
    assert m.scl_factor(60, 60, scene="S") == 1
    with pytest.raises(SceneError, match=r"scene S: its SCL is 20 m but the scene grid is 60 m; use the SCL"):
        m.scl_factor(20, 60, scene="S")
    with pytest.raises(SceneError):
        m.scl_factor(20, 15, scene="S")


# ------------------------------------------------------------------------- user mask raster


def test_user_mask_grid_check_and_reader(tmp_path):
    grid = dict(crs=CRS, transform=Affine(10, 0, X0, 0, -10, Y0), shape=(20, 30))
    values = np.zeros((20, 30), "uint8")
    values[5:9, 10:20] = 1
    good = write(tmp_path / "good.tif", values, 10)
    m.check_mask_grid(good, **grid, scene="S")
    codes = m.MaskReader(str(good), kind="file")(4, 9, 6, 12)
    assert codes.tolist() == (np.where(values[4:10, 9:21] != 0, m.USER, 0)).tolist()

    cases = {
        "shifted": write(tmp_path / "shifted.tif", values, 10, x0=X0 + 10),
        "crs": write(tmp_path / "crs.tif", values, 10, crs="EPSG:32618"),
        "shape": write(tmp_path / "shape.tif", values[:19], 10),
        "res": write(tmp_path / "res.tif", values[:10, :15], 20),
    }
    for name, path in cases.items():
        with pytest.raises(SceneError) as err:
            m.check_mask_grid(path, **grid, scene="S")
        msg = str(err.value)
        assert msg.startswith(f"mask raster {path} is not on the grid of S (") and "\n" not in msg
        assert "vs EPSG:32617, 20x30 px of 10 m at (600000, 5000000)" in msg
        assert "gdalwarp -t_srs EPSG:32617 -te 600000 4999800 600300 5000000 -ts 30 20 -r near" in msg
    two = write(tmp_path / "two.tif", np.stack([values, values]), 10, count=2)
    with pytest.raises(SceneError, match="has 2 bands: give a single-band raster"):
        m.check_mask_grid(two, **grid)
    (tmp_path / "junk.tif").write_bytes(b"not a raster")
    with pytest.raises(SceneError, match="cannot read mask raster"):
        m.check_mask_grid(tmp_path / "junk.tif", **grid)
    from s2dask.errors import StorageError

    with pytest.raises(StorageError, match="reading mask window y=0:4 x=0:4 of"):
        m.MaskReader(str(tmp_path / "junk.tif"), kind="file")(0, 0, 4, 4)
