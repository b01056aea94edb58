"""Scripts that run inside the cell containers (any Python >= 3.8). They import nothing from matrix-run."""
