"""CLIP models for clipgap: open_clip loading, the V_a / V_b split, prompts.

Importing it registers clipgap's own open_clip model configs, among them `RN-tiny`: a
ModifiedResNet with one block per stage, width 16, 128 px input and 64-d embeddings,
small enough for tests and the CPU demo (random weights; nothing to download).
"""

from pathlib import Path

import open_clip

TINY_MODEL = "RN-tiny"
CPU_MODELS = (TINY_MODEL, "RN-synth")
"""clipgap's own CLIPs, sized for the CPU (RN-synth: see docs/rn-synth.md)."""
MODEL_CONFIGS = Path(__file__).parent / "model_configs"

open_clip.add_model_config(MODEL_CONFIGS)
