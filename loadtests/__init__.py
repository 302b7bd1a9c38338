"""Load tests and side-by-side measurements (not part of the shipped package)."""
