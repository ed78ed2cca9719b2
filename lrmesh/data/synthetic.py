"""Procedural objects: seeded, varied, watertight parts with procedural colour, normalised into the model frame.

Why: reconstruction needs training and test objects with known ground truth, made anywhere without a download.

An object is 1 to `MAX_PARTS` primitives (boxes, ellipsoids, cylinders, cones, tori, capsules and extruded
star-shaped polygons), each stretched, uniformly scaled, rotated and placed so that it touches the parts
placed before it (its centre sits on a vertex of an earlier part). The "union" is a plain concatenation of
the closed parts: each part is a watertight mesh on its own, parts overlap and keep their hidden inner
surfaces. (A boolean union needs a CSG engine; neither trimesh nor the project ships one that works without
extra binaries, so none is used.) Sampling points on the whole mesh for metrics therefore includes those
hidden surfaces; `trimesh.Trimesh.split` recovers the parts.

Colour: each part gets a base colour and a second colour mixed by a pattern (solid, stripes, checker or
value noise) evaluated at the part's vertices in its own frame, measured in model units, so a pattern moves
with its part and has the same scale on every part. Parts are tessellated until no edge is longer than
`MAX_EDGE` (model units), so the vertex colours resolve the patterns.

Model frame (shared by every layout in `lrmesh.data.multiview`): z up, the object's bounding-box centre at
the origin, scaled so that its farthest vertex lies at `OBJECT_RADIUS` = 0.9 from the origin. So the object lies
inside [-0.9, 0.9]^3, the reference's [-1, 1] normalisation with a margin, inside the FlexiCubes grid
([-1.05, 1.05]); and from the Zero123++ cameras (radius 4.0, fov 30 degrees) its bounding sphere spans at most
tan(asin(0.9 / 4)) / tan(15 deg) = 86 % of the frame from any direction, so no view crops it and objects fill
the frame about as much as Zero123++'s Objaverse renders.

Determinism: every random number comes from `numpy.random.default_rng(seed)` (PCG64, the same stream on every
platform); no global state. Geometry is computed in float64 and stored as float32, so last-bit differences of a
platform's sin / cos do not survive.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable

import numpy as np
import torch
import trimesh
from trimesh import creation
from trimesh.remesh import subdivide_to_size

from lrmesh.geometry.mesh import Mesh

OBJECT_RADIUS = 0.9  # farthest vertex from the origin in the model frame (see the module docstring)
MAX_EDGE = 0.06  # model units: fine enough for the patterns' vertex colours; 10k to 60k triangles an object
MAX_PARTS = 5
MAX_SUBDIVISION_ROUNDS = 16  # each round halves the long edges; 16 is far more than any part needs
ROUND_SECTIONS = 64  # segments around round primitives
PART_SCALE_RANGE = (0.45, 1.0)  # uniform scale of the second and later parts, the first being 1
STAR_VERTICES = (5, 12)  # corners of an extruded star-shaped polygon
PATTERN_PERIOD = (0.2, 0.5)  # model units, several MAX_EDGE long so vertex colours resolve it
NOISE_LATTICE = 8  # value-noise lattice points per axis (wraps around)
STRIPE_SHARPNESS = 4.0  # tanh gain turning a sine into soft-edged stripes
SATURATION, VALUE = (0.35, 0.9), (0.45, 0.95)  # HSV ranges of part colours: no greys, no near-black

PART_KINDS = ("box", "ellipsoid", "cylinder", "cone", "torus", "capsule", "extrusion")
PATTERNS = ("solid", "stripes", "checker", "noise")


def random_object(seed: int) -> Mesh:
    """The procedural object of `seed`, in the model frame, with vertex colours (float32 / int64 tensors)."""
    rng = np.random.default_rng(seed)
    parts = _place_parts(rng, int(rng.integers(1, MAX_PARTS + 1)))
    all_vertices = np.concatenate([trimesh.transform_points(mesh.vertices, pose) for mesh, pose in parts])
    to_model = fit_transform(all_vertices)  # (4, 4)
    vertices, faces, colors, offset = [], [], [], 0
    for mesh, pose in parts:
        scale = _uniform_scale(to_model @ pose)  # local units -> model units
        local, part_faces = subdivide_to_size(mesh.vertices, mesh.faces, MAX_EDGE / scale,
                                              max_iter=MAX_SUBDIVISION_ROUNDS)
        colors.append(_part_colors(rng, local * scale))
        vertices.append(trimesh.transform_points(local, to_model @ pose))
        faces.append(part_faces + offset)
        offset += len(local)
    return Mesh(vertices=torch.from_numpy(np.concatenate(vertices).astype(np.float32)),
                faces=torch.from_numpy(np.concatenate(faces).astype(np.int64)),
                vertex_colors=torch.from_numpy(np.concatenate(colors).astype(np.float32)))


def fit_transform(vertices: np.ndarray, radius: float = OBJECT_RADIUS) -> np.ndarray:
    """The similarity taking points (V, 3) into the model frame: bounding-box centre to the origin, farthest
    point at `radius` -> (4, 4) float64, applied as p' = M @ [p, 1]."""
    vertices = np.asarray(vertices, dtype=np.float64)
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    extent = np.linalg.norm(vertices - centre, axis=1).max()
    if not np.isfinite(extent) or extent <= 0:
        raise ValueError("cannot normalise a mesh whose vertices all coincide or are not finite")
    scale = radius / extent
    matrix = np.eye(4)
    matrix[:3, :3] *= scale
    matrix[:3, 3] = -scale * centre
    return matrix


