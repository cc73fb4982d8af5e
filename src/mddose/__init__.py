"""mddose: radiotherapy dose prediction with MD-Dose (a Mamba-UNet conditional diffusion model).

Package map, by pipeline stage (each box of the paper's Fig. 2 lives in one file):

- ``data/``        the one :class:`~mddose.data.patient.Patient` type, OpenKBP CSV I/O, synthetic phantoms
                   (the patient, its anatomy and its modelled plan in three files), the compact cache and the
                   slice dataset (``mddose prepare``, ``phantom``).
- ``io/``          DICOM RT and NIfTI in and out (``import-dicom``, ``export-dicom``, ``export-nifti``).
- ``models/``      selective scans (``ssm.py``), the Mamba block (Fig. 2d, ``mamba.py``), the Mamba-UNet
                   (Fig. 2b, ``unet.py``), the structure encoder (Fig. 2c, ``encoder.py``), the baselines,
                   their configs (``config.py``, a leaf) and the factory (``build.py``).
- ``diffusion/``   forward process, loss and samplers (Fig. 2a).
- ``runs/``        a run on disk: its configuration (``run_config.py``; the methods one recipe trains in
                   ``methods.py``), its checkpoints and its folder layout.
- ``training/``    the training loop (``mddose train``).
- ``inference/``   whole-patient prediction, the baselines' forward pass, the trivial baseline, the shipped
                   models (``predict``, ``baseline``, ``pretrained``).
- ``evaluate/``    OpenKBP-exact scores, the paper's metrics, clinical DVH tables, method comparison.
- ``qa/``          knowledge-based plan QA (``mddose qa``, ``qa-calibrate``).
- ``viz/``         dose washes, DVH figures, reports.
- ``experiments/`` the paper's tables, their timing and the demo (``experiment``, ``demo``).
- ``bench/``       benchmarks that write JSON (``bench networks``, ``bench sampling``).
- ``cli.py``, ``cli_qa.py``, ``cli_dicom.py``, ``cli_bench.py``, ``cli_options.py`` the command line;
  ``atomic.py`` atomic writes, unfinished-folder markers and the writer's lock; ``ownership.py`` the rule of whose
  output a folder is (every command claims its output there); ``device.py``, ``errors.py``, ``typecheck.py`` the
  infrastructure every stage uses.
"""

from mddose.errors import MddoseError

__version__ = "0.1.0"
__all__ = ["MddoseError", "__version__"]
