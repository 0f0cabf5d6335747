"""memtune: open, self-hosted Memory Tuning (Mixture of Memory Experts) on Kubernetes."""

from memtune.client import MemoryTuner

__all__ = ["MemoryTuner"]
__version__ = "0.1.0"
