"""Lookup tables of FlexiCubes / Dual Marching Cubes (data only; the algorithm is in `flexicubes.py`).

Source: `tables.py` of nv-tlabs/FlexiCubes (https://github.com/nv-tlabs/FlexiCubes), as vendored in
TencentARC/InstantMesh at commit 08822c52fdc399b93ea00e4fa9e596344ed52ccc (src/models/geometry/rep_3d/tables.py).
The numbers are those of the vendored file; they are identical to nv-tlabs/FlexiCubes at its current HEAD.

License: Copyright (c) 2023-2025 NVIDIA CORPORATION & AFFILIATES. nv-tlabs/FlexiCubes is distributed under the
Apache License, Version 2.0 (relicensed in nv-tlabs/FlexiCubes commit eac4970, "update licence", April 2025;
the copy vendored in InstantMesh still carries the earlier NVIDIA source-code header). You may obtain a copy of
the license at http://www.apache.org/licenses/LICENSE-2.0. Unless required by applicable law or agreed to in
writing, the data is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND. Change made
here: the tables are stored in the compact text encoding described below and decoded at import time; the
decoded lists equal the original nested lists entry for entry (checked by tests/geometry/test_flexicubes.py).

Cube numbering (shared by every table): corner k sits at offset (k & 1, (k >> 1) & 1, (k >> 2) & 1) along
(x, y, z); the 12 edges are `CUBE_EDGES` (pairs of corners, in that orientation). A marching-cubes case id is
sum(2**k for the corners k that are inside, i.e. have sdf < 0).

Encodings:
- `_DMC_CODE[case]`: the dual vertices a cube of that case emits, separated by spaces; each dual vertex is the
  string of the edges (one base-13 digit per edge, 'a' = 10, 'b' = 11) whose crossings it averages.
- `_NUM_VD_CODE`: one decimal digit per case, the number of dual vertices.
- `_AMBIGUOUS_CASES[case] = (dx, dy, dz, replacement)`: cases C16 / C19 with an ambiguous face; if the neighbour
  cube at offset (dx, dy, dz) is ambiguous too, the case is replaced (supplementary material, section 1.3).
- `_TET_CODE`: six base-13 digits per case, '-' for -1 (only used for tetrahedral output, kept for completeness).
"""

from __future__ import annotations

NUM_CASES = 256
MAX_DUAL_VERTS = 4  # most dual vertices one cube emits
MAX_EDGES_PER_DUAL_VERT = 7  # most crossed edges one dual vertex averages
_DIGITS = "0123456789abc"
_PAD = -1

CUBE_CORNERS = [[k & 1, (k >> 1) & 1, (k >> 2) & 1] for k in range(8)]  # (8, 3) offsets along (x, y, z)
CUBE_EDGES = [[0, 1], [1, 5], [4, 5], [0, 4], [2, 3], [3, 7], [6, 7], [2, 6], [2, 0], [3, 1], [7, 5], [6, 4]]

