"""One definition of the ImageNet statistics, shared by the model config and the video transforms.

On the 0-255 scale: the official X-CLIP ``img_norm_cfg`` (not CLIP's statistics). A module of its own
so that neither ``model/`` nor ``video/`` imports the other for them.
"""

IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)
