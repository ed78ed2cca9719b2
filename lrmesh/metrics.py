"""Metrics for reconstructions: image PSNR / SSIM / LPIPS, and geometry Chamfer distance, F-score, volume IoU.

Protocol: InstantMesh (Xu et al. 2024, arXiv:2404.07191), section 4.1, evaluation metrics. It scores 2D visual
quality by rendering novel views of the generated mesh and comparing them with ground-truth renders (PSNR, SSIM,
LPIPS), and 3D geometric quality by first aligning the generated mesh to the ground truth's coordinate system,
then repositioning and re-scaling all meshes into the cube [-1, 1]^3, and computing Chamfer distance (CD) and
F-score (FS, threshold 0.2) from 16K points sampled uniformly on each surface. Our choices where it leaves room:

- Alignment is the identity: predictions and ground truths already share the model frame (z up), fixed by
  the input cameras.
- "Reposition and re-scale all meshes": each mesh on its own (`normalize="each"`, the default), its bounding box
  centred on the origin and scaled uniformly so that its longest side spans the cube. That is how the words read,
  and it keeps our numbers comparable with the paper's. Its consequence: a prediction's error in overall scale or
  position is not measured, and one stray fragment shrinks the rest of the prediction. `normalize="gt"` applies
  the ground truth's transform to both meshes instead, so scale and offset errors count.
- Chamfer distance: the mean of the two directed mean nearest-neighbour distances, Euclidean (L2, not squared):
  CD = 1/2 (mean_{p in P} min_{g in G} |p - g| + mean_{g in G} min_{p in P} |g - p|). The paper gives no formula.
- F-score at threshold t: precision = fraction of predicted points within t of the ground-truth points,
  recall = fraction of ground-truth points within t of the predicted ones, F = 2 P R / (P + R) (0 when both are
  0). We report t = 0.2 (the paper's) and the stricter t = 0.1.
- Volume IoU, which InstantMesh does not report but its baselines' papers do (e.g. SyncDreamer, Wonder3D):
  |inside both| / |inside either| over points uniform in the normalisation cube, inside-ness by the generalised
  winding number (Jacobson et al. 2013, "Robust inside-outside segmentation using generalized winding numbers"):
  w(p) = sum over triangles of their signed solid angle at p / 4 pi, inside where w > 1/2. For a closed mesh w is
  1 inside and 0 outside; for our ground truths, unions of overlapping closed parts kept as separate shells, it
  is the number of parts containing p, so the overlaps count once; for a prediction with holes it degrades
  gracefully instead of flipping whole regions. Evaluated with Barill et al. 2018's far-field expansion
  ("Fast winding numbers for soups and clouds", order 1, one level of clusters; exact near the surface).
- The ground truth's surface is its outer surface (`GeometryProtocol.gt_surface="outer"`): the data engine's
  objects are unions of closed parts kept as overlapping shells, and the shells' parts inside other parts are no
  surface of the object (no image shows them, no reconstruction can have them); sampled on every triangle
  (`"all"`) they would count as misses against every method. For a mesh of one shell the two are the same.
- An empty prediction scores the worst possible result: Chamfer 2 sqrt(3) (the cube's diagonal, the largest
  distance between two points of the normalisation cube, so no prediction normalised with "each" scores worse),
  F-scores 0, volume IoU 0.

Image metrics take (N, 3, H, W) in [0, 1]. LPIPS needs torchvision and an ImageNet backbone already on disk: no
function here ever downloads anything (see `load_lpips`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree
from torch import Tensor

from lrmesh.geometry.mesh import Mesh

SURFACE_POINTS = 16_000  # InstantMesh samples 16K points on each surface
FSCORE_THRESHOLDS = (0.1, 0.2)  # the paper's 0.2, and a stricter one
VOLUME_POINTS = 20_000  # IoU standard error ~ sqrt(IoU (1 - IoU) / points inside either): <= 0.007 at 30 % fill
CUBE_HALF_SIDE = 1.0  # the normalisation cube is [-1, 1]^3
WORST_CHAMFER = 2 * math.sqrt(3) * CUBE_HALF_SIDE  # the cube's diagonal
OUTER_PROBE_OFFSET = 1e-4  # mesh units: how far outside its face `outer_surface_points` tests a point
INSIDE_WINDING = 0.5  # Jacobson et al. 2013: inside where the winding number exceeds 1/2
SPHERE_SUBDIVISIONS = 3  # icosphere of 1280 faces: its surface within 0.5 % of the radius of the true sphere

# Fast winding numbers (Barill et al. 2018): a cluster of triangles seen from farther than FAR_FIELD_RATIO times
# its radius contributes through its dipole term. 2 is their default accuracy parameter; order 1 at ratio 2 keeps
# the error within about 0.04 of the exact winding number on procedural objects (tests/test_metrics.py checks
# < 0.05), far from the 1/2 threshold wherever the exact value is an integer, as it is off a closed surface.
FAR_FIELD_RATIO = 2.0
CLUSTER_GRID = 16  # triangles are clustered by their centroid's cell in a 16^3 grid over the mesh's bounds
PAIRS_PER_CHUNK = 1 << 20  # (point, triangle) or (point, cluster) pairs evaluated at once: ~100 MB at peak
EXACT_PAIRS = 4 * PAIRS_PER_CHUNK  # below this many (point, triangle) pairs clustering costs more than it saves

GeometryMetrics = dict[str, float]  # "chamfer", "fscore@0.1", "fscore@0.2", "volume_iou" (see fscore_key)


@dataclass
class GeometryProtocol:
    """How `geometry_metrics` samples and normalises (defaults: the InstantMesh protocol, see the module doc)."""

    surface_points: int = SURFACE_POINTS  # points sampled on each surface for Chamfer and F-score
    volume_points: int = VOLUME_POINTS  # points uniform in the normalisation cube for volume IoU
    thresholds: tuple[float, ...] = FSCORE_THRESHOLDS  # F-score distance thresholds (normalised units)
    normalize: Literal["each", "gt"] = "each"  # each mesh into the cube on its own, or both by the GT's transform
    # Which ground-truth surface Chamfer and F-score sample: "outer", the boundary of the union of its connected
    # parts (surfaces hidden inside other parts dropped, `outer_surface_points`); "all", every triangle.
    gt_surface: Literal["outer", "all"] = "outer"


def fscore_key(threshold: float) -> str:
    """The result key of an F-score threshold: 0.1 -> "fscore@0.1"."""
    return f"fscore@{threshold:g}"


# Images ---------------------------------------------------------------------------------------------------


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Mean over images of 10 log10(1 / MSE_i), MSE_i over image i's pixels and channels; data range 1.

    pred, target: (N, 3, H, W) in [0, 1] -> scalar tensor (dB; inf for identical images).
    Example: every pixel off by 0.1 gives MSE 0.01 and 20 dB.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(pred, target, data_range=1.0, dim=(1, 2, 3), reduction="elementwise_mean")


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """Mean SSIM (Wang et al. 2004; Gaussian window 11 px, sigma 1.5, data range 1) over images and pixels.

    pred, target: (N, 3, H, W) in [0, 1] -> scalar tensor in [-1, 1], 1 for identical images.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(pred, target, data_range=1.0)