def _place_parts(rng: np.random.Generator, count: int) -> list[tuple[trimesh.Trimesh, np.ndarray]]:
    """`count` (local mesh, local-to-object pose) pairs; each part after the first is centred on a vertex of an
    earlier one, so the object stays in one piece."""
    parts: list[tuple[trimesh.Trimesh, np.ndarray]] = []
    for index in range(count):
        kind = PART_KINDS[int(rng.integers(len(PART_KINDS)))]
        mesh = _PRIMITIVES[kind](rng)
        scale = 1.0 if index == 0 else rng.uniform(*PART_SCALE_RANGE)
        pose = np.eye(4)
        pose[:3, :3] = scale * _random_rotation(rng)
        if parts:
            anchor_mesh, anchor_pose = parts[int(rng.integers(len(parts)))]
            anchor = anchor_mesh.vertices[int(rng.integers(len(anchor_mesh.vertices)))]
            pose[:3, 3] = trimesh.transform_points(anchor[None], anchor_pose)[0]
        parts.append((mesh, pose))
    return parts


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation (a normalised Gaussian quaternion) -> (3, 3)."""
    quaternion = rng.normal(size=4)
    return trimesh.transformations.quaternion_matrix(quaternion / np.linalg.norm(quaternion))[:3, :3]


def _uniform_scale(matrix: np.ndarray) -> float:
    """The scale factor of a similarity transform (4, 4)."""
    return float(np.cbrt(abs(np.linalg.det(matrix[:3, :3]))))


# Primitives, each about one unit across, centred on the origin -------------------------------------------


def _box(rng: np.random.Generator) -> trimesh.Trimesh:
    return creation.box(extents=rng.uniform(0.35, 1.0, size=3))


def _ellipsoid(rng: np.random.Generator) -> trimesh.Trimesh:
    sphere = creation.icosphere(subdivisions=4, radius=0.5)
    return trimesh.Trimesh(sphere.vertices * rng.uniform(0.5, 1.0, size=3), sphere.faces, process=False)


def _cylinder(rng: np.random.Generator) -> trimesh.Trimesh:
    return creation.cylinder(radius=rng.uniform(0.15, 0.5), height=rng.uniform(0.3, 1.2), sections=ROUND_SECTIONS)


def _cone(rng: np.random.Generator) -> trimesh.Trimesh:
    height = rng.uniform(0.4, 1.2)
    cone = creation.cone(radius=rng.uniform(0.2, 0.5), height=height, sections=ROUND_SECTIONS)
    cone.apply_translation([0.0, 0.0, -height / 2])  # trimesh puts the base at z = 0
    return cone


def _torus(rng: np.random.Generator) -> trimesh.Trimesh:
    return creation.torus(major_radius=rng.uniform(0.25, 0.45), minor_radius=rng.uniform(0.06, 0.18),
                          major_sections=ROUND_SECTIONS, minor_sections=ROUND_SECTIONS // 2)


def _capsule(rng: np.random.Generator) -> trimesh.Trimesh:
    return creation.capsule(height=rng.uniform(0.2, 0.8), radius=rng.uniform(0.12, 0.35),
                            count=[ROUND_SECTIONS // 2, ROUND_SECTIONS // 2])


def _extrusion(rng: np.random.Generator) -> trimesh.Trimesh:
    """A prism over a random polygon that is star-shaped about the origin, so a fan from the origin
    triangulates its caps."""
    corners = int(rng.integers(STAR_VERTICES[0], STAR_VERTICES[1] + 1))
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=corners))
    radii = rng.uniform(0.2, 0.55, size=corners)
    outline = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)  # (K, 2) counter-clockwise
    points = np.concatenate([np.zeros((1, 2)), outline])
    ring = np.arange(corners) + 1
    fan = np.stack([np.zeros(corners, dtype=np.int64), ring, np.roll(ring, -1)], axis=1)  # (K, 3)
    height = rng.uniform(0.15, 0.8)
    prism = creation.extrude_triangulation(points, fan, height)
    prism.apply_translation([0.0, 0.0, -height / 2])
    return prism


_PRIMITIVES: dict[str, Callable[[np.random.Generator], trimesh.Trimesh]] = {
    "box": _box, "ellipsoid": _ellipsoid, "cylinder": _cylinder, "cone": _cone, "torus": _torus,
    "capsule": _capsule, "extrusion": _extrusion,
}


# Colour ---------------------------------------------------------------------------------------------------


def _random_color(rng: np.random.Generator) -> np.ndarray:
    hue, saturation, value = rng.uniform(), rng.uniform(*SATURATION), rng.uniform(*VALUE)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value))


def _part_colors(rng: np.random.Generator, points: np.ndarray) -> np.ndarray:
    """Vertex colours of one part from its vertices (V, 3) in the part frame, in model units -> (V, 3) in [0, 1]."""
    base, second = _random_color(rng), _random_color(rng)
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    frequency = 1.0 / rng.uniform(*PATTERN_PERIOD)
    if pattern == "solid":
        mix = np.zeros(len(points))
    elif pattern == "stripes":
        direction = rng.normal(size=3)
        phase = 2 * np.pi * (frequency * points @ (direction / np.linalg.norm(direction)) + rng.uniform())
        mix = 0.5 + 0.5 * np.tanh(STRIPE_SHARPNESS * np.sin(phase))
    elif pattern == "checker":
        cells = np.floor(points * frequency + rng.uniform(size=3)).astype(np.int64)
        mix = (cells.sum(axis=1) % 2).astype(np.float64)
    else:
        mix = _value_noise(rng.uniform(size=(NOISE_LATTICE,) * 3), points * frequency)
    return base * (1 - mix[:, None]) + second * mix[:, None]


def _value_noise(lattice: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of a periodic random lattice (L, L, L) at points (V, 3) in lattice units -> (V,)."""
    size = lattice.shape[0]
    cell = np.floor(points)
    t = points - cell
    t = t * t * (3 - 2 * t)  # smoothstep, so the noise has no creases at cell faces
    base = cell.astype(np.int64)
    out = np.zeros(len(points))
    for corner in np.ndindex(2, 2, 2):
        index = (base + np.array(corner)) % size  # (V, 3)
        weight = np.prod(np.where(np.array(corner) == 1, t, 1 - t), axis=1)
        out += weight * lattice[index[:, 0], index[:, 1], index[:, 2]]
    return out