# fmt: off
_DMC_CODE = (
    # cases 0-15
    "", "038", "019", "1389", "478", "0347", "019 478", "13479", "459", "038 459", "0145", "13458",
    "5789", "03579", "01578", "1357",
    # cases 16-31
    "23b", "028b", "019 23b", "1289b", "478 23b", "0247b", "019 478 23b", "12479b", "459 23b",
    "028b 459", "0145 23b", "12458b", "5789 23b", "02579b", "01578 23b", "1257b",
    # cases 32-47
    "12a", "038 12a", "029a", "2389a", "478 12a", "0347 12a", "029a 478", "23479a", "459 12a",
    "038 459 12a", "0245a", "23458a", "5789 12a", "03579 12a", "02578a", "2357a",
    # cases 48-63
    "13ab", "018ab", "039ab", "89ab", "478 13ab", "0147ab", "039ab 478", "479ab", "459 13ab",
    "018ab 459", "0345ab", "458ab", "5789 13ab", "01579ab", "03578ab", "57ab",
    # cases 64-79
    "67b", "038 67b", "019 67b", "1389 67b", "468b", "0346b", "019 468b", "13469b", "459 67b",
    "038 459 67b", "0145 67b", "13458 67b", "5689b", "03569b", "01568b", "1356b",
    # cases 80-95
    "2367", "02678", "019 2367", "126789", "23468", "0246", "019 23468", "12469", "459 2367",
    "02678 459", "0145 2367", "1245678", "235689", "02569", "0123568", "1256",
    # cases 96-111
    "12a 67b", "038 12a 67b", "029a 67b", "2389a 67b", "468b 12a", "0346b 12a", "029a 468b", "23469ab",
    "459 12a 67b", "038 459 12a 67b", "0245a 67b", "23458a 67b", "5689b 12a", "03569b 12a", "02568ab",
    "2356ab",
    # cases 112-127
    "1367a", "01678a", "03679a", "6789a", "13468a", "0146a", "034689a", "469a", "459 1367a",
    "01678a 459", "034567a", "45678a", "135689a", "01569a", "038 56a", "56a",
    # cases 128-143
    "56a", "038 56a", "019 56a", "1389 56a", "478 56a", "0347 56a", "019 478 56a", "13479 56a", "469a",
    "038 469a", "0146a", "13468a", "6789a", "03679a", "01678a", "1367a",
    # cases 144-159
    "23b 56a", "028b 56a", "019 23b 56a", "1289b 56a", "478 23b 56a", "0247b 56a", "019 478 23b 56a",
    "12479b 56a", "469a 23b", "028b 469a", "0146a 23b", "12468ab", "6789a 23b", "02679ab",
    "01678a 23b", "1267ab",
    # cases 160-175
    "1256", "038 1256", "02569", "235689", "478 1256", "0347 1256", "02569 478", "2345679", "12469",
    "038 12469", "0246", "23468", "126789", "0123679", "02678", "2367",
    # cases 176-191
    "1356b", "01568b", "03569b", "5689b", "478 1356b", "014567b", "03569b 478", "45679b", "13469b",
    "014689b", "0346b", "468b", "136789b", "019 67b", "03678b", "67b",
    # cases 192-207
    "57ab", "038 57ab", "019 57ab", "1389 57ab", "458ab", "0345ab", "019 458ab", "13459ab", "479ab",
    "038 479ab", "0147ab", "13478ab", "89ab", "039ab", "018ab", "13ab",
    # cases 208-223
    "2357a", "02578a", "019 2357a", "125789a", "23458a", "0245a", "019 23458a", "12459a", "23479a",
    "024789a", "012347a", "478 12a", "2389a", "029a", "01238a", "12a",
    # cases 224-239
    "1257b", "038 1257b", "02579b", "235789b", "12458b", "012345b", "024589b", "459 23b", "12479b",
    "038 12479b", "0247b", "23478b", "1289b", "01239b", "028b", "23b",
    # cases 240-255
    "1357", "01578", "03579", "5789", "13458", "0145", "034589", "459", "13479", "014789", "0347",
    "478", "1389", "019", "038", "",
)

_NUM_VD_CODE = (
    "0111112112111111112121312221212112112221231122111111212122112111"
    "1222112123221111112111212221111123222221342222111111111122111121"
    "1222223212111111223232422221212112112221121111111111212111111211"
    "1222112112111111112111211112111112111112121111111111111111111110"
)

_AMBIGUOUS_CASES = {
    61: (1, 0, 0, 194), 62: (-1, 0, 0, 193), 91: (0, 1, 0, 164), 94: (0, -1, 0, 161),
    103: (0, 0, 1, 152), 110: (0, 0, 1, 145), 111: (0, 0, 1, 144), 118: (0, 0, -1, 137),
    122: (0, 1, 0, 133), 123: (0, 1, 0, 132), 124: (1, 0, 0, 131), 125: (1, 0, 0, 130),
    155: (0, 0, 1, 100), 157: (0, 0, 1, 98), 159: (0, 0, 1, 96), 167: (0, 1, 0, 88),
    173: (0, -1, 0, 82), 181: (0, 1, 0, 74), 183: (0, 1, 0, 72), 185: (0, 0, -1, 70),
    188: (-1, 0, 0, 67), 190: (-1, 0, 0, 65), 199: (1, 0, 0, 56), 203: (-1, 0, 0, 52),
    211: (1, 0, 0, 44), 215: (1, 0, 0, 40), 217: (0, 0, -1, 38), 218: (0, -1, 0, 37),
    222: (0, -1, 0, 33), 227: (-1, 0, 0, 28), 229: (0, -1, 0, 26), 230: (0, 0, -1, 25),
    235: (-1, 0, 0, 20), 237: (0, -1, 0, 18), 246: (0, 0, -1, 9), 249: (0, 0, -1, 6),
}

