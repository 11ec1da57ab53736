"""Tools for people working on sae1n itself (not used by any stage)."""
