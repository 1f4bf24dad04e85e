"""Shared test set-up: everything offline, on CPU."""

import os

# huggingface_hub reads this once, at import: set it before anything imports open_clip.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
