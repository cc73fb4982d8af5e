"""The real patient in ``../shared/dicom/nsclc-lung1-003`` (CMS XiO export, see its README there), imported once
per session with the ROI map that maps its target; tests using it skip, saying why, where the folder is absent."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from mddose.io.dicom_import import ImportResult, import_dicom

REAL_PATIENT = Path(__file__).resolve().parents[2].parent / "shared" / "dicom" / "nsclc-lung1-003"
#: Its target is named "PTV-1" and its body "Patient": neither maps by default.
ROI_MAP = {"PTV-1": "PTV70", "Patient": "BODY"}


def real_dicom() -> Path:
    """The real patient's DICOM folder, or a skip naming where it was looked for."""
    if not (REAL_PATIENT / "1.dcm").is_file():
        pytest.skip(f"real DICOM patient not found at {REAL_PATIENT} (see ../shared/dicom/README.md)")
    return REAL_PATIENT


@dataclass
class RealImport:
    dicom: Path
    result: ImportResult
    log: list[str]  # what import-dicom logged (INFO and above), one message per item


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="session")
def real_imported(tmp_path_factory: pytest.TempPathFactory) -> RealImport:
    dicom = real_dicom()
    root = tmp_path_factory.mktemp("real")
    (root / "map.json").write_text(json.dumps(ROI_MAP))
    handler, logger = _Collect(), logging.getLogger("mddose")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        result = import_dicom(dicom, root / "imported" / "pt_1", roi_map=root / "map.json")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return RealImport(dicom, result, handler.messages)
