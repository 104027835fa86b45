"""edgenas: hardware-aware differentiable architecture search, from profiling to ONNX deployment."""

__version__ = "0.1.0"
