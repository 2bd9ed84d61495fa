"""corral: a Kubernetes-free, Nomad-like cluster scheduler."""

__version__ = "0.1.0"
