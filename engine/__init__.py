"""neuroprint: neuron-level fingerprints (Visual DNA) of image collections."""

__version__ = "0.1.0"
