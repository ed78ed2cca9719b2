"""Datasets made here: procedural objects (`synthetic`) and multi-view renders of any mesh in the reference's
training layout, the Zero123++ grid, or the per-scene NeRF-synthetic, NeuS DTU and COLMAP layouts (`multiview`);
`lrmesh synth` drives both. `scenes` loads the per-scene layouts (`colmap` reads and writes COLMAP models).

The layout names live here, free of heavy imports, so that the command line can offer them cheaply.
"""

LAYOUTS = ("training", "zero123pp", "blender", "dtu", "colmap")