# torchmetrics' LPIPS backbones and the torchvision ImageNet weight files they load (torchvision.models:
# VGG16_Weights, AlexNet_Weights, SqueezeNet1_1_Weights .IMAGENET1K_V1), which torch.hub keeps in
# <torch.hub.get_dir()>/checkpoints/. LPIPS's own linear heads ship inside torchmetrics.
LPIPS_BACKBONE_FILES = {
    "vgg": "vgg16-397923af.pth",
    "alex": "alexnet-owt-7be5be79.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}
TORCHVISION_WEIGHTS_URL = "https://download.pytorch.org/models/"
_lpips_warned = False  # warn once per process that LPIPS is skipped


def lpips_weights_path(net: str = "vgg") -> Path:
    """Where torchvision looks for the ImageNet weights of LPIPS backbone `net` before it would download them."""
    if net not in LPIPS_BACKBONE_FILES:
        raise ValueError(f"LPIPS backbone must be one of {sorted(LPIPS_BACKBONE_FILES)}, got {net!r}")
    return Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE_FILES[net]


def load_lpips(net: Literal["vgg", "alex", "squeeze"] = "vgg") -> torch.nn.Module | None:
    """torchmetrics' LearnedPerceptualImagePatchSimilarity (inputs in [0, 1], normalize=True; mean over the batch)
    in eval mode on the CPU, or None when it cannot be built offline.

    It is built only if torchvision imports and the backbone's ImageNet weights are already in the torch hub
    cache (`lpips_weights_path`), so nothing is ever downloaded. Otherwise it returns None and, once per process,
    warns which file is needed where.
    """
    global _lpips_warned
    import importlib.util

    path = lpips_weights_path(net)
    missing = []
    if importlib.util.find_spec("torchvision") is None:
        missing.append("torchvision (pip install torchvision)")
    if not path.is_file():
        missing.append(f"the {net} ImageNet weights at {path} (from {TORCHVISION_WEIGHTS_URL}{path.name})")
    if not missing:
        try:
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

            return LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True).eval()
        except (ImportError, OSError, RuntimeError) as err:
            missing.append(f"a loadable backbone ({type(err).__name__}: {err})")
    if not _lpips_warned:
        _lpips_warned = True
        warnings.warn(f"LPIPS is skipped: it needs {' and '.join(missing)}; lrmesh never downloads weights",
                      stacklevel=2)
    return None


