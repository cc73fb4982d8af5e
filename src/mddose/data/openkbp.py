"""Reading and writing patients in the OpenKBP challenge's own layout.

A patient folder ``pt_N/`` holds one sparse CSV per quantity, each as ``.csv``, ``.csv.gz`` or ``.csv.xz``::

    pt_N/
      ct.csv                 ,data / index,value   (value = HU + 1000, see below)
      dose.csv               ,data / index,value   (Gy; absent for test patients)
      possible_dose_mask.csv ,data / index,        (masks: empty data column)
      <ROI>.csv              ,data / index,        (a missing ROI file means "not contoured")
      voxel_dimensions.csv   three floats in mm
      grid_shape.csv         three integers (mddose's own addition, written only for grids other than 128³,
                             e.g. the 64³ phantoms; absent in OpenKBP folders, which are 128³)

``index`` is the flat C-order index into the 128×128×128 grid; voxels not listed are 0.

CT offset: the files store ``HU + 1000``. Measured on the training patients: inside the possible-dose mask
the fat peak sits at ~905 and the muscle peak at ~1045, i.e. -95 HU and +45 HU with an offset of 1000
(-119 and +21 with 1024, which fits neither); air, stored as 0 and so left out of the sparse file, reads as
-1000 HU. :data:`CT_OFFSET` converts in both directions.

Predictions are written in the submission format (``pt_N.csv``: the non-zero voxels of the dose inside the
possible-dose mask), which :func:`read_dose_csv` reads back for evaluation of any method.
"""

from __future__ import annotations

import gzip
import logging
import lzma
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mddose.atomic import atomic_dir, atomic_path
from mddose.data.patient import OPENKBP_SHAPE, Patient, RoiConfig, grid_problem
from mddose.errors import MddoseError

log = logging.getLogger(__name__)

CT_OFFSET = 1000.0  # stored value = HU + CT_OFFSET
SUFFIXES = (".csv", ".csv.gz", ".csv.xz")
HEADER = ",data"


#: A dose with more of its total outside the possible-dose mask than this is on another patient's grid.
OUTSIDE_MASK_LIMIT = 0.5
#: No radiotherapy dose (Gy) is higher: a file above it is not in Gy or is corrupt.
MAX_DOSE_GY = 200.0
#: Below this HU a CT value is neither tissue, air nor a scanner's padding value (-1024 … -3024).
MIN_CT_HU = -3100.0


def link_problem(path: Path) -> str | None:
    """Why ``path``, when it is a link, cannot be followed (it loops, or leads nowhere); None otherwise."""
    if not path.is_symlink():
        return None
    try:
        path.resolve(strict=True)
    except FileNotFoundError:
        return f"is a link to nothing ({os.readlink(path)})"
    except (RuntimeError, OSError):  # RuntimeError: Python < 3.13's "Symlink loop"
        return "is a link that loops"
    return None


def _exists(path: Path) -> bool:
    """Whether the file ``path`` is there; a link that cannot be followed or a folder in its place is an error."""
    if not os.path.lexists(path):
        return False
    problem = link_problem(path) or ("is a folder, not a file" if path.is_dir() else None)
    if problem is not None:
        raise MddoseError(problem, path)
    return True


def find_file(folder: Path, stem: str) -> Path | None:
    """The file ``stem.csv[.gz|.xz]`` in ``folder``, or None; two of them (say .csv and .csv.xz) are an error."""
    found = [folder / f"{stem}{suffix}" for suffix in SUFFIXES if _exists(folder / f"{stem}{suffix}")]
    if len(found) > 1:
        raise MddoseError(f"both {' and '.join(p.name for p in found)}: keep one", folder)
    return found[0] if found else None


def check_on_grid(dose: np.ndarray, possible_dose_mask: np.ndarray, path: Path, what: str = "dose") -> None:
    """Refuse a dose whose total lies mostly outside the possible-dose mask: it is not on this patient's grid."""
    total = float(np.abs(dose).sum())
    outside = float(np.abs(dose[~possible_dose_mask]).sum())
    if total > 0 and outside > OUTSIDE_MASK_LIMIT * total:
        raise MddoseError(f"{outside / total:.0%} of the {what} lies outside the patient's possible-dose mask: it is "
                          "not on this patient's grid", path)


def _read_text(path: Path) -> str:
    try:
        if path.name.endswith(".xz"):
            with lzma.open(path, "rt", encoding="utf-8") as f:
                return f.read()
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return f.read()
        return path.read_text(encoding="utf-8")
    except (lzma.LZMAError, gzip.BadGzipFile, EOFError, OSError, UnicodeDecodeError) as e:
        raise MddoseError(f"cannot read file ({type(e).__name__}: {e})", path) from None


