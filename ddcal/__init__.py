"""ddcal: calibration for networks trained on distilled datasets.

The public API, re-exported from the modules that define it.
"""

from ddcal.analysis import (
    MaxLogitStatistics,
    explained_variance_ratio,
    feature_projections,
    max_logit_statistics,
)
from ddcal.inference import load_predictions, predict_logits, save_predictions, stack_dataset
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
    calibration_summary,
    classwise_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)
from ddcal.models import (
    ConvNet,
    ConvNetCheckpoint,
    build_convnet,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from ddcal.sampling import PerClassSampler, per_class_split
from ddcal.scaling import (
    CalibratedModel,
    CalibrationResult,
    MaskedTemperatureScaler,
    MaskRatioSelection,
    TemperatureBoundWarning,
    TemperatureScaler,
    calibrate,
    fit_temperature,
    masked_logits,
    select_mask_ratio,
)
from ddcal.train import train_network, train_networks

__version__ = "0.1.0"

__all__ = [
    "BootstrapInterval",
    "CalibratedModel",
    "CalibrationMeter",
    "CalibrationResult",
    "ConvNet",
    "ConvNetCheckpoint",
    "MaskInputs",
    "MaskRatioSelection",
    "MaskedDistillationTraining",
    "MaskedTemperatureScaler",
    "MaxLogitStatistics",
    "PerClassSampler",
    "ReliabilityBins",
    "TemperatureBoundWarning",
    "TemperatureScaler",
    "__version__",
    "accuracy",
    "bootstrap_interval",
    "brier_score",
    "build_convnet",
    "calibrate",
    "calibration_error",
    "calibration_summary",
    "classwise_calibration_error",
    "explained_variance_ratio",
    "feature_projections",
    "fit_temperature",
    "load_checkpoint",
    "load_predictions",
    "mask_inputs",
    "masked_logits",
    "max_logit_statistics",
    "negative_log_likelihood",
    "per_class_split",
    "predict_logits",
    "read_checkpoint",
    "reliability_bins",
    "save_checkpoint",
    "save_predictions",
    "select_mask_ratio",
    "stack_dataset",
    "train_network",
    "train_networks",
]
