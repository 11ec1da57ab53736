"""What ``sae1n browse`` shows, found from an SAE experiment folder and read lazily.

Opening an experiment only lists folders (slide ids, code files, slide files)
and reads the small CSVs; a slide's codes, coords, labels and attention are
read the first time the slide is viewed, and kept in bounded caches. Every
file the app may read is in the allow-lists built here (slide id -> file):
URLs name slide ids and integers, never paths.

One slide's data and the LRU cache are in :mod:`sae1n.browse.slide_data`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import numpy as np

from sae1n.browse.slide_data import LRU, SlideData
from sae1n.errors import InputFileError
from sae1n.neurons.patch_evaluation import PatchEvaluation, read_patch_evaluation

__all__ = ["LRU", "PIPELINE_YAML", "Experiment", "SlideData", "open_experiment"]

log = logging.getLogger(__name__)

PIPELINE_YAML = "pipeline.yaml"


def _scan_stems(folder: Path | None, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """stem -> file for the regular files of ``folder`` with one of ``suffixes`` (one listing)."""
    out: dict[str, Path] = {}
    if folder is None or not folder.is_dir():
        return out
    with os.scandir(folder) as it:
        for e in it:
            if e.name.startswith(".") or not e.is_file():
                continue
            low = e.name.lower()
            for suf in suffixes:
                if low.endswith(suf):
                    out.setdefault(e.name[: -len(suf)], Path(e.path))
                    break
    return out


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
        return obj if isinstance(obj, dict) else {}
    except (OSError, ValueError):
        return {}


def _read_evaluation(eval_dir: Path) -> PatchEvaluation | None:
    """The patch evaluation of the experiment, or None (not run yet, or damaged:
    the browser still opens)."""
    try:
        return read_patch_evaluation(eval_dir)
    except InputFileError:
        return None


def _pipeline_config(exp: Path) -> dict:
    """The ``pipeline.yaml`` of the run that made ``exp`` (searched in its parents), or {}."""
    from omegaconf import OmegaConf

    for parent in list(exp.parents)[:4]:
        p = parent / PIPELINE_YAML
        if p.is_file():
            try:
                cfg = OmegaConf.to_container(OmegaConf.load(p), resolve=False)
            except Exception as exc:  # a broken YAML must not stop the browser
                log.warning("browse: cannot read %s (%s); ignored", p, exc)
                return {}
            return cfg if isinstance(cfg, dict) else {}
    return {}


def _existing(*cands) -> Path | None:
    for c in cands:
        if c and Path(c).is_dir():
            return Path(c)
    return None


class Experiment:
    """An SAE experiment folder and what belongs to it, for the browser.

    ``exp_dir`` is ``output/sae/<exp>`` (checkpoints/, analysis/, encoded_features/).
    ``slides_dir`` and ``annotations_dir`` default to the run's ``pipeline.yaml``.
    """

    def __init__(
        self,
        exp_dir: str | os.PathLike,
        slides_dir: str | os.PathLike | None = None,
        annotations_dir: str | os.PathLike | None = None,
        *,
        feature_dir: str | os.PathLike | None = None,
        cache_bytes: float = 2e9,
    ):
        from sae1n.neurons.inputs import code_files
        from sae1n.wsi.readers import SLIDE_EXTENSIONS

        self.exp_dir = Path(exp_dir).resolve()
        if not self.exp_dir.is_dir():
            raise InputFileError(
                self.exp_dir,
                "experiment folder not found",
                "pass output/sae/<exp> (the folder holding analysis/, encoded_features/)",
            )
        summary = _read_json(self.exp_dir / "analysis" / "sae_analysis_summary.json")
        self.summary = summary
        self.evaluation = _read_evaluation(self.exp_dir / "evaluation")
        ev_settings = self.evaluation.settings if self.evaluation is not None else {}
        pipe = _pipeline_config(self.exp_dir)

        fdir = _existing(feature_dir, summary.get("feature_dir"), ev_settings.get("feature_dir"))
        if fdir is None:
            enc = self.exp_dir / "encoded_features"
            cands = sorted(p.parent for p in enc.glob("*/*/sparse_files")) + sorted(
                p.parent for p in enc.glob("*/*/h5_files")
            )
            fdir = cands[0] if cands else None
        if fdir is None:
            raise InputFileError(
                self.exp_dir,
                "holds no SAE codes (encoded_features/<dataset>/<features>/sparse_files)",
                "run `sae1n save-sae-features` for this experiment first",
            )
        self.feature_dir = fdir
        self.code_paths: dict[str, Path] = code_files(fdir)
        if not self.code_paths:
            raise InputFileError(fdir, "holds no code files", "run `sae1n save-sae-features`")
        self.slide_ids: list[str] = sorted(self.code_paths)

        sdir = slides_dir or (pipe.get("slides") or {}).get("dir")
        self.slides_dir = Path(sdir).resolve() if sdir else None
        self.slide_paths = {
            k: v
            for k, v in _scan_stems(self.slides_dir, tuple(e.lower() for e in SLIDE_EXTENSIONS)).items()
            if k in self.code_paths
        }
        adir = annotations_dir or (pipe.get("annotations") or {}).get("dir")
        self.annotations_dir = Path(adir).resolve() if adir else None
        self.annotation_paths = {
            k: v
            for k, v in _scan_stems(self.annotations_dir, (".geojson", ".json", ".xml")).items()
            if k in self.code_paths
        }
        ldir = _existing(ev_settings.get("patch_label_dir"), (Path(pipe["work_dir"]) / "patch_labels") if pipe.get("work_dir") else None)
        self.label_paths = {k: v for k, v in _scan_stems(ldir, (".h5",)).items() if k in self.code_paths}
        mil_scores = ev_settings.get("mil_patch_scores")
        if isinstance(mil_scores, dict):  # method -> folder; the attention map first
            mil_scores = [v for k, v in sorted(mil_scores.items(), key=lambda kv: "attention" not in kv[0])]
        adir2 = _existing(*(mil_scores if isinstance(mil_scores, list) else [mil_scores]))
        self.attention_paths = {k: v for k, v in _scan_stems(adir2, (".h5",)).items() if k in self.code_paths}

        self.slide_labels: dict[str, str] = {}
        self.slide_split: dict[str, str] = {}
        dcsv = summary.get("dataset_csv")
        if dcsv and Path(dcsv).is_file():
            from sae1n.neurons.inputs import read_slide_labels

            try:
                self.slide_labels = {k: v for k, v in read_slide_labels(dcsv).items()}
            except InputFileError as exc:
                log.warning("browse: slide labels not shown (%s)", exc)
        split = summary.get("split_csv_path") or ev_settings.get("split_csv_path")
        if split and Path(split).is_file():
            from sae1n.datasets.splits import read_split

            try:
                for col, ids in read_split(split).items():
                    for sid in ids:
                        self.slide_split.setdefault(sid, col)
            except InputFileError as exc:
                log.warning("browse: split not shown (%s)", exc)

        self._cache = LRU(cache_bytes)
        self._cols = LRU(cache_bytes / 4)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._index = None
        self._index_lock = threading.Lock()

    # ------------------------------------------------------------------ allow-list
    def check_slide(self, slide_id: str) -> str:
        """``slide_id`` if it is one of the experiment's slides, else KeyError."""
        if slide_id not in self.code_paths:
            raise KeyError(slide_id)
        return slide_id

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(key, threading.Lock())

    # ------------------------------------------------------------------ lazy data
    def slide(self, slide_id: str) -> SlideData:
        """The slide's codes and coords (read once, then cached)."""
        from sae1n.neurons.inputs import read_codes
        from sae1n.viz.heatmaps import infer_patch_size

        sid = self.check_slide(slide_id)
        key = ("codes", sid)
        got = self._cache.get(key)
        if got is not None:
            return got
        with self._lock(f"codes:{sid}"):
            got = self._cache.get(key)
            if got is not None:
                return got
            codes, coords, attrs = read_codes(self.code_paths[sid])
            if coords is None:
                raise InputFileError(self.code_paths[sid], "has no coords", "use the h5 or sparse code files")
            coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
            ps = infer_patch_size(coords, attrs) if len(coords) else 256
            data = SlideData(sid, coords, int(ps), codes, dict(attrs))
            nbytes = coords.nbytes + getattr(codes, "nbytes", 0) + sum(
                getattr(getattr(codes, a, None), "nbytes", 0) for a in ("data", "indices", "indptr")
            )
            return self._cache.put(key, data, cost=2 * nbytes + 1)

    @property
    def dict_size(self) -> int:
        return int(self.slide(self.slide_ids[0]).codes.shape[1])

    def activations(self, slide_id: str, unit: int) -> np.ndarray:
        """Neuron ``unit``'s activation on every patch of the slide (cached)."""
        key = (slide_id, int(unit))
        got = self._cols.get(key)
        if got is None:
            col = self.slide(slide_id).column(unit)
            got = self._cols.put(key, col, cost=col.nbytes + 64)
        return got

    def attention(self, slide_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(coords, scores) of the ABMIL attention of the slide, or None."""
        from sae1n.neurons.inputs import read_patch_scores

        if slide_id not in self.attention_paths:
            return None
        key = ("att", slide_id)
        got = self._cache.get(key)
        if got is None:
            got = self._cache.put(key, read_patch_scores(self.attention_paths[slide_id]), 1e5)
        return got

    def patch_labels(self, slide_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(coords, tumour fraction, label) of the slide's patch labels, or None."""
        from sae1n.datasets.patch_labels import read_patch_labels

        if slide_id not in self.label_paths:
            return None
        key = ("lab", slide_id)
        got = self._cache.get(key)
        if got is None:
            got = self._cache.put(key, read_patch_labels(self.label_paths[slide_id]), 1e5)
        return got

    def outlines(self, slide_id: str) -> list[list[list[float]]]:
        """Annotation rings (level-0 [x, y] lists): tumour minus exclusions, as patch labels use."""
        import shapely

        from sae1n.datasets.annotations import TumorMask, read_annotation

        if slide_id not in self.annotation_paths:
            return []
        key = ("ann", slide_id)
        got = self._cache.get(key)
        if got is not None:
            return got
        ann = read_annotation(self.annotation_paths[slide_id])
        rings: list = []
        if not isinstance(ann, TumorMask) and not ann.is_empty:
            for poly in shapely.get_parts(ann.simplify(1.0)):
                if poly.geom_type != "Polygon":
                    continue
                for ring in [poly.exterior, *poly.interiors]:
                    rings.append(np.asarray(ring.coords)[:, :2].round(1).tolist())
        return self._cache.put(key, rings, 1e4)

    # ------------------------------------------------------------------ ranking
    def ranking(self) -> list[dict]:
        """Rows of the ranking CSV with patch metrics and prompt names merged in."""
        import pandas as pd

        from sae1n.neurons.naming import NAMES_CSV
        from sae1n.neurons.ranking_csv import read_ranking

        got = self._cache.get(("ranking",))
        if got is not None:
            return got
        analysis = self.exp_dir / "analysis"
        path = analysis / (self.summary.get("primary_csv") or "sae_analysis_t_test.csv")
        if not path.is_file():
            cands = sorted(analysis.glob("sae_analysis_*.csv"))
            path = cands[0] if cands else None
        if path is None:
            rows = pd.DataFrame({"unit_id": np.arange(self.dict_size)})
        else:
            rows = read_ranking(path)
        if "rank" not in rows.columns:
            rows["rank"] = np.arange(1, len(rows) + 1)
        pm = self.exp_dir / "evaluation" / "patch_metrics.csv"
        if pm.is_file():
            try:
                ev = pd.read_csv(pm)
                if "method" in ev.columns:
                    ev = ev[ev["method"] == "sae_neuron"]
                ev = ev.dropna(subset=["unit_id"])
                ev["unit_id"] = ev["unit_id"].astype(int)
                keep = [c for c in ("patch_auroc", "patch_ap") if c in ev.columns]
                rows = rows.merge(ev[["unit_id", *keep]].drop_duplicates("unit_id"), on="unit_id", how="left")
            except Exception as exc:  # a damaged CSV must not stop the browser
                log.warning("browse: %s not merged (%s)", pm, exc)
        names = analysis / NAMES_CSV
        if names.is_file():
            try:
                nm = pd.read_csv(names)
                if {"unit_id", "name"} <= set(nm.columns):
                    rows = rows.merge(
                        nm[["unit_id", "name"]].rename(columns={"name": "prompt_name"}),
                        on="unit_id",
                        how="left",
                    )
            except Exception as exc:
                log.warning("browse: %s not merged (%s)", names, exc)
        out = json.loads(rows.to_json(orient="records"))
        return self._cache.put(("ranking",), out, 1e6)

    # ------------------------------------------------------------------ neuron index
    def index(self, progress_cb=None) -> dict:
        """Per slide and neuron: max activation and number of firing patches (one pass, cached)."""
        with self._index_lock:
            if self._index is not None:
                return self._index
            from scipy import sparse

            d = self.dict_size
            mx = np.zeros((len(self.slide_ids), d), np.float32)
            fired = np.zeros(d, np.int64)
            n_total = 0
            for i, sid in enumerate(self.slide_ids):
                s = self.slide(sid)
                if s.n:
                    if sparse.issparse(s.codes):
                        mx[i] = s.codes.max(axis=0).toarray()[0]
                        c = sparse.csr_matrix(s.codes)
                        fired += np.bincount(c.indices[c.data > 0], minlength=d)
                    else:
                        mx[i] = np.asarray(s.codes).max(axis=0)
                        fired += (np.asarray(s.codes) > 0).sum(axis=0)
                n_total += s.n
                if progress_cb:
                    progress_cb(i + 1, len(self.slide_ids))
            self._index = {
                "max": mx,
                "firing_frequency": fired / max(n_total, 1),
                "n_patches": n_total,
            }
            return self._index

    def index_if_ready(self) -> dict | None:
        """The neuron index when it has been built, else None (never blocks)."""
        return self._index

    def neuron_summary(self, unit: int, top_n: int = 24) -> dict:
        """Per-slide max of ``unit`` with slide labels, and its ``top_n`` patches over all slides.

        Slides are read in decreasing order of their max and the scan stops once
        no remaining slide can enter the top ``top_n`` (exact, reads few slides).
        """
        unit = int(unit)
        if not 0 <= unit < self.dict_size:
            raise KeyError(unit)
        key = ("neuron", unit, top_n)
        got = self._cache.get(key)
        if got is not None:
            return got
        idx = self.index()
        col = idx["max"][:, unit]
        per_slide = [
            {
                "slide_id": sid,
                "max": float(col[i]),
                "label": self.slide_labels.get(sid, ""),
                "split": self.slide_split.get(sid, ""),
            }
            for i, sid in enumerate(self.slide_ids)
        ]
        per_slide.sort(key=lambda r: -r["max"])
        best: list[tuple[float, str, int, int]] = []
        for r in per_slide:
            if r["max"] <= 0 or (len(best) >= top_n and r["max"] < best[-1][0]):
                break
            s = self.slide(r["slide_id"])
            a = self.activations(r["slide_id"], unit)
            k = min(top_n, a.size)
            top = np.argpartition(-a, k - 1)[:k] if k < a.size else np.arange(a.size)
            best += [(float(a[j]), r["slide_id"], int(s.coords[j, 0]), int(s.coords[j, 1])) for j in top if a[j] > 0]
            best.sort(key=lambda t: (-t[0], t[1], t[2], t[3]))
            best = best[:top_n]
        gallery = [{"value": v, "slide_id": sid, "x": x, "y": y, "patch_size": self.slide(sid).patch_size} for v, sid, x, y in best]
        out = {
            "unit": unit,
            "vmax": float(col.max()) if col.size else 1.0,
            "firing_frequency": float(idx["firing_frequency"][unit]),
            "slides": per_slide,
            "gallery": gallery,
        }
        return self._cache.put(key, out, 1e4)


def open_experiment(exp_dir, slides_dir=None, annotations_dir=None, **kw) -> Experiment:
    """Open an experiment for browsing (lists folders only; data is read on demand)."""
    return Experiment(exp_dir, slides_dir, annotations_dir, **kw)