def read_sparse_csv(path: Path, shape: tuple[int, ...] = OPENKBP_SHAPE, mask: bool = False) -> np.ndarray:
    """Read one sparse OpenKBP CSV into a dense array (bool for ``mask=True``, float64 otherwise)."""
    path = Path(path)
    text = _read_text(path).lstrip("\ufeff")
    head = text[:256].splitlines()  # the first line, without splitting the whole file (the fast path needs not)
    if not head or head[0].strip() != HEADER:
        got = head[0].strip()[:40] if head else "an empty file"
        raise MddoseError(f"not an OpenKBP sparse CSV: expected header '{HEADER}', got '{got}'", path)
    size = int(np.prod(shape))
    fast = _parse_fast(text.split("\n", 1)[1] if "\n" in text else "", mask, size)
    if fast is not None:
        out = np.zeros(size, dtype=bool if mask else np.float64)
        idx, values = fast
        _check_unique(idx, path)
        out[idx] = True if mask else values
        return out.reshape(shape)
    # slow path: row by row, to say exactly which row is wrong
    rows = [line for line in text.splitlines()[1:] if line.strip()]
    out = np.zeros(size, dtype=bool if mask else np.float64)
    if not rows:
        return out.reshape(shape)
    idx_s, seps, val_s = zip(*(r.partition(",") for r in rows))
    try:
        idx = np.array(idx_s, dtype=np.int64)
    except ValueError:
        bad = next(i for i, s in enumerate(idx_s) if not re.fullmatch(r"\s*\d+\s*", s))
        raise MddoseError(f"row {bad + 2}: index {idx_s[bad]!r} is not an integer", path) from None
    if idx.min() < 0 or idx.max() >= size:
        bad = int(np.flatnonzero((idx < 0) | (idx >= size))[0])
        grid = "×".join(map(str, shape))
        raise MddoseError(f"row {bad + 2}: index {idx[bad]} is outside the {grid} grid", path)
    _check_unique(idx, path)
    if mask:
        out[idx] = True
        return out.reshape(shape)
    if not all(seps):
        bad = seps.index("")
        raise MddoseError(f"row {bad + 2}: missing value (expected 'index,value')", path)
    try:
        values = np.array(val_s, dtype=np.float64)
    except ValueError:
        bad = next(i for i, s in enumerate(val_s) if not _is_float(s))
        raise MddoseError(f"row {bad + 2}: value {val_s[bad]!r} is not a number", path) from None
    if not np.all(np.isfinite(values)):
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise MddoseError(f"row {bad + 2}: value {val_s[bad]!r} is not finite", path)
    out[idx] = values
    return out.reshape(shape)


def _check_unique(idx: np.ndarray, path: Path) -> None:
    """Refuse an index listed twice (which value would count?); sorted files, the usual ones, are checked in O(n)."""
    if idx.size < 2 or bool(np.all(np.diff(idx) > 0)):
        return
    order = np.argsort(idx, kind="stable")
    repeated = np.flatnonzero(np.diff(idx[order]) == 0)
    if repeated.size:
        row = int(order[repeated[0] + 1])
        raise MddoseError(f"row {row + 2}: index {idx[row]} is listed twice", path)


