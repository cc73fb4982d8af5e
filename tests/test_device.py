"""Device choice and the prediction batch size that suits it."""

from __future__ import annotations

import torch

from mddose.device import prediction_batch, resolve_device


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_prediction_batch_suits_the_device_unless_asked() -> None:
    assert prediction_batch(torch.device("cpu")) == 8
    assert prediction_batch(torch.device("cuda", 0)) == 32
    assert prediction_batch(torch.device("cpu"), 3) == 3
