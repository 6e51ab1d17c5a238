"""gpubp: backpropagation as the four textbook equations, on NumPy or on the GPU with fused CUDA kernels.

>>> import gpubp
>>> net = gpubp.Network([784, 30, 10], activation="sigmoid", cost="quadratic", device="auto")
"""

from . import checkpoint
from .backend import DeviceError
from .costs import Cost, CustomCost
from .explain import Explanation
from .gradcheck import gradcheck
from .inputs import to_numpy
from .model_state import ModelState
from .network import Network
from .serialization import load

__version__ = "0.1.0"

__all__ = ["Cost", "CustomCost", "DeviceError", "Explanation", "ModelState", "Network", "gradcheck", "load",
           "to_numpy", "__version__"]
