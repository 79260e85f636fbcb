"""Project datasets: atomic writes and raw-byte access through fsspec (local or Azure)."""
