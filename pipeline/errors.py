"""Errors the runtime raises for the CLIs to report (importable without TensorFlow)."""
from configs.cli import NumericFailure


class NonFiniteLossError(NumericFailure):
    """The training loss became NaN or Inf; the last good checkpoint is kept."""
