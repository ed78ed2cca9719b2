"""The reconstruction model: encoder -> triplane transformer -> synthesizer (InstantMesh / InstantNeRF).

One model class for both released variants; `cfg.synthesizer.kind` picks the synthesizer.
"""

from __future__ import annotations

from torch import Tensor, nn

from lrmesh.config import ModelConfig
from lrmesh.errors import ConfigError
from lrmesh.model.lifting import ProjectedQueries
from lrmesh.model.synthesizers import MeshSynthesizer, NerfSynthesizer, make_synthesizer
from lrmesh.model.transformer import TriplaneTransformer
from lrmesh.model.vit import ImageEncoder


class LRM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ImageEncoder(cfg.encoder)
        self.transformer = TriplaneTransformer(cfg.transformer, cond_dim=cfg.encoder.hidden_size)
        self.synthesizer: MeshSynthesizer | NerfSynthesizer = make_synthesizer(
            cfg.synthesizer, cfg.transformer.triplane_dim)
        t = cfg.transformer
        if t.projected_samples < 0:
            raise ConfigError(f"transformer.projected_samples must be 0 (off) or positive, got {t.projected_samples}")
        self.lifting = (ProjectedQueries(t.low_res, t.projected_samples, cfg.synthesizer.box_warp,
                                         cfg.encoder.hidden_size, t.dim) if t.projected_samples > 0 else None)

    @property
    def kind(self) -> str:
        return self.cfg.synthesizer.kind

    def forward_planes(self, images: Tensor, cameras: Tensor) -> Tensor:
        """images (B, V, 3, H, W) in [0, 1], cameras (B, V, 16) -> triplanes (B, 3, C, 2r, 2r)."""
        if images.ndim != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be (B, V, 3, H, W), got {tuple(images.shape)}")
        if cameras.shape[:2] != images.shape[:2] or cameras.shape[-1] != self.cfg.encoder.camera_dim:
            raise ValueError(f"cameras must be (B, V, {self.cfg.encoder.camera_dim}) matching the images, "
                             f"got {tuple(cameras.shape)} for images {tuple(images.shape)}")
        return self.planes_from_tokens(self.encoder(images, cameras), cameras, images.shape[-2:])

    def planes_from_tokens(self, tokens: Tensor, cameras: Tensor, image_size: tuple[int, int]) -> Tensor:
        """The transformer half of `forward_planes`: encoder tokens (B, V * (1 + HW/p^2), D), the cameras they
        were made with (B, V, 16) and the (H, W) of the images given to the encoder -> triplanes."""
        if self.lifting is None:
            return self.transformer(tokens)
        size, patch = self.cfg.encoder.input_size, self.cfg.encoder.patch_size
        height, width = (size, size) if size else image_size  # the encoder resizes to input_size
        grid = (height // patch, width // patch)
        return self.transformer(tokens, self.lifting(tokens, cameras, grid))
