"""Integrity checks of raster files, from headers only: truncated files are refused at open.

GeoTIFF: the end of the last block (offsets and sizes from the TIFF tags) must lie within
the file; beyond :data:`MAX_BLOCK_CHECKS` blocks a sample is checked. JPEG 2000: the box
structure is walked and the codestream must end with its EOC marker. Runs on the client.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Iterable

from ..errors import SceneError
from ..io.storage import stat

__all__ = ["MAX_BLOCK_CHECKS", "check_complete"]

#: reading every block offset of a GeoTIFF costs ~0.5 us per block; beyond this many, sample
MAX_BLOCK_CHECKS = 200_000


def check_complete(src: Any, path: Path) -> None:
    """Refuse a file whose pixel data is cut short, from headers only."""
    size = stat(path).size
    if src.driver == "GTiff":
        bh, bw = src.block_shapes[0]
        nby, nbx = -(-src.height // bh), -(-src.width // bw)
        planar = str(getattr(src.interleaving, "name", src.interleaving)).lower() == "band"
        band_ids = range(1, src.count + 1) if planar else (1,)
        blocks: Iterable[tuple[int, int]]
        if nby * nbx * len(band_ids) <= MAX_BLOCK_CHECKS:
            blocks = [(i, j) for i in range(nby) for j in range(nbx)]
        else:  # the last block of each band, usually the last in the file, plus a sample
            stride = max(1, (nby * nbx * len(band_ids)) // MAX_BLOCK_CHECKS + 1)
            blocks = [(k // nbx, k % nbx) for k in range(0, nby * nbx, stride)] + [(nby - 1, nbx - 1)]
        end = 0
        for b in band_ids:
            for i, j in blocks:
                off = src.get_tag_item(f"BLOCK_OFFSET_{j}_{i}", "TIFF", bidx=b)
                n = src.get_tag_item(f"BLOCK_SIZE_{j}_{i}", "TIFF", bidx=b)
                if off and n:
                    end = max(end, int(off) + int(n))
        if end > size:
            raise SceneError(
                f"{path} is truncated: its pixel data ends at byte {end} but the file has {size} bytes; "
                "copy or download it again"
            )
    elif src.driver.startswith("JP2") and not str(path).startswith("/vsi"):
        _check_jp2(path, size)


def _check_jp2(path: Path, size: int) -> None:
    """Walk the JP2 boxes: each must fit in the file and the codestream must end with EOC."""
    problem = None
    with open(path, "rb") as fh:
        if fh.read(12) != b"\x00\x00\x00\x0cjP  \r\n\x87\n":
            return  # a raw codestream (.j2k): nothing to walk
        pos = 0
        while pos < size:
            fh.seek(pos)
            head = fh.read(8)
            if len(head) < 8:
                problem = f"a box header at byte {pos} is cut short"
                break
            length, kind = struct.unpack(">I4s", head)
            header = 8
            if length == 1:
                ext = fh.read(8)
                if len(ext) < 8:
                    problem = f"a box header at byte {pos} is cut short"
                    break
                length, header = struct.unpack(">Q", ext)[0], 16
            elif length == 0:
                length = size - pos
            if length < header or pos + length > size:
                problem = (
                    f"box {kind.decode('latin-1')!r} at byte {pos} needs {length} bytes, {size - pos} remain"
                )
                break
            if kind == b"jp2c":
                fh.seek(pos + length - 2)
                if fh.read(2) != b"\xff\xd9":
                    problem = "the codestream does not end with its EOC marker"
                    break
            pos += length
    if problem:
        raise SceneError(f"{path} is truncated or corrupt: {problem}; copy or download it again")
