"""Person-crop embedders: a weights-free hand-crafted ReID descriptor and timm backbones."""
