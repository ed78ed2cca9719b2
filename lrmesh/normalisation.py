"""How each model family normalises its encoder's input pixels, and why: the one place these numbers live.

The encoder sees (x - mean) / std per channel, x being RGB in [0, 1]. The right statistics are whatever the
weights were trained with, which is not always what the architecture's name suggests:

- **InstantMesh** (all four releases) and **OpenLRM v1.0** normalise with the image processor of
  `facebook/dino-vitb16`, loaded by `ViTImageProcessor.from_pretrained` (resize and rescale off). That
  processor's `preprocessor_config.json` on the Hugging Face hub has `image_mean` = `image_std` = [0.5, 0.5, 0.5]
  (unchanged since the file's first commit), so these models see x * 2 - 1, *not* the ImageNet statistics the
  ViT family is usually paired with. The same processor config ships with the DINO ViT-B/16 weights, so
  training from them uses it too.
- **OpenLRM v1.1** (DINOv2 with registers) feeds RGB in [0, 1] as it is.
- **lrmesh's own models** record their statistics in the checkpoint's config. The bundled small model was
  trained from scratch with the ImageNet statistics (lrmesh's default before 2026-12-01), and so was the
  instantmesh-tiny parity fixture's processor (its `config.yaml` gives them); both keep them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Normalisation:
    """Per-channel input statistics: the encoder sees (x - mean) / std, x RGB in [0, 1]."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str  # where the numbers come from


DINO_PROCESSOR = Normalisation(
    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    source="preprocessor_config.json of facebook/dino-vitb16 on the Hugging Face hub (x * 2 - 1)")
IMAGENET = Normalisation(
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
    source="the ImageNet statistics: lrmesh's default before 2026-12-01, kept by the bundled small model")
UNNORMALISED = Normalisation(
    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
    source="OpenLRM v1.1 feeds RGB in [0, 1] to its DINOv2 encoder unchanged")

# family -> the statistics its released weights were trained and are run with
FAMILY_NORMALISATION: dict[str, Normalisation] = {
    "instantmesh": DINO_PROCESSOR,
    "openlrm-v1.0": DINO_PROCESSOR,
    "openlrm-v1.1": UNNORMALISED,
    "lrmesh-small": IMAGENET,
}
