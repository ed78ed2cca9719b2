"""Datasets made here: procedural objects (`synthetic`) and multi-view renders of any mesh in the reference's
training layout, the Zero123++ grid or the NeRF-synthetic layout (`multiview`). `lrmesh synth` drives both.

The layout names live here, free of heavy imports, so that the command line can offer them cheaply.
"""

LAYOUTS = ("training", "zero123pp", "blender")
