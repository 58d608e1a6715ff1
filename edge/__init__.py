"""statecast edge: step exported LSTM graphs over live MQTT sensor streams.

Needs only numpy, onnxruntime and paho-mqtt; it never imports TensorFlow.
"""

from edge.codec import PayloadError
from edge.config import BrokerURL, EdgeConfig
from edge.errors import EdgeError
from edge.manifest import METADATA_KEY, Manifest, StateSpec
from edge.model import StepModel
from edge.service import Service

__version__ = "0.1.0"

__all__ = [
    "METADATA_KEY",
    "BrokerURL",
    "EdgeConfig",
    "EdgeError",
    "Manifest",
    "PayloadError",
    "Service",
    "StateSpec",
    "StepModel",
    "__version__",
]
