"""sae1n.wsi: slide reading, tissue segmentation, patch grids and previews
(``sae1n create-patches``, CLAM's ``create_patches_fp.py``).

Public API (imported lazily so ``sae1n --help`` stays fast):
``open_slide``, ``Slide``, ``create_patches``, ``process_slide``,
``segment_tissue``, ``tissue_mask``, ``find_tissue_contours``,
``contours_to_geojson``, ``tissue_patch_coords``, ``contour_patch_coords``,
``lattice_polygon_test``, ``load_preset``, ``SlideParams``,
``make_patch_spec``, ``PatchSpec``, ``read_patch_file``, ``write_patch_file``,
``read_patch``.
"""

from __future__ import annotations

from sae1n._lazy import lazy_exports

_EXPORTS = {
    "open_slide": "slide",
    "Slide": "slide",
    "create_patches": "patch_slides",
    "process_slide": "patch_slides",
    "segment_tissue": "segmentation",
    "tissue_mask": "segmentation",
    "find_tissue_contours": "segmentation",
    "contours_to_geojson": "segmentation",
    "TissueContours": "segmentation",
    "tissue_patch_coords": "patching",
    "contour_patch_coords": "patching",
    "lattice_polygon_test": "geometry",
    "load_preset": "presets",
    "SlideParams": "presets",
    "make_patch_spec": "patch_files",
    "PatchSpec": "patch_files",
    "read_patch_file": "patch_files",
    "write_patch_file": "patch_files",
    "read_patch": "patch_files",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
