"""Feature I/O shared by every stage: CLAM/TRIDENT feature folders, sparse
SAE codes, atomic writes and the packed memory-mapped feature store."""

from sae1n.io.atomic import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
)
from sae1n.io.feature_folders import feature_paths
from sae1n.io.features import (
    FeatureBag,
    check_same_dim,
    read_bag,
    read_features,
    read_sparse_codes,
    write_bag,
    write_sparse_codes,
)
from sae1n.io.locks import item_lock, remove_stale_temp_files, try_lock
from sae1n.io.provenance import (
    Provenance,
    StaleOutputError,
    check_output,
    input_identity,
    plan_outputs,
    read_provenance,
    write_sidecar,
)
from sae1n.io.slide_ids import path_within, validate_slide_id
from sae1n.io.store import PackedStore, open_packed_store

__all__ = [
    "Provenance",
    "StaleOutputError",
    "check_output",
    "input_identity",
    "item_lock",
    "path_within",
    "plan_outputs",
    "read_provenance",
    "remove_stale_temp_files",
    "try_lock",
    "validate_slide_id",
    "write_sidecar",
    "FeatureBag",
    "PackedStore",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_text",
    "check_same_dim",
    "feature_paths",
    "open_packed_store",
    "read_bag",
    "read_features",
    "read_sparse_codes",
    "write_bag",
    "write_sparse_codes",
]
