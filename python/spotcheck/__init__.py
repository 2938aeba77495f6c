"""spotcheck: spot-safe training checkpoints.

``spotcheck.torch.Checkpointer`` saves and restores PyTorch training state in checkpoint format
v1 (safetensors + a manifest with SHA-256 and CRC-64/NVME, written last), asynchronously, and
tells the training loop when to stop (SIGTERM/SIGINT, spot interruption notices). The native
layer (``spotcheck._native``) is Rust; it does not link PyTorch. See python/README.md.
"""

from ._native import FORMAT_VERSION, CheckpointError

__all__ = ["CheckpointError", "FORMAT_VERSION"]
