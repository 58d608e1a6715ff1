"""statecast export: Keras LSTM models and run folders → batch-1 ONNX step graphs.

Importing this package is cheap; TensorFlow is only loaded when a model is read.
"""

from export.api import export_model
from export.errors import ExportError

__all__ = ["ExportError", "export_model"]
