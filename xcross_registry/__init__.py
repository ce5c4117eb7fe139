"""xcross-registry: integrate the LoRA adapters you have for other domains into
recommendations for a new one (X-Cross, SIGIR 2025).

Kept import-light on purpose: registry commands must start without torch.
"""

__version__ = "0.1.0"
