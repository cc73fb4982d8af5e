"""The compact cache: every patient of a split in one small file each, plus an index of usable axial slices.

Layout written by :func:`prepare_cache` (``mddose prepare DATA_DIR CACHE_DIR``)::

    CACHE_DIR/
      cache.json       format version, ROI configuration, precision, totals, per-patient index:
                       id, crop box, spacing, ROIs present, axial slices that meet the possible-dose mask
      pt_N.npz.xz      one patient: an uncompressed ``.npz`` (no pickles) compressed as a whole with LZMA

What a patient file keeps, cropped to the bounding box of its possible-dose mask and all its ROIs (OpenKBP ROIs
may reach outside the mask, where the dose is 0, and the DVH metrics count those voxels):

- ``rois``  uint16 bitmask over the crop: bit 0 the possible-dose mask, bit ``1 + i`` the i-th ROI of
  ``RoiConfig.all``;
- ``ct``    int16 Hounsfield units (1 HU steps; OpenKBP CTs are integers, so exact) of the voxels **inside the
  possible-dose mask**; outside it the cache holds air (-1000 HU). The slice dataset applies the same rule to
  every patient it reads, cached or not, so training and prediction see identical inputs;
- ``dose``  uint16 dose of the voxels inside the possible-dose mask in steps of :data:`DOSE_STEP_GY` = 0.1 Gy,
  rounded to nearest (outside it OpenKBP's dose is 0): at most 0.05 Gy off per voxel; the OpenKBP dose score of
  the cached reference against the original is recorded per patient in ``cache.json`` (tested).
- ``prior`` the beam prior (:mod:`mddose.data.beam_prior`) in the same units, computed with the gantry angles
  that ``cache.json`` records as ``beam_angles``. A cache made before the prior existed gets it when prepare
  is re-run on it.

Each uint16/int16 array is stored as two byte planes (low bytes, then high bytes), which LZMA compresses better
than interleaved bytes (docs/measurements.md has the sizes). Re-running on an existing cache only adds the patients that are missing; every file is written
atomically, so an interrupted run leaves no broken file.

Each patient's entry records its ``source``: the folder it was read from and a SHA-256 of that folder's files.
A patient of the same id from another folder with other files is refused (the cache holds another patient of
that name); from the same folder with changed files, it is encoded again. ``cache.json``'s ``source`` stays the
first data folder, ``sources`` lists every one the cache was filled from.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import lzma
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mddose.atomic import check_finished, write_bytes, write_json
from mddose.data.beam_prior import OPENKBP_BEAM_ANGLES, beam_prior, check_angles
from mddose.data.openkbp import list_patients, natural_key, read_patient
from mddose.data.patient import Patient, RoiConfig
from mddose.errors import MddoseError
from mddose.ownership import claim, unfinished

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DOSE_STEP_GY = 0.1
SUFFIX = ".npz.xz"
INDEX = "cache.json"


@dataclass
class CachedPatient:
    """A patient as the cache keeps it: cropped arrays plus where the crop sits in the full grid."""

    patient_id: str
    offset: tuple[int, int, int]  # index of the crop's first voxel in the full grid
    full_shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    ct: np.ndarray  # (x, y, z) int16 HU
    rois: np.ndarray  # (x, y, z) uint16 bitmask, bit 0 possible-dose mask
    dose: np.ndarray | None  # (x, y, z) uint16, DOSE_STEP_GY units
    roi_names: tuple[str, ...]
    prior: np.ndarray | None = None  # (x, y, z) uint16, DOSE_STEP_GY units: the beam prior

    @classmethod
    def from_patient(cls, patient: Patient, beam_angles: tuple[float, ...] | None = None) -> CachedPatient:
        """Crop and quantise a patient exactly as the cache stores it (no compression); with ``beam_angles``,
        its beam prior for those gantry angles too."""
        names = patient.rois.all
        if len(names) > 15:
            raise ValueError("the cache's uint16 ROI bitmask holds at most 15 ROIs")
        if not patient.possible_dose_mask.any():
            raise MddoseError("possible-dose mask is empty", patient.patient_id)
        box = crop_box(np.logical_or.reduce([patient.possible_dose_mask, *patient.structures.values()]))
        inside = patient.possible_dose_mask[box]
        bits = inside.astype(np.uint16)
        for i, name in enumerate(names):
            if name in patient.structures:
                bits |= patient.structures[name][box].astype(np.uint16) << (1 + i)
        ct = np.where(inside, np.clip(np.rint(patient.ct[box]), -32768, 32767), -1000).astype(np.int16)
        dose = None if patient.dose is None else _dose_steps(patient.dose[box], inside)
        prior = None if beam_angles is None else _dose_steps(beam_prior(patient, beam_angles)[box], inside)
        offset = tuple(int(b.start) for b in box)
        return cls(patient.patient_id, offset, patient.shape, patient.spacing, ct, bits, dose, names,  # type: ignore[arg-type]
                   prior)

    def mask(self, name: str) -> np.ndarray:
        """Cropped bool mask of one ROI ('possible_dose_mask' for bit 0)."""
        bit = 0 if name == "possible_dose_mask" else 1 + self.roi_names.index(name)
        return (self.rois >> bit) & 1 == 1

    def axial_slices(self) -> list[int]:
        """Full-grid indices of the axial slices that meet the possible-dose mask (as ``Patient.axial_slices``)."""
        return [self.offset[2] + int(k) for k in np.flatnonzero((self.rois & 1).any(axis=(0, 1)))]

    def dose_gy(self) -> np.ndarray | None:
        return None if self.dose is None else self.dose.astype(np.float32) * np.float32(DOSE_STEP_GY)

    @property
    def box(self) -> tuple[slice, slice, slice]:
        """Where the cached crop lies in the full grid."""
        return tuple(slice(o, o + s) for o, s in zip(self.offset, self.ct.shape))  # type: ignore[return-value]

    def full_mask(self, names: tuple[str, ...] = ("possible_dose_mask",)) -> np.ndarray:
        """The possible-dose mask (or the union of the ROIs ``names`` that the cache holds) on the full grid."""
        full = np.zeros(self.full_shape, dtype=bool)
        for name in names:
            if name == "possible_dose_mask" or name in self.roi_names:
                full[self.box] |= self.mask(name)
        return full

    def to_patient(self, rois: RoiConfig) -> Patient:
        """Back to a full-grid :class:`Patient` (dose at cache precision)."""
        box = self.box
        ct = np.full(self.full_shape, -1000.0, dtype=np.float32)
        ct[box] = self.ct
        possible = self.full_mask()
        structures = {}
        for name in self.roi_names:
            if self.mask(name).any():
                full = np.zeros(self.full_shape, dtype=bool)
                full[box] = self.mask(name)
                structures[name] = full
        dose = None
        if self.dose is not None:
            dose = np.zeros(self.full_shape, dtype=np.float32)
            dose[box] = self.dose_gy()
        return Patient(self.patient_id, ct, possible, self.spacing, structures, dose, rois)


def _dose_steps(dose_gy: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """A cropped dose in Gy as the cache keeps it: uint16 steps of DOSE_STEP_GY, 0 outside the mask."""
    return np.where(inside, np.clip(np.rint(dose_gy / DOSE_STEP_GY), 0, 65535), 0).astype(np.uint16)


def crop_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of a non-empty mask as one slice per axis."""
    if not mask.any():
        raise ValueError("empty mask")
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def encode_patient(patient: Patient, beam_angles: tuple[float, ...] | None = None) -> tuple[bytes, dict[str, Any]]:
    """Compress one patient (and its beam prior for ``beam_angles``) for the cache; returns the file bytes and
    its index entry."""
    cached = CachedPatient.from_patient(patient, beam_angles)
    inside = cached.rois & 1 == 1
    arrays = {"rois": _planes(cached.rois), "ct": _planes(cached.ct[inside])}
    for name in ("dose", "prior"):
        if getattr(cached, name) is not None:
            arrays[name] = _planes(getattr(cached, name)[inside])
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = lzma.compress(buf.getvalue(), preset=9)
    entry = {
        "id": patient.patient_id,
        "offset": list(cached.offset),
        "crop_shape": list(cached.ct.shape),
        "full_shape": list(patient.shape),
        "spacing": list(patient.spacing),
        "rois_present": patient.present_rois(),
        "slices": patient.axial_slices().tolist(),
        "has_dose": patient.dose is not None,
        "beam_prior": cached.prior is not None,
        "bytes": len(data),
    }
    if patient.dose is not None:
        restored = cached.to_patient(patient.rois).dose
        entry["max_dose_gy"] = float(patient.dose.max())
        entry["dose_score_vs_original"] = float(
            np.abs(restored - patient.dose).sum() / patient.possible_dose_mask.sum()
        )
    return data, entry


