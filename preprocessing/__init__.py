"""The Apache Beam preprocessing job (runs inside Beam workers; no TensorFlow)."""
