"""statecast trainer: fit Keras LSTM forecasters at large batch and write a run folder."""

__version__ = "0.1.0"
