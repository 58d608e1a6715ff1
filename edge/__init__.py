"""statecast edge: step exported LSTM graphs over live MQTT sensor streams.

Needs only numpy, onnxruntime and paho-mqtt; it never imports TensorFlow.
"""

from edge.errors import EdgeError
from edge.manifest import METADATA_KEY, Manifest, StateSpec
from edge.model import StepModel

__version__ = "0.1.0"

__all__ = ["METADATA_KEY", "EdgeError", "Manifest", "StateSpec", "StepModel", "__version__"]
