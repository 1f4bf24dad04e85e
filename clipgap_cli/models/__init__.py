"""clipgap's registered MMDetection components: `custom_imports=dict(imports=['clipgap_cli.models'])`."""

from clipgap_cli.models.bbox_head import CLIPBBoxHead
from clipgap_cli.models.clip_resnet import CLIPResLayer4Head, CLIPResNetBackbone, ClipRoIFeatures
from clipgap_cli.models.gridclip import GridCLIP, GridCLIPBackbone, GridCLIPHead
from clipgap_cli.models.semantic_augmentation import SemanticAugmentation

__all__ = [
    "CLIPBBoxHead",
    "CLIPResLayer4Head",
    "CLIPResNetBackbone",
    "ClipRoIFeatures",
    "GridCLIP",
    "GridCLIPBackbone",
    "GridCLIPHead",
    "SemanticAugmentation",
]
