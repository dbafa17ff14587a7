"""Errors the runtime raises for the CLIs to report (importable without TensorFlow)."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf; the last good checkpoint is kept."""
