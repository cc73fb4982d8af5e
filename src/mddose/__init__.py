"""mddose: radiotherapy dose prediction with MD-Dose (a Mamba-UNet conditional diffusion model).

Package map (each box of the paper's Fig. 2 lives in one file):

- ``data/``      the one :class:`~mddose.data.patient.Patient` type, OpenKBP CSV I/O, synthetic phantoms,
                 the compact cache and the slice dataset.
- ``models/``    selective scans (``ssm.py``), the Mamba block (Fig. 2d, ``mamba.py``), the Mamba-UNet
                 (Fig. 2b, ``unet.py``) and the structure encoder (Fig. 2c, ``encoder.py``).
- ``diffusion/`` forward process, loss and samplers (Fig. 2a).
- ``evaluate/``  OpenKBP-exact scores, the paper's metrics, clinical DVH tables, method comparison.
- ``viz/``       dose washes, DVH figures, reports.
- ``io/``        DICOM RT and NIfTI.
"""

from mddose.errors import MddoseError

__version__ = "0.1.0"
__all__ = ["MddoseError", "__version__"]