def _parse_fast(body: str, mask: bool, size: int) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Vectorised parse of well-formed rows (numpy converts the text in C); None when anything looks off."""
    n_rows = len(body.split())  # rows hold no spaces: one token per row
    flat = body.replace(",", " ").split()
    if mask:
        if len(flat) != n_rows or body.count(",") != n_rows:  # masks: exactly "index," on every row
            return None
        values = None
        try:
            idx = np.array(flat, dtype=np.int64)
        except ValueError:
            return None
    else:
        if len(flat) != 2 * n_rows or body.count(",") != n_rows:
            return None
        try:
            pairs = np.array(flat, dtype=np.float64).reshape(-1, 2)
        except ValueError:
            return None
        idx, values = pairs[:, 0].astype(np.int64), pairs[:, 1]
        if not (np.array_equal(idx, pairs[:, 0]) and np.isfinite(values).all()):
            return None
    if idx.size and (idx.min() < 0 or idx.max() >= size):
        return None
    return idx, values


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def read_voxel_dimensions(path: Path) -> tuple[float, float, float]:
    text = _read_text(path)
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise MddoseError("voxel dimensions must be 3 numbers in mm", path) from None
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise MddoseError(f"voxel dimensions must be 3 positive numbers in mm, got {values}", path)
    return (values[0], values[1], values[2])


def _required(folder: Path, stem: str) -> Path:
    path = find_file(folder, stem)
    if path is None:
        raise MddoseError(f"missing {stem}.csv (or .csv.gz/.csv.xz) in patient folder", folder)
    return path


def read_grid_shape(folder: Path) -> tuple[int, int, int]:
    """The patient's grid: ``grid_shape.csv`` where present, else OpenKBP's 128×128×128."""
    path = find_file(folder, "grid_shape")
    if path is None:
        return OPENKBP_SHAPE
    try:
        values = [int(v) for v in _read_text(path).replace(",", " ").split()]
    except ValueError:
        raise MddoseError("grid shape must be 3 integers", path) from None
    problem = grid_problem(tuple(values))
    if problem is not None:
        raise MddoseError(problem, path)
    return (values[0], values[1], values[2])


def _check_mask(possible: np.ndarray, path: Path, explicit_shape: bool) -> None:
    if not possible.any():
        raise MddoseError("the possible-dose mask is empty: there is nowhere to predict or score a dose", path)
    if not explicit_shape and int(np.flatnonzero(possible).max()) < 64**3:
        raise MddoseError("every voxel of the possible-dose mask lies in the first 64³ indices of the 128³ grid: a "
                          "64×64×64 patient without its grid_shape.csv?", path)


def check_dose(dose: np.ndarray, path: Path) -> np.ndarray:
    """A dose that is finite and not negative, or one line saying where it is not (nothing is clipped)."""
    if not np.isfinite(dose).all():
        raise MddoseError("the dose holds NaN or infinite values", path)
    if dose.min() < 0:
        raise MddoseError(f"negative dose ({dose.min():.4g} Gy at index {int(np.argmin(dose))})", path)
    return dose


def check_dose_range(dose: np.ndarray, path: Path) -> np.ndarray:
    """:func:`check_dose`, and no higher than any radiotherapy dose (:data:`MAX_DOSE_GY`): what a reference or a
    predicted dose must be to be scored or exported."""
    check_dose(dose, path)
    if dose.size and dose.max() > MAX_DOSE_GY:
        raise MddoseError(f"dose of {dose.max():.4g} Gy (index {int(np.argmax(dose))}) is above {MAX_DOSE_GY:.0f} Gy: "
                          "not a dose in Gy", path)
    return dose


def read_patient(
    folder: str | Path,
    rois: RoiConfig | None = None,
    shape: tuple[int, int, int] | None = None,
    read_ct: bool = True,
    dose_dtype: type = np.float32,
    read_dose: bool = True,
) -> Patient:
    """Read one OpenKBP patient folder. ROIs not in ``rois`` are ignored; a missing ROI file is fine.

    ``shape`` defaults to the folder's ``grid_shape.csv``, else 128×128×128 (every OpenKBP patient).
    ``read_ct=False`` skips the CT (about half the reading time; the CT is then air everywhere), for scoring.
    ``dose_dtype=np.float64`` keeps the dose exactly as the official evaluator reads it. ``read_dose=False``
    leaves the dose out (None) for work that never looks at it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MddoseError("patient folder does not exist", folder)
    rois = rois or RoiConfig()
    explicit_shape = shape is not None or find_file(folder, "grid_shape") is not None
    shape = shape or read_grid_shape(folder)
    mask_path = _required(folder, "possible_dose_mask")
    possible = read_sparse_csv(mask_path, shape, mask=True)
    _check_mask(possible, mask_path, explicit_shape)
    if read_ct:
        ct_path = _required(folder, "ct")
        ct = read_sparse_csv(ct_path, shape)
        ct_hu = np.where(ct != 0, ct - CT_OFFSET, -CT_OFFSET).astype(np.float32)
        if ct_hu.min() < MIN_CT_HU:
            raise MddoseError(f"CT value {ct_hu.min():.0f} HU is below {MIN_CT_HU:.0f} HU (no tissue, air or padding "
                              "value): the file should hold HU + 1000", ct_path)
    else:
        ct_hu = np.full(shape, -CT_OFFSET, dtype=np.float32)
    spacing = read_voxel_dimensions(_required(folder, "voxel_dimensions"))
    structures = {}
    for name in rois.all:
        path = find_file(folder, name)
        if path is not None:
            structures[name] = read_sparse_csv(path, shape, mask=True)
    dose_path = find_file(folder, "dose") if read_dose else None
    dose = check_dose_range(read_sparse_csv(dose_path, shape), dose_path).astype(dose_dtype) if dose_path else None
    return Patient(folder.name, ct_hu, possible, spacing, structures, dose, rois)