# Surfaces -------------------------------------------------------------------------------------------------


def sample_surface(mesh: Mesh, count: int, seed: int = 0) -> Tensor:
    """`count` points uniform over the surface's area (faces drawn with probability proportional to area, then
    a uniform point in the triangle) -> (count, 3) float32 on the CPU. The same seed gives the same points.

    A mesh whose faces all have zero area is sampled as if they had equal areas.
    """
    return _sample_surface_faces(mesh, count, seed)[0]


def _sample_surface_faces(mesh: Mesh, count: int, seed: int) -> tuple[Tensor, np.ndarray]:
    """`sample_surface`'s points and the face each lies on -> (count, 3) float32, (count,) int."""
    if mesh.num_faces == 0:
        raise ValueError("cannot sample the surface of a mesh without faces")
    rng = np.random.default_rng(seed)
    corners = mesh.vertices.detach().cpu().double().numpy()[mesh.faces.cpu().numpy()]  # (F, 3, 3)
    edge1, edge2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    areas = 0.5 * np.linalg.norm(np.cross(edge1, edge2), axis=-1)
    cumulative = np.cumsum(areas if areas.sum() > 0 else np.ones_like(areas))
    face = np.searchsorted(cumulative, rng.random(count) * cumulative[-1], side="right")
    face = np.minimum(face, len(areas) - 1)  # guards the float edge case u * total == total
    u, v = rng.random((2, count))
    outside = u + v > 1  # fold the far half of the unit square back onto the triangle
    u[outside], v[outside] = 1 - u[outside], 1 - v[outside]
    points = corners[face, 0] + u[:, None] * edge1[face] + v[:, None] * edge2[face]
    return torch.from_numpy(points.astype(np.float32)), face


def nearest_distances(points: Tensor | np.ndarray, others: Tensor | np.ndarray) -> np.ndarray:
    """For each of `points` (P, 3) the Euclidean distance to the nearest of `others` (Q, 3) -> (P,) float64."""
    others = np.asarray(others, dtype=np.float64)
    distances, _ = cKDTree(others).query(np.asarray(points, dtype=np.float64), k=1)
    return distances


