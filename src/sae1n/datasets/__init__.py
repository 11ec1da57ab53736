"""sae1n.datasets: metadata CSVs, patient-level splits, and patch labels from
tumour annotations."""

from sae1n.datasets.annotations import (
    TumorMask,
    find_annotation,
    read_annotation,
    read_asap_xml,
    read_geojson,
    read_panda_mask,
)
from sae1n.datasets.grouping import stratified_group_kfold
from sae1n.datasets.metadata import create_metadata, load_metadata
from sae1n.datasets.patch_coverage import tumor_fractions
from sae1n.datasets.patch_labels import (
    create_patch_labels,
    patch_size_level0,
    read_coords,
    read_patch_labels,
)
from sae1n.datasets.splits import create_splits, read_split

__all__ = [
    "TumorMask",
    "create_metadata",
    "create_patch_labels",
    "create_splits",
    "find_annotation",
    "load_metadata",
    "patch_size_level0",
    "read_annotation",
    "read_asap_xml",
    "read_coords",
    "read_geojson",
    "read_panda_mask",
    "read_patch_labels",
    "read_split",
    "stratified_group_kfold",
    "tumor_fractions",
]