def _format_rows(flat: np.ndarray, mask: bool) -> str:
    idx = np.flatnonzero(flat)
    if mask:
        body = "".join(f"{i},\n" for i in idx.tolist())
    else:
        # numpy's str of a float32 is the shortest text that reads back to the same float32: exact round-trip.
        values = flat[idx].astype(np.float32).astype(str)
        body = "".join(f"{i},{v}\n" for i, v in zip(idx.tolist(), values.tolist()))
    return f"{HEADER}\n{body}"


def _write_csv(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    if path.name.endswith(".xz"):
        data = lzma.compress(data, preset=6)
    elif path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_sparse_csv(path: str | Path, array: np.ndarray, mask: bool = False) -> None:
    """Write a dense array as a sparse OpenKBP CSV (non-zero voxels only); compression from the suffix."""
    _write_csv(Path(path), _format_rows(np.asarray(array).ravel(), mask))


def write_patient(patient: Patient, folder: str | Path, compression: str = "") -> Path:
    """Write a whole patient folder in OpenKBP layout, atomically. ``compression``: '', 'gz' or 'xz'."""
    if compression not in ("", "gz", "xz"):
        raise ValueError(f"compression must be '', 'gz' or 'xz', not {compression!r}")
    suffix = ".csv" + (f".{compression}" if compression else "")
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        ct_stored = np.where(patient.ct > -CT_OFFSET, patient.ct + CT_OFFSET, 0.0)
        write_sparse_csv(tmp / f"ct{suffix}", ct_stored)
        write_sparse_csv(tmp / f"possible_dose_mask{suffix}", patient.possible_dose_mask, mask=True)
        for name, roi in patient.structures.items():
            write_sparse_csv(tmp / f"{name}{suffix}", roi, mask=True)
        if patient.dose is not None:
            write_sparse_csv(tmp / f"dose{suffix}", patient.dose)
        dims = "".join(f"{s:.18e}\n" for s in patient.spacing)
        if patient.shape != OPENKBP_SHAPE:
            _write_csv(tmp / f"grid_shape{suffix}", "".join(f"{n}\n" for n in patient.shape))
        _write_csv(tmp / f"voxel_dimensions{suffix}", dims)
    return folder


def write_dose_csv(path: str | Path, dose: np.ndarray, possible_dose_mask: np.ndarray) -> None:
    """Write a predicted dose in the OpenKBP submission format: non-zero voxels inside the mask."""
    write_sparse_csv(path, np.where(possible_dose_mask, dose, 0.0))


def read_dose_csv(path: str | Path, shape: tuple[int, ...] = OPENKBP_SHAPE) -> np.ndarray:
    """Read a dose CSV (submission ``pt_N.csv`` or a patient's ``dose.csv``) as float32 Gy."""
    return read_sparse_csv(Path(path), shape).astype(np.float32)


def natural_key(name: str) -> list[object]:
    """Sort key that puts pt_2 before pt_10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


PATIENT_MARKERS = ("ct", "possible_dose_mask", "voxel_dimensions")  # any of them makes a folder a patient's


def _is_patient(folder: Path) -> bool:
    return any(find_file(folder, stem) is not None for stem in PATIENT_MARKERS)


def list_patients(split_dir: str | Path) -> list[Path]:
    """Patient folders of a split (folders holding a ct, possible_dose_mask or voxel_dimensions file), in natural
    order: pt_2 before pt_10. A folder missing one of the others is still listed: its reader names what is missing.
    """
    split_dir = Path(split_dir)
    if split_dir.is_file():
        raise MddoseError("is a file; expected a folder of patient folders (pt_N/) or one patient folder", split_dir)
    if not split_dir.is_dir():
        raise MddoseError("folder does not exist", split_dir)
    entries = sorted(split_dir.iterdir())
    broken = next(((p, problem) for p in entries if (problem := link_problem(p)) is not None), None)
    if broken is not None:
        raise MddoseError(broken[1], broken[0])
    folders = [p for p in entries if p.is_dir() and _is_patient(p)]
    if not folders and _is_patient(split_dir):
        return [split_dir]  # a single patient folder given directly
    if not folders:
        raise MddoseError("no patient folders (pt_N/ with a ct.csv) found", split_dir)
    return sorted(folders, key=lambda p: natural_key(p.name))


def iter_patients(
    split_dir: str | Path, rois: RoiConfig | None = None, progress: bool = True, desc: str = "patients"
) -> Iterator[Patient]:
    """Read every patient of a split folder in natural order, with a progress bar."""
    folders = list_patients(split_dir)
    for folder in tqdm(folders, desc=desc, unit="pt", disable=not progress):
        yield read_patient(folder, rois)
