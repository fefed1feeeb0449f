"""Hand-written layers: every forward and backward pass, written once against ``xp``."""
from .parameter import Parameter
