"""lrmesh: a few images of an object in, a 3D mesh out (InstantMesh / LRM family)."""

__version__ = "0.1.0"
