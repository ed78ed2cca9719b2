"""The one mesh type every stage hands to the next: extraction, colouring, texturing, export, rendering."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass
class Mesh:
    """A triangle mesh in the model frame (z up, object inside about [-1, 1]^3).

    Faces wind counter-clockwise seen from outside. Colour lives either on vertices or in a texture map
    addressed by separate UV indices (a seam vertex has one position but several UVs), never both.
    """

    vertices: Tensor  # (V, 3) float32
    faces: Tensor  # (F, 3) int64
    vertex_colors: Tensor | None = None  # (V, 3) float in [0, 1] (predictions may overshoot by 1e-3)
    uvs: Tensor | None = None  # (T, 2) float in [0, 1], v pointing up (OBJ convention)
    uv_faces: Tensor | None = None  # (F, 3) int64 indices into uvs, face for face with `faces`
    texture: Tensor | None = None  # (H, W, 3) float in [0, 1], row 0 is the top of the image

    def __post_init__(self) -> None:
        if self.vertices.ndim != 2 or self.vertices.shape[-1] != 3:
            raise ValueError(f"vertices must be (V, 3), got {tuple(self.vertices.shape)}")
        if self.faces.ndim != 2 or self.faces.shape[-1] != 3:
            raise ValueError(f"faces must be (F, 3), got {tuple(self.faces.shape)}")
        if self.vertex_colors is not None and self.vertex_colors.shape != self.vertices.shape:
            raise ValueError("vertex_colors must match vertices in shape")
        if (self.uvs is None) != (self.uv_faces is None) or (self.uvs is None) != (self.texture is None):
            raise ValueError("uvs, uv_faces and texture come together")

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def to(self, device: torch.device | str) -> Mesh:
        moved = {
            name: (value.to(device) if isinstance(value, Tensor) else value) for name, value in vars(self).items()
        }
        return Mesh(**moved)

    def detach(self) -> Mesh:
        return replace(self, **{k: v.detach() for k, v in vars(self).items() if isinstance(v, Tensor)})

    def colors_uint8(self) -> Tensor | None:
        """Vertex colours as the reference stores them: floor(255 * clamp(c, 0, 1)), truncation not rounding."""
        if self.vertex_colors is None:
            return None
        return (self.vertex_colors.clamp(0, 1) * 255).to(torch.uint8)


def transform_similarity(mesh: Mesh, similarity: Tensor) -> Mesh:
    """The mesh carried by a similarity (4, 4) [[s R, t], [0, 1]]: x -> s R x + t, computed in float64.

    Colours, UVs and texture are kept; a mirror (det < 0) reverses every face's corners (and its UV corners) so
    the faces still wind counter-clockwise seen from outside.
    """
    m = similarity.to(torch.float64).cpu()
    vertices = (mesh.vertices.double().cpu() @ m[:3, :3].T + m[:3, 3]).float()
    moved = replace(mesh.to("cpu"), vertices=vertices)
    if torch.det(m[:3, :3]) < 0:
        moved.faces = moved.faces.flip(-1)
        if moved.uv_faces is not None:
            moved.uv_faces = moved.uv_faces.flip(-1)
    return moved