_TET_CODE = (
    "------ 000000 000000 111111 444444 000000 40044- 111111 "
    "444444 04044- 000000 111111 555555 000000 000000 111111 "
    "222222 000000 202-02 111111 2-2442 000000 202442 111111 "
    "242442 040440 202002 111111 252552 000000 202002 111111 "
    "111111 011-01 000000 222222 411441 011001 400440 222222 "
    "-11441 011441 000000 222222 511551 011001 000000 222222 "
    "111111 000000 000000 888888 111441 000000 400440 444444 "
    "111441 040440 000000 444444 111551 000000 000000 555555 "
    "666666 6-0606 600606 611616 444444 000000 400444 111111 "
    "64-646 640646 600606 611616 555555 000000 000000 111111 "
    "222222 000000 202202 111111 222222 000000 202222 111111 "
    "242242 040440 202202 111111 222222 000000 000000 111111 "
    "6116-6 611606 600606 622626 411441 011001 400444 222222 "
    "611646 611646 600606 622626 511551 011001 000000 222222 "
    "111111 000000 000000 666666 111111 000000 000000 444444 "
    "111141 040440 000000 444444 111111 000000 050505 555555 "
    "555555 050505 -50505 151515 45-545 050505 450545 151515 "
    "444444 040444 000000 111111 666666 000000 000000 111111 "
    "2525-5 050505 252505 151515 252545 050505 252545 151515 "
    "242442 040444 202002 111111 262662 000000 202002 111111 "
    "111111 011101 000000 222222 411141 011101 400440 222222 "
    "111111 011111 000000 222222 111111 000000 000000 222222 "
    "111111 000000 000000 555555 111141 000000 400440 444444 "
    "111111 000000 000000 444444 111111 600606 000000 666666 "
    "555555 550505 550505 551515 444444 000000 440444 111111 "
    "444444 440444 000000 111111 888888 000000 000000 111111 "
    "222222 000000 222202 111111 222222 000000 222222 111111 "
    "222222 000000 000000 411441 222222 000000 000000 111111 "
    "111111 111101 000000 222222 111111 000000 000000 242442 "
    "111111 111111 000000 222222 111111 000000 000000 222222 "
    "111111 000000 000000 555555 111111 000000 000000 444444 "
    "111111 000000 000000 444444 111111 000000 000000 cccccc"
)
# fmt: on


def _decode_dmc(codes: tuple[str, ...]) -> list[list[list[int]]]:
    """Expand the per-case strings to the (256, 4, 7) nested list, padded with -1."""
    table = []
    for code in codes:
        verts = [[_DIGITS.index(ch) for ch in vert] for vert in code.split()]
        verts = [vert + [_PAD] * (MAX_EDGES_PER_DUAL_VERT - len(vert)) for vert in verts]
        verts += [[_PAD] * MAX_EDGES_PER_DUAL_VERT for _ in range(MAX_DUAL_VERTS - len(verts))]
        table.append(verts)
    return table


def _decode_check(cases: dict[int, tuple[int, int, int, int]]) -> list[list[int]]:
    """Expand to the (256, 5) list [is_ambiguous, dx, dy, dz, replacement]; unambiguous rows are all zero."""
    return [[1, *cases[case]] if case in cases else [0, 0, 0, 0, 0] for case in range(NUM_CASES)]


def _decode_tet(code: str) -> list[list[int]]:
    """Expand to the (256, 6) list, '-' standing for -1."""
    return [[_PAD if ch == "-" else _DIGITS.index(ch) for ch in row] for row in code.split()]


DMC_TABLE = _decode_dmc(_DMC_CODE)  # (256, 4, 7) edge ids per dual vertex, -1 padded
NUM_VD_TABLE = [int(ch) for ch in _NUM_VD_CODE]  # (256,)
CHECK_TABLE = _decode_check(_AMBIGUOUS_CASES)  # (256, 5)
TET_TABLE = _decode_tet(_TET_CODE)  # (256, 6)