def chamfer_distance(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """1/2 (mean_a min_b |a - b| + mean_b min_a |b - a|) for point sets a (P, 3), b (Q, 3); L2, not squared.

    Example: b = a shifted by 0.1 along x, both dense on a line along y -> 0.1.
    """
    return _chamfer(nearest_distances(a, b), nearest_distances(b, a))


def f_score(pred: Tensor | np.ndarray, gt: Tensor | np.ndarray, threshold: float) -> float:
    """2 P R / (P + R), P the fraction of `pred` (P, 3) within `threshold` of `gt` (Q, 3), R the fraction of
    `gt` within `threshold` of `pred`; 0 when P + R = 0. Distances strictly below the threshold count."""
    return _f_score(nearest_distances(pred, gt), nearest_distances(gt, pred), threshold)


def _chamfer(pred_to_gt: np.ndarray, gt_to_pred: np.ndarray) -> float:
    return float(0.5 * (pred_to_gt.mean() + gt_to_pred.mean()))


def _f_score(pred_to_gt: np.ndarray, gt_to_pred: np.ndarray, threshold: float) -> float:
    precision = float((pred_to_gt < threshold).mean())
    recall = float((gt_to_pred < threshold).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


# Normalisation --------------------------------------------------------------------------------------------


def cube_transform(mesh: Mesh) -> tuple[Tensor, float]:
    """The similarity x -> (x - centre) * scale taking `mesh`'s bounding box (of the vertices its faces use) into
    [-1, 1]^3, centred, its longest side spanning the cube -> centre (3,), scale. A flat point gets scale 1."""
    used = mesh.vertices[mesh.faces.unique()] if mesh.num_faces else mesh.vertices
    low, high = used.min(dim=0).values, used.max(dim=0).values
    extent = float((high - low).max())
    return (low + high) / 2, (2 * CUBE_HALF_SIDE / extent if extent > 0 else 1.0)


def transform_mesh(mesh: Mesh, centre: Tensor, scale: float) -> Mesh:
    """`mesh` with its vertices mapped by x -> (x - centre) * scale (colours and faces kept)."""
    return replace(mesh, vertices=(mesh.vertices - centre.to(mesh.vertices)) * scale)


# Winding numbers ------------------------------------------------------------------------------------------


def solid_angles(points: Tensor, triangles: Tensor) -> Tensor:
    """Signed solid angle of each triangle seen from each point (Van Oosterom & Strackee 1983):

        tan(Omega / 2) = a . (b x c) / (|a||b||c| + (a . b)|c| + (b . c)|a| + (c . a)|b|),

    a, b, c the corners relative to the point. Positive when the point sees the triangle's back (the inside of a
    counter-clockwise-outward mesh). points (P, 3), triangles (F, 3, 3) -> (P, F); 0 at a corner.
    """
    rel = triangles[None] - points[:, None, None]  # (P, F, 3, 3)
    a, b, c = rel.unbind(dim=2)  # (P, F, 3) each
    la, lb, lc = a.norm(dim=-1), b.norm(dim=-1), c.norm(dim=-1)
    det = (a * torch.linalg.cross(b, c, dim=-1)).sum(dim=-1)
    denominator = la * lb * lc + (a * b).sum(-1) * lc + (b * c).sum(-1) * la + (c * a).sum(-1) * lb
    return 2 * torch.atan2(det, denominator)


def winding_number(points: Tensor, vertices: Tensor, faces: Tensor) -> Tensor:
    """Generalised winding number w(p) = sum_f Omega_f(p) / 4 pi (Jacobson et al. 2013), exact, chunked over
    points. points (P, 3), vertices (V, 3), faces (F, 3) -> (P,), on the points' device."""
    triangles = vertices.to(points)[faces.to(points.device)]  # (F, 3, 3)
    out = torch.zeros(points.shape[0], dtype=points.dtype, device=points.device)
    if triangles.shape[0] == 0:
        return out
    step = max(1, PAIRS_PER_CHUNK // triangles.shape[0])
    for start in range(0, points.shape[0], step):
        out[start:start + step] = solid_angles(points[start:start + step], triangles).sum(dim=1) / (4 * math.pi)
    return out


@dataclass
class _Clusters:
    """Triangles grouped by the grid cell of their centroid, with each group's far-field data."""

    triangles: Tensor  # (F, 3, 3), sorted by cluster
    starts: list[int]  # cluster k owns triangles[starts[k]:starts[k + 1]]
    centres: Tensor  # (K, 3) area-weighted centroid
    radii: Tensor  # (K,) largest distance from the centre to a corner of the cluster's triangles
    dipoles: Tensor  # (K, 3) sum of the area vectors (area x unit normal) of the cluster's triangles


def _cluster_triangles(triangles: Tensor, grid: int = CLUSTER_GRID) -> _Clusters:
    centroids = triangles.mean(dim=1)  # (F, 3)
    low, high = centroids.min(dim=0).values, centroids.max(dim=0).values
    cell = ((centroids - low) / (high - low).clamp(min=1e-12) * grid).long().clamp(0, grid - 1)
    key = (cell[:, 0] * grid + cell[:, 1]) * grid + cell[:, 2]
    _, cluster = torch.unique(key, return_inverse=True)  # (F,) in 0..K-1
    order = torch.argsort(cluster)
    triangles, cluster, centroids = triangles[order], cluster[order], centroids[order]
    k = int(cluster.max()) + 1
    area_vectors = 0.5 * torch.linalg.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    areas = area_vectors.norm(dim=-1, keepdim=True)  # (F, 1)
    counts = torch.bincount(cluster, minlength=k)
    zeros = triangles.new_zeros(k, 3)
    weighted = zeros.index_add(0, cluster, centroids * areas)
    total_area = triangles.new_zeros(k, 1).index_add(0, cluster, areas)
    plain_mean = zeros.index_add(0, cluster, centroids) / counts[:, None]
    centres = torch.where(total_area > 0, weighted / total_area.clamp(min=1e-30), plain_mean)
    reach = (triangles - centres[cluster][:, None]).norm(dim=-1).amax(dim=1)  # (F,)
    radii = triangles.new_zeros(k).scatter_reduce(0, cluster, reach, reduce="amax", include_self=True)
    starts = [0, *torch.cumsum(counts, 0).tolist()]
    return _Clusters(triangles, starts, centres, radii, zeros.index_add(0, cluster, area_vectors))


def fast_winding_number(points: Tensor, vertices: Tensor, faces: Tensor,
                        far_field_ratio: float = FAR_FIELD_RATIO) -> Tensor:
    """The generalised winding number with Barill et al. 2018's far field (order 1, one level of clusters).

    A cluster of triangles with area-vector sum N (its dipole), centre c and radius r contributes, seen from a
    point p with |c - p| > far_field_ratio * r, N . (c - p) / (4 pi |c - p|^3), the solid angle of a small
    oriented patch; nearer clusters are summed exactly (`solid_angles`), and so is everything when there are
    fewer than EXACT_PAIRS (point, triangle) pairs. points (P, 3), vertices (V, 3), faces (F, 3) -> (P,), on the
    points' device; memory bounded by PAIRS_PER_CHUNK.
    """
    if points.shape[0] * faces.shape[0] < EXACT_PAIRS:
        return winding_number(points, vertices, faces)
    out = torch.zeros(points.shape[0], dtype=points.dtype, device=points.device)
    clusters = _cluster_triangles(vertices.to(points)[faces.to(points.device)])
    k = clusters.centres.shape[0]
    dipole_at_centre = (clusters.dipoles * clusters.centres).sum(dim=-1)  # (K,) N . c
    near_points, near_clusters = [], []
    step = max(1, PAIRS_PER_CHUNK // k)
    for start in range(0, points.shape[0], step):
        chunk = points[start:start + step]
        distance = torch.cdist(chunk, clusters.centres)  # (p, K)
        far = distance > far_field_ratio * clusters.radii
        flux = (dipole_at_centre - chunk @ clusters.dipoles.T) / distance.clamp(min=1e-12) ** 3  # N . (c - p) / d^3
        out[start:start + step] = torch.where(far, flux, 0.0).sum(dim=1) / (4 * math.pi)
        point_index, cluster_index = (~far).nonzero(as_tuple=True)
        near_points.append(point_index + start)
        near_clusters.append(cluster_index)
    near_point, near_cluster = torch.cat(near_points), torch.cat(near_clusters)
    order = torch.argsort(near_cluster, stable=True)
    near_point, near_cluster = near_point[order], near_cluster[order]
    bounds = torch.searchsorted(near_cluster, torch.arange(k + 1, device=points.device)).tolist()
    for cluster in range(k):
        owners = near_point[bounds[cluster]:bounds[cluster + 1]]
        if owners.numel() == 0:
            continue
        triangles = clusters.triangles[clusters.starts[cluster]:clusters.starts[cluster + 1]]
        step = max(1, PAIRS_PER_CHUNK // triangles.shape[0])
        for start in range(0, owners.numel(), step):
            index = owners[start:start + step]
            out.index_add_(0, index, solid_angles(points[index], triangles).sum(dim=1) / (4 * math.pi))
    return out


def cube_points(count: int, seed: int = 0) -> Tensor:
    """`count` points uniform in the normalisation cube [-1, 1]^3 -> (count, 3) float32, the same for a seed."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(-CUBE_HALF_SIDE, CUBE_HALF_SIDE, (count, 3)).astype(np.float32))


def inside(mesh: Mesh, points: Tensor) -> Tensor:
    """Whether each point (P, 3) is inside `mesh` by its generalised winding number (> 1/2) -> (P,) bool."""
    return fast_winding_number(points, mesh.vertices.float(), mesh.faces) > INSIDE_WINDING


def outer_surface_points(mesh: Mesh, count: int, seed: int = 0, oversample: int = 3) -> Tensor:
    """About `count` points uniform over the boundary of the union of a mesh's connected parts -> (<= count, 3).

    Each part is sampled in proportion to its area (`oversample` times more points than needed), the points
    inside any other part (winding number > 1/2) are dropped, and `count` of the rest are kept at random. For
    objects made of overlapping closed parts, as `lrmesh synth` makes them, this removes the hidden inner surfaces,
    which no reconstruction from images can see. Fewer than `count` come back only when most area is hidden. A
    mesh of one connected part gets `sample_surface`'s points.
    """
    tri = trimesh.Trimesh(mesh.vertices.detach().cpu().double().numpy(), mesh.faces.cpu().numpy(), process=False)
    parts = [Mesh(vertices=torch.from_numpy(np.asarray(p.vertices, np.float32)),
                  faces=torch.from_numpy(np.asarray(p.faces, np.int64))) for p in tri.split(only_watertight=False)]
    if len(parts) <= 1:  # one shell hides nothing: the plain samples, the same points as `sample_surface`
        return sample_surface(mesh, count, seed)
    areas = np.array([max(float(trimesh.Trimesh(p.vertices.numpy(), p.faces.numpy(), process=False).area), 0.0)
                      for p in parts])
    shares = np.ceil(oversample * count * areas / max(areas.sum(), 1e-12)).astype(int)
    kept = []
    for k, (part, share) in enumerate(zip(parts, shares, strict=True)):
        if share == 0 or part.num_faces == 0:
            continue
        points, face = _sample_surface_faces(part, int(share), seed + k)
        # Tested a hair outside, along the face normal: a face lying on another part's face (coplanar) is outer
        # surface, and exactly on a boundary the winding number is 1/2 either way.
        corners = part.vertices[part.faces[torch.from_numpy(face)]]
        normals = torch.nn.functional.normalize(
            torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), dim=-1)
        probes = points + OUTER_PROBE_OFFSET * normals
        hidden = torch.zeros(points.shape[0], dtype=torch.bool)
        for j, other in enumerate(parts):
            if j != k:
                hidden |= inside(other, probes)
        kept.append(points[~hidden])
    points = torch.cat(kept)
    if points.shape[0] > count:
        order = np.random.default_rng(seed).permutation(points.shape[0])[:count]
        points = points[torch.from_numpy(order)]
    return points


def volume_iou(pred: Mesh, gt: Mesh, count: int = VOLUME_POINTS, seed: int = 0,
               device: torch.device | str = "cpu") -> float:
    """|inside pred and gt| / |inside pred or gt| over `count` points uniform in [-1, 1]^3 (give meshes already
    in the normalisation cube, as `geometry_metrics` does); inside by the generalised winding number. 0 when no
    point is inside either. Monte Carlo: the standard error is about sqrt(IoU (1 - IoU) / points inside either).
    """
    points = cube_points(count, seed).to(device)
    return _iou(inside(pred.to(device), points), inside(gt.to(device), points))


def _iou(a: Tensor, b: Tensor) -> float:
    union = int((a | b).sum())
    return 0.0 if union == 0 else int((a & b).sum()) / union


# Sphere baseline ------------------------------------------------------------------------------------------


def fit_sphere(points: Tensor | np.ndarray) -> tuple[Tensor, float]:
    """Least-squares sphere through points (P, 3), P >= 4 not coplanar -> centre (3,) float32, radius.

    Algebraic fit: |p|^2 = 2 c . p + (r^2 - |c|^2) is linear in (c, r^2 - |c|^2), solved by least squares in
    float64; exact for points on a sphere.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or p.shape[0] < 4:
        raise ValueError(f"a sphere fit needs at least 4 points (P, 3), got shape {p.shape}")
    system = np.concatenate([2 * p, np.ones((p.shape[0], 1))], axis=1)  # (P, 4)
    solution, _, rank, _ = np.linalg.lstsq(system, (p * p).sum(axis=1), rcond=None)
    if rank < 4:
        raise ValueError("a sphere fit needs points that are not all on one plane")
    centre = solution[:3]
    radius = math.sqrt(max(solution[3] + centre @ centre, 0.0))
    return torch.from_numpy(centre.astype(np.float32)), radius


def sphere_mesh(centre: Tensor, radius: float, subdivisions: int = SPHERE_SUBDIVISIONS) -> Mesh:
    """An icosphere (faces counter-clockwise seen from outside) of `radius` about `centre` (3,)."""
    ball = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    vertices = torch.from_numpy(np.asarray(ball.vertices, dtype=np.float32)) + torch.as_tensor(centre).float().cpu()
    return Mesh(vertices, torch.from_numpy(np.asarray(ball.faces, dtype=np.int64)))


# All geometry metrics -------------------------------------------------------------------------------------


@dataclass
class GroundTruth:
    """A ground-truth mesh prepared once for scoring several predictions against it (`prepare_ground_truth`)."""

    mesh: Mesh  # in the normalisation cube, on the CPU
    centre: Tensor  # (3,) and scale: its normalisation, x -> (x - centre) * scale
    scale: float
    surface: Tensor  # (S, 3) points sampled on `mesh`
    tree: cKDTree  # nearest-neighbour index over `surface`
    volume_points: Tensor  # (Q, 3) uniform in the cube, on the winding-number device
    inside: Tensor  # (Q,) bool, which volume points are inside `mesh`
    protocol: GeometryProtocol
    seed: int


def prepare_ground_truth(gt: Mesh, protocol: GeometryProtocol | None = None, seed: int = 0,
                         device: torch.device | str = "cpu") -> GroundTruth:
    """Normalise `gt`, sample its surface and find which volume points it contains (on `device`)."""
    protocol = protocol or GeometryProtocol()
    if gt.num_faces == 0:
        raise ValueError("the ground-truth mesh has no faces")
    centre, scale = cube_transform(gt)
    mesh = transform_mesh(gt.detach().to("cpu"), centre, scale)
    surface = gt_surface_points(mesh, protocol, seed)
    points = cube_points(protocol.volume_points, seed).to(device)
    return GroundTruth(mesh, centre.cpu(), scale, surface, cKDTree(surface.double().numpy()), points,
                       inside(mesh.to(device), points), protocol, seed)


def gt_surface_points(gt: Mesh, protocol: GeometryProtocol, seed: int = 0) -> Tensor:
    """protocol.surface_points points on the ground truth's surface as `protocol.gt_surface` defines it."""
    if protocol.gt_surface == "outer":
        return outer_surface_points(gt, protocol.surface_points, seed)
    if protocol.gt_surface == "all":
        return sample_surface(gt, protocol.surface_points, seed)
    raise ValueError(f"gt_surface must be 'outer' or 'all', got {protocol.gt_surface!r}")


def worst_geometry(protocol: GeometryProtocol) -> GeometryMetrics:
    """The result of an empty prediction: the cube's diagonal as Chamfer distance, F-scores and IoU 0."""
    return {"chamfer": WORST_CHAMFER, **{fscore_key(t): 0.0 for t in protocol.thresholds}, "volume_iou": 0.0}


def geometry_metrics(pred: Mesh, gt: Mesh | GroundTruth, protocol: GeometryProtocol | None = None, seed: int = 0,
                     device: torch.device | str = "cpu") -> GeometryMetrics:
    """Chamfer distance, F-scores and volume IoU of `pred` against `gt` (both in the model frame) under the
    InstantMesh protocol (see the module docstring) -> {"chamfer", "fscore@<t>" per threshold, "volume_iou"}.

    `gt` may be a `GroundTruth` already prepared (then its protocol, seed and device are used), so that several
    predictions share its work. An empty prediction gets `worst_geometry`. Winding numbers run on `device`;
    sampling and nearest neighbours on the CPU. The same seed gives the same numbers.
    """
    if not isinstance(gt, GroundTruth):
        gt = prepare_ground_truth(gt, protocol, seed, device)
    protocol = gt.protocol
    if pred.num_faces == 0:
        return worst_geometry(protocol)
    centre, scale = cube_transform(pred) if protocol.normalize == "each" else (gt.centre, gt.scale)
    pred = transform_mesh(pred.detach().to("cpu"), centre.cpu(), scale)
    pred_points = sample_surface(pred, protocol.surface_points, gt.seed)
    pred_to_gt, _ = gt.tree.query(pred_points.double().numpy(), k=1)
    gt_to_pred = nearest_distances(gt.surface, pred_points)
    pred_inside = inside(pred.to(gt.volume_points.device), gt.volume_points)
    return {
        "chamfer": _chamfer(pred_to_gt, gt_to_pred),
        **{fscore_key(t): _f_score(pred_to_gt, gt_to_pred, t) for t in protocol.thresholds},
        "volume_iou": _iou(pred_inside, gt.inside),
    }
