"""Where each pipeline stage writes inside ``work_dir`` (the paper's layout)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class PipelinePaths:
    """Where each stage writes, following the paper's layout."""

    work: Path
    task: str
    encoder: str
    seed: int
    sae_exp: str

    @property
    def clam_dir(self) -> Path:
        return self.work / "features" / self.task / "clam_processed"

    @property
    def feat_dir(self) -> Path:
        return self.clam_dir / f"features_{self.encoder}"

    @property
    def metadata_csv(self) -> Path:
        return self.work / "dataset_csv" / f"{self.task}_metadata.csv"

    @property
    def split_dir(self) -> Path:
        return self.work / "splits" / f"{self.task}_{self.seed}"

    def split_csv(self, fold: int) -> Path:
        return self.split_dir / f"splits_{fold}.csv"

    @property
    def patch_label_dir(self) -> Path:
        return self.work / "patch_labels"

    @property
    def sae_root(self) -> Path:
        return self.work / "output" / "sae"

    @property
    def sae_dir(self) -> Path:
        return self.sae_root / self.sae_exp

    @property
    def encoded_dir(self) -> Path:
        from sae1n.sae.encode import dataset_and_feature_set

        dataset, feature_set = dataset_and_feature_set(self.feat_dir)
        return self.sae_dir / "encoded_features" / dataset / feature_set

    @property
    def ranking_csv(self) -> Path:
        return self.sae_dir / "analysis" / "sae_analysis_t_test.csv"

    @property
    def mil_root(self) -> Path:
        return self.work / "output"
