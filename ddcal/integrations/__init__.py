"""ddcal in other libraries' terms, each behind an optional extra.

* :mod:`ddcal.integrations.torchmetrics` (``pip install 'ddcal[torchmetrics]'``):
  ddcal's calibration error as a ``torchmetrics.Metric``.
* :mod:`ddcal.integrations.lightning` (``pip install 'ddcal[lightning]'``): a
  Lightning callback that fits ddcal's default calibrator at the end of ``fit``
  and logs the calibrated metrics on validation and test.

Importing this package imports neither library; importing a module of it
without its library raises an ``ImportError`` that names the extra.
"""

from __future__ import annotations

__all__: list[str] = []