def decode_patient(path: Path, entry: dict[str, Any], roi_names: tuple[str, ...]) -> CachedPatient:
    try:
        with np.load(io.BytesIO(lzma.decompress(path.read_bytes())), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        shape = tuple(entry["crop_shape"])
        rois = _unplanes(arrays["rois"], np.uint16).reshape(shape)
        inside = rois & 1 == 1
        ct = np.full(shape, -1000, dtype=np.int16)
        ct[inside] = _unplanes(arrays["ct"], np.int16)
        dose, prior = (_unmask(arrays[k], inside) if k in arrays else None for k in ("dose", "prior"))
    except (OSError, lzma.LZMAError, ValueError, EOFError, KeyError) as e:
        raise MddoseError(f"corrupt cache file ({type(e).__name__}); delete it and re-run prepare", path) from None
    return CachedPatient(
        entry["id"], tuple(entry["offset"]), tuple(entry["full_shape"]), tuple(entry["spacing"]),
        ct, rois, dose, roi_names, prior,
    )


def _unmask(planes: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """A uint16 crop from the byte planes of its values inside the mask (0 elsewhere)."""
    out = np.zeros(inside.shape, dtype=np.uint16)
    out[inside] = _unplanes(planes, np.uint16)
    return out


def _planes(a: np.ndarray) -> np.ndarray:
    """A 16-bit array as (2, n) uint8 byte planes, low bytes first."""
    return np.ascontiguousarray(a.ravel().view(np.uint8).reshape(-1, 2).T)


def _unplanes(planes: np.ndarray, dtype: type) -> np.ndarray:
    return np.ascontiguousarray(planes.T).view(dtype).ravel()


def load_index(cache_dir: str | Path) -> dict[str, Any]:
    path = Path(cache_dir) / INDEX
    if not path.is_file():
        raise MddoseError(f"not an mddose cache (no {INDEX}); run 'mddose prepare' first", cache_dir)
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MddoseError(f"corrupt cache index ({e.msg})", path) from None
    if index.get("format_version") != FORMAT_VERSION:
        raise MddoseError(f"cache format {index.get('format_version')} is not {FORMAT_VERSION}; re-run prepare", path)
    return index


class Cache:
    """Read access to a prepared cache; patients are decoded on first use and kept in memory."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.dir = Path(cache_dir)
        check_finished(self.dir)  # an interrupted prepare: train on it only once prepare has finished it
        self.index = load_index(self.dir)
        self.rois = RoiConfig.from_dict(self.index["rois"])
        self.entries: dict[str, dict[str, Any]] = {e["id"]: e for e in self.index["patients"]}
        self._loaded: dict[str, CachedPatient] = {}

    @property
    def patient_ids(self) -> list[str]:
        return list(self.entries)

    @property
    def beam_angles(self) -> tuple[float, ...] | None:
        """The gantry angles of the beam priors the cache holds (None: it holds none)."""
        angles = self.index.get("beam_angles")
        return None if angles is None else tuple(angles)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, patient_id: str) -> CachedPatient:
        if patient_id not in self._loaded:
            path = self.dir / f"{patient_id}{SUFFIX}"
            if not path.is_file():
                raise MddoseError("cache file is missing; re-run prepare", path)
            self._loaded[patient_id] = decode_patient(path, self.entries[patient_id], self.rois.all)
        return self._loaded[patient_id]

    def patient(self, patient_id: str) -> Patient:
        return self.get(patient_id).to_patient(self.rois)


def prepare_cache(
    data_dir: str | Path, cache_dir: str | Path, rois: RoiConfig | None = None, progress: bool = True,
    beam_angles: tuple[float, ...] | None = OPENKBP_BEAM_ANGLES,
) -> dict[str, Any]:
    """Build or complete the cache of every patient folder in ``data_dir``; returns a summary.

    ``beam_angles``: the gantry angles of the beam prior stored with every patient (None: no prior). Re-run on a
    cache that lacks the prior, it adds it; a cache made with other angles is refused, and so is a cache that
    holds another patient of the same id (see the module doc), before anything is written.
    """
    data_dir, cache_dir = Path(data_dir), Path(cache_dir)
    folders = list_patients(data_dir)
    rois = rois or RoiConfig()
    beam_angles = None if beam_angles is None else check_angles(beam_angles)
    with claim(cache_dir, "mddose prepare", [data_dir], resume=True) as cache_dir:
        old = _existing_index(cache_dir, rois, beam_angles)
        entries, todo = _to_encode(folders, data_dir, cache_dir, old, beam_angles)  # checked before any change
        with unfinished(cache_dir, "mddose prepare"):  # the Cache refuses it until every patient is in
            return _fill_cache(todo, entries, old, data_dir, cache_dir, rois, progress, beam_angles)


def source_of(folder: Path) -> dict[str, str]:
    """Where a patient comes from: its folder and a SHA-256 of the names and bytes of the files in it."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(path.name.encode("utf-8") + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return {"folder": str(folder.absolute()), "sha256": digest.hexdigest()}


def _existing_index(cache_dir: Path, rois: RoiConfig, beam_angles: tuple[float, ...] | None) -> dict[str, Any]:
    """The index of the cache being completed ({} for a new one), checked against the ROIs and angles asked."""
    if not (cache_dir / INDEX).is_file():
        return {}
    old = load_index(cache_dir)
    if RoiConfig.from_dict(old["rois"]) != rois:
        raise MddoseError("existing cache was made with another ROI configuration", cache_dir / INDEX)
    old_angles = old.get("beam_angles")
    if beam_angles is not None and old_angles is not None and tuple(old_angles) != beam_angles:
        raise MddoseError(f"existing cache holds beam priors for other gantry angles ({old_angles})", cache_dir / INDEX)
    return old


def _to_encode(folders: list[Path], data_dir: Path, cache_dir: Path, old: dict[str, Any],
               beam_angles: tuple[float, ...] | None) -> tuple[dict[str, dict], list[tuple[Path, dict[str, str]]]]:
    """(the entries kept, the folders to encode with their sources); refuses a cache holding another patient of
    the same id. An entry made before sources were recorded belongs to the cache's own source folder."""
    entries = {e["id"]: e for e in old.get("patients", []) if (cache_dir / f"{e['id']}{SUFFIX}").is_file()}
    legacy_source = old.get("source")
    legacy_here = legacy_source is not None and (legacy_source == str(data_dir)
                                                 or Path(legacy_source).absolute() == data_dir.absolute())
    todo = []
    for folder in folders:
        source, entry = source_of(folder), entries.get(folder.name)
        if entry is not None and "source" not in entry and legacy_here:
            entry["source"] = source  # the cache's own patient, as it was read then
        held = None if entry is None else entry.get("source", {"folder": legacy_source, "sha256": None})
        if held is not None and held["sha256"] != source["sha256"] and held["folder"] != source["folder"]:
            raise MddoseError(f"the cache holds another {folder.name} (from {held['folder']}) than {folder}: prepare "
                              f"{data_dir} into a new cache folder", cache_dir / f"{folder.name}{SUFFIX}")
        if held is None or held["sha256"] != source["sha256"] or (beam_angles is not None
                                                                   and not entry.get("beam_prior")):
            todo.append((folder, source))
    return entries, todo


def _fill_cache(todo: list[tuple[Path, dict[str, str]]], entries: dict[str, dict], old: dict[str, Any],
                data_dir: Path, cache_dir: Path, rois: RoiConfig, progress: bool,
                beam_angles: tuple[float, ...] | None) -> dict[str, Any]:
    sources = old.get("sources") or ([old["source"]] if old.get("source") else [])
    if todo and str(data_dir) not in sources:
        sources.append(str(data_dir))
    start, added = time.perf_counter(), len(todo)  # new, changed or lacking the asked prior
    bar = tqdm(todo, desc="prepare", unit="pt", disable=not progress)
    for folder, source in bar:
        data, entry = encode_patient(read_patient(folder, rois), beam_angles)
        write_bytes(cache_dir / f"{folder.name}{SUFFIX}", data)
        entries[folder.name] = {**entry, "source": source}
        _write_index(cache_dir, rois, entries, sources, beam_angles)  # after every patient: resumable
    index = _write_index(cache_dir, rois, entries, sources or [str(data_dir)], beam_angles)
    summary = {k: index[k] for k in ("n_patients", "n_slices", "size_mib", "dose_score_vs_original_max")}
    summary.update(added=added, seconds=round(time.perf_counter() - start, 1))
    log.info("cache %s: %s", cache_dir, summary)
    return summary


def _write_index(
    cache_dir: Path, rois: RoiConfig, entries: dict[str, dict[str, Any]], sources: list[str],
    beam_angles: tuple[float, ...] | None,
) -> dict[str, Any]:
    ordered = sorted(entries.values(), key=lambda e: natural_key(e["id"]))
    scores = [e["dose_score_vs_original"] for e in ordered if "dose_score_vs_original" in e]
    index = {
        "format_version": FORMAT_VERSION,
        "source": sources[0] if sources else None,
        "sources": sources,
        "rois": rois.to_dict(),
        "precision": {"ct": "int16 HU (1 HU)", "dose": f"uint16, {DOSE_STEP_GY} Gy steps", "rois": "uint16 bitmask"},
        "dose_step_gy": DOSE_STEP_GY,
        "beam_angles": list(beam_angles) if beam_angles and all(e.get("beam_prior") for e in ordered) else None,
        "n_patients": len(ordered),
        "n_slices": sum(len(e["slices"]) for e in ordered),
        "size_mib": round(sum(e["bytes"] for e in ordered) / 2**20, 2),
        "dose_score_vs_original_max": max(scores) if scores else None,
        "patients": ordered,
    }
    write_json(cache_dir / INDEX, index)
    return index
