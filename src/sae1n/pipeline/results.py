"""What each stage reports: one dataclass per stage, stored (as a dict) in
``pipeline_state.json`` and in :attr:`StageResult.info`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass


@dataclass
class StageResult:
    """What one stage did: ``done`` or ``skipped`` (fingerprint and outputs current)."""

    name: str
    status: str
    seconds: float = 0.0
    info: dict = field(default_factory=dict)
    fingerprint: str = ""


@dataclass
class PatchingInfo:
    statuses: dict


@dataclass
class ExtractionInfo:
    dim: int
    extracted: int
    skipped: int
    failed: int
    patches_per_second: float


@dataclass
class MetadataInfo:
    slides: int
    labels: dict


@dataclass
class SplitsInfo:
    files: list


@dataclass
class SaeInfo:
    exp_dir: str


@dataclass
class EncodingInfo:
    encoded: int
    skipped: int


@dataclass
class AnalysisInfo:
    top_unit: int
    p_value: float
    t_statistic: float


@dataclass
class LabelsInfo:
    slides: int = 0
    skipped: bool = False


@dataclass
class MilRunInfo:
    """One MIL experiment's mean over folds (train-mil reports one per experiment)."""

    test_auc: float | None
    val_auc: float | None
    test_acc: float | None


@dataclass
class EvaluationInfo:
    unit: int | None = None
    patch_auroc: float | None = None
    patch_ap: float | None = None
    slide_auroc: float | None = None
    f1: float | None = None
    skipped: bool = False


@dataclass
class FiguresInfo:
    unit: int
    files: int


@dataclass
class ReportInfo:
    report: str


def info_dict(info) -> dict:
    """A stage's info (a dataclass, a dict of them, or None) as a plain dict."""
    if info is None:
        return {}
    if is_dataclass(info):
        return asdict(info)
    return {k: asdict(v) if is_dataclass(v) else v for k, v in dict(info).items()}
