"""clipgap: CLIP-guided domain-generalised object detection on MMDetection.

Importing the package applies the stack fixes of `compat` and registers clipgap's
open_clip model configs (see `clipgap_cli.clip`).
"""

from clipgap_cli import clip, compat  # noqa: F401
