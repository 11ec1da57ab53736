"""Where an SAE run's numbers go: ``logs/metrics.csv`` (one row per
validation, rewritten atomically), TensorBoard when installed, W&B when
enabled, and the train log (one line per validation)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sae1n.errors import ConfigError
from sae1n.io import atomic_write_csv
from sae1n.sae.metrics import FREQ_BIN_NAMES

log = logging.getLogger("sae1n.sae.train")

# more dead latents than this at the end of training get a warning line
DEAD_WARN_FRAC = 0.25


class MetricsLog:
    """The metrics of one run; ``open`` starts the optional writers (main
    process only), ``log`` appends a row, ``close`` ends them."""

    def __init__(self, out_dir: Path, label: str):
        self.path = Path(out_dir) / "logs" / "metrics.csv"
        self.out_dir = Path(out_dir)
        self.label = label
        self.rows: list[dict] = []
        self.tb = None
        self.wandb = None

    # ------------------------------------------------------------------ resume
    def restore(self, up_to_step: int) -> None:
        """Keep the rows of an interrupted run up to its saved step."""
        if not self.path.is_file():
            return
        import pandas as pd

        try:
            frame = pd.read_csv(self.path)
            self.rows = frame[frame["step"] <= up_to_step].to_dict("records")
        except Exception:  # a damaged log is rebuilt from here on
            self.rows = []

    # ------------------------------------------------------------------ writers
    def open(self, cfg: DictConfig) -> None:
        training = cfg.training
        if training.get("tensorboard", True):
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(self.out_dir / "logs" / "tensorboard"))
            except ImportError:
                log.debug("tensorboard is not installed; metrics go to logs/metrics.csv only")
        if training.get("use_wandb", False):
            try:
                import wandb
            except ImportError as exc:
                raise ConfigError(
                    "training.use_wandb=true but wandb is not installed; pip install wandb, or set training.use_wandb=false"
                ) from exc
            self.wandb = wandb.init(
                project=training.get("wandb_project"),
                entity=training.get("wandb_entity"),
                name=self.label,
                config=OmegaConf.to_container(cfg, resolve=True),
                reinit=True,
            )

    def log(self, row: dict, *, write: bool = True) -> None:
        """Append ``row``; the main process (``write``) writes it everywhere."""
        self.rows.append(row)
        if not write:
            return
        import pandas as pd

        atomic_write_csv(self.path, pd.DataFrame(self.rows))
        scalars = {
            k: v for k, v in row.items() if isinstance(v, int | float) and k not in ("step",)
        }
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(
                    k.replace("val_", "val/").replace("train_", "train/"), v, row["step"]
                )
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=row["step"])
        log.info("%s", validation_line(self.label, row))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def validation_line(label: str, row: dict) -> str:
    """One train-log line: losses, FVU, dead / dense latents and the firing
    frequency histogram (fraction of latents per bin of firing frequency)."""
    src = "val" if "val_dead_frac" in row else "train"
    parts = [f"{label} step {row['step']}"]
    if "val_loss" in row:
        parts.append(f"val loss {row['val_loss']:.5g}")
    if "val_fvu" in row:
        parts.append(f"FVU {row['val_fvu']:.4f}")
    if "val_l0_norm" in row:
        parts.append(f"L0 {row['val_l0_norm']:.1f}")
    parts.append(f"dead {_pct(row.get(f'{src}_dead_frac', row.get('val_dead_frac_train')))}")
    if "val_dense_frac" in row:
        parts.append(f"dense {_pct(row['val_dense_frac'])}")
    hist = [f"{n} {_pct(row[f'val_freq_{n}'])}" for n in FREQ_BIN_NAMES if f"val_freq_{n}" in row]
    if hist:
        parts.append("firing freq: " + " | ".join(hist))
    if "tokens_per_s" in row:
        parts.append(f"{row['tokens_per_s']:,.0f} tokens/s")
    return ", ".join(parts)


def dead_fraction(row: dict | None) -> tuple[float | None, str]:
    """The dead fraction of a metrics row and what it was measured on."""
    if not row:
        return None, ""
    if row.get("val_dead_frac") is not None and not _isnan(row["val_dead_frac"]):
        return float(row["val_dead_frac"]), "never fired on the validation set"
    v = row.get("train_dead_frac")
    if v is not None and not _isnan(v):
        return float(v), "not fired in the last n_batches_to_dead training batches"
    return None, ""


def _isnan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def warn_if_dead(label: str, row: dict | None, limit: float = DEAD_WARN_FRAC) -> bool:
    """Log a warning when more than ``limit`` of the latents are dead at the end."""
    frac, what = dead_fraction(row)
    if frac is None or frac <= limit:
        return False
    log.warning(
        "%s: %.1f%% of the latents are dead at the end of training (%s; more than %.0f%%). "
        "The dictionary is larger than the data need, or training was too short: try a "
        "smaller sae.dict_size_ratio, more epochs, or a larger sae.aux_penalty / sae.top_k_aux",
        label,
        100 * frac,
        what,
        100 * limit,
    )
    return True


def health_summary(metrics_csv: Path) -> str | None:
    """``"3.1% dead latents (< 10%), 84.4% dense, FVU 0.111"`` from a run's
    last metrics row (None when there is none)."""
    path = Path(metrics_csv)
    if not path.is_file():
        return None
    import pandas as pd

    try:
        rows = pd.read_csv(path)
    except Exception:
        return None
    if rows.empty:
        return None
    row = rows.iloc[-1].to_dict()
    frac, _ = dead_fraction(row)
    if frac is None:
        return None
    verdict = "< 10%" if frac < 0.1 else ("over 25%: see docs/sae.md" if frac > DEAD_WARN_FRAC else ">= 10%")
    parts = [f"{100 * frac:.1f}% dead latents ({verdict})"]
    if row.get("val_dense_frac") is not None and not _isnan(row["val_dense_frac"]):
        parts.append(f"{100 * row['val_dense_frac']:.1f}% dense")
    if row.get("val_fvu") is not None and not _isnan(row["val_fvu"]):
        parts.append(f"FVU {row['val_fvu']:.3f}")
    return ", ".join(parts)
