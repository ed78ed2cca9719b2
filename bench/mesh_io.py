"""Benchmark: writing a large OBJ with vertex colours, lrmesh's writer beside trimesh's (the reference's), same bytes.

    python bench/mesh_io.py [--vertices 1000000] [--faces 2000000]

A random mesh of that size (the size of issue 17's stress surface); CPU time is the steadier figure on a
shared machine.
"""

from __future__ import annotations

import argparse
import time

import torch
import trimesh

from lrmesh.geometry.mesh import Mesh
from lrmesh.io.mesh import OBJ_FRAME, _obj_bytes, to_file_frame


def trimesh_obj(mesh: Mesh) -> bytes:
    vertices, faces = to_file_frame(OBJ_FRAME, mesh.vertices.numpy(), mesh.faces.numpy())
    tri = trimesh.Trimesh(vertices=vertices, faces=faces, process=False, vertex_colors=mesh.colors_uint8().numpy())
    return tri.export(file_type="obj").encode("utf-8")


def timed(write, mesh: Mesh) -> tuple[bytes, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    data = write(mesh)
    return data, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vertices", type=int, default=1_000_000)
    parser.add_argument("--faces", type=int, default=2_000_000)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    mesh = Mesh(vertices=torch.rand(args.vertices, 3, generator=generator) * 2 - 1,
                faces=torch.randint(0, args.vertices, (args.faces, 3), generator=generator))
    mesh.vertex_colors = torch.rand(args.vertices, 3, generator=generator)
    ours, ours_wall, ours_cpu = timed(_obj_bytes, mesh)
    theirs, their_wall, their_cpu = timed(trimesh_obj, mesh)
    print(f"OBJ with vertex colours, {args.vertices} vertices, {args.faces} faces, {len(ours) / 2**20:.0f} MiB; "
          f"identical bytes: {ours == theirs}")
    print(f"{'writer':<10}{'wall s':>10}{'CPU s':>10}")
    print(f"{'trimesh':<10}{their_wall:>10.2f}{their_cpu:>10.2f}")
    print(f"{'lrmesh':<10}{ours_wall:>10.2f}{ours_cpu:>10.2f}")
    print(f"trimesh / lrmesh: wall {their_wall / ours_wall:.1f}x, CPU {their_cpu / ours_cpu:.1f}x")


if __name__ == "__main__":
    main()
