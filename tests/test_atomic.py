"""The one atomic write and the one commit, on local disk and on an object store (moto)."""

from __future__ import annotations

import pickle

import pytest

from s2dask.errors import OutputExistsError, StorageError
from s2dask.io.storage import Location, atomic_write_json, atomic_write_text, commit_dir, staged_file

pytest.importorskip("moto")
pytest.importorskip("s3fs")

from test_storage import BUCKET, s3  # noqa: E402,F401  (the fixture)


def _listing(folder):
    return sorted(p.name for p in folder.rglob("*"))


def test_local_atomic_write_leaves_no_temporary_and_replaces(tmp_path):
    dst = tmp_path / "rec.json"
    atomic_write_json(dst, {"a": 1})
    atomic_write_json(dst, {"a": 2})
    assert dst.read_text() == '{\n  "a": 2\n}\n'
    assert _listing(tmp_path) == ["rec.json"]


def test_local_failed_write_keeps_the_old_file(tmp_path):
    dst = tmp_path / "map.tif"
    dst.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with staged_file(dst) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert dst.read_bytes() == b"old" and _listing(tmp_path) == ["map.tif"]
    with pytest.raises(StorageError, match="cannot write .*missing"):
        atomic_write_text(tmp_path / "missing" / "x.json", "{}")


def test_local_commit_replaces_only_on_overwrite(tmp_path):
    final, partial = tmp_path / "out", tmp_path / ".out.partial"
    final.mkdir()
    (final / "old.txt").write_text("old")
    partial.mkdir()
    (partial / "new.txt").write_text("new")
    with pytest.raises(OutputExistsError, match="already there"):
        commit_dir(partial, final, overwrite=False, appeared="already there")
    assert (final / "old.txt").exists() and partial.exists()
    commit_dir(partial, final, overwrite=True, appeared="already there")
    assert _listing(tmp_path) == ["new.txt", "out"]  # old output removed after, partial gone


def test_location_pickles_with_its_options(s3):  # noqa: F811  (the fixture)
    loc = Location(f"s3://{BUCKET}/out").join("scene", "job.json")
    assert loc.remote and loc.url == f"s3://{BUCKET}/out/scene/job.json"
    assert loc.options["client_kwargs"]["endpoint_url"] == s3
    back = pickle.loads(pickle.dumps(loc))
    assert back == loc and back.options == loc.options
    assert not Location("relative/dir").remote and Location("relative/dir").options is None


def test_remote_atomic_write_and_commit(s3):  # noqa: F811  (the fixture)
    out = Location(f"s3://{BUCKET}/out")
    partial, final = out.join(".scene.partial"), out.join("scene")
    atomic_write_json(partial.join("job.json"), {"v": 1})
    atomic_write_text(final.join("old.txt"), "old")
    assert [p.name for p in partial.list("*.json")] == ["job.json"]
    commit_dir(partial, final, overwrite=True, appeared="exists")
    assert final.join("job.json").read_text() == '{\n  "v": 1\n}\n'
    assert not final.join("old.txt").exists() and not partial.exists()
    assert [p.name for p in out.list()] == ["scene"]  # the old output went after the new arrived
