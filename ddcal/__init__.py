"""ddcal: calibration for networks trained on distilled datasets.

The public API, re-exported from the modules that define it.
"""

from ddcal.inference import predict_logits
from ddcal.losses import MaskedDistillationTraining
from ddcal.masking import MaskInputs, mask_inputs
from ddcal.metrics import (
    BootstrapInterval,
    CalibrationMeter,
    ReliabilityBins,
    accuracy,
    bootstrap_interval,
    brier_score,
    calibration_error,
    classwise_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)
from ddcal.models import ConvNet, build_convnet
from ddcal.sampling import PerClassSampler, per_class_split
from ddcal.scaling import (
    CalibratedModel,
    MaskedTemperatureScaler,
    TemperatureBoundWarning,
    TemperatureScaler,
    fit_temperature,
)
from ddcal.train import train_network

__version__ = "0.1.0"

__all__ = [
    "BootstrapInterval",
    "CalibratedModel",
    "CalibrationMeter",
    "ConvNet",
    "MaskInputs",
    "MaskedDistillationTraining",
    "MaskedTemperatureScaler",
    "PerClassSampler",
    "ReliabilityBins",
    "TemperatureBoundWarning",
    "TemperatureScaler",
    "__version__",
    "accuracy",
    "bootstrap_interval",
    "brier_score",
    "build_convnet",
    "calibration_error",
    "classwise_calibration_error",
    "fit_temperature",
    "mask_inputs",
    "negative_log_likelihood",
    "per_class_split",
    "predict_logits",
    "reliability_bins",
    "train_network",
]
