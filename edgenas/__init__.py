"""edgenas: hardware-aware differentiable architecture search, from profiling to ONNX deployment."""

from edgenas import omp as _omp

# Before anything imports torch: OpenMP reads its spin settings once, when it loads.
_omp.apply()

__version__ = "0.1.0"
