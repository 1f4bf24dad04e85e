"""CLIP the Gap's semantic augmentations: the objective that `optimize-augs` minimises."""
