"""Zero123++ v1.2 (with InstantMesh's white-background UNet): one image -> six views. See pipeline.py."""
