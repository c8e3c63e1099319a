"""The names every propagation backend shares (no torch here, so torch-free code can use them)."""

DIRECTIONS = ("lr", "rl", "tb", "bt")
MODES = ("three_way", "one_way")
