"""The loaded encoder: preprocessing, device placement, autocast, text tower.

Every registry builder returns an :class:`EncoderModel` (a ``torch.nn.Module``
mapping normalised ``(B, 3, S, S)`` float images to ``(B, dim)`` features);
:class:`Encoder` wraps it with the entry's transform so callers hand it raw
uint8 RGB patches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from sae1n.errors import Sae1nError
from sae1n.utils import resolve_device


class EncoderModel(nn.Module):
    """Base class of the registry's models.

    ``forward(images) -> (B, dim)``. CLIP-family models set ``has_text`` and
    implement :meth:`encode_text` and :meth:`to_joint_space`.
    """

    dim: int = 0
    has_text: bool = False

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:  # pragma: no cover - overridden
        raise Sae1nError(f"{type(self).__name__} has no text tower")

    def to_joint_space(self, features: torch.Tensor) -> torch.Tensor:
        """Map extracted features into the image-text space (identity unless
        the extracted features are taken before the contrastive projection)."""
        return features


class PatchTransform:
    """An entry's input transform: RGB patches -> normalised float
    ``(B, 3, S, S)``. Small and picklable, so DataLoader workers can run it.

    uint8 patches are resized (antialiased ``interpolation``: bilinear or
    bicubic) with :func:`resize_uint8` on the CPU (on a GPU, after conversion
    to float), to ``resize_size`` then centre-cropped to ``input_size`` when
    the entry says so (Prov-GigaPath: 256 -> 224), scaled to [0, 1] and
    normalised with the entry's mean/std; float input is taken as RGB in [0, 1].
    """

    def __init__(
        self,
        input_size: int | None,
        mean=None,
        std=None,
        interpolation: str = "bilinear",
        resize_size: int | None = None,
    ):
        if interpolation not in ("bilinear", "bicubic"):
            raise Sae1nError(f"interpolation must be 'bilinear' or 'bicubic', not {interpolation!r}")
        self.input_size = input_size
        self.mean = None if mean is None else tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)
        self.interpolation = interpolation
        # resize to resize_size, then centre-crop input_size (e.g. Prov-GigaPath: 256 -> 224)
        self.resize_size = resize_size if resize_size and input_size and resize_size != input_size else None

    def __call__(self, patches, device: str | torch.device = "cpu") -> torch.Tensor:
        x = torch.as_tensor(patches)
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or 3 not in (x.shape[1], x.shape[-1]):
            raise Sae1nError(
                f"expected RGB patches (B, H, W, 3) or (B, 3, H, W), got shape {tuple(x.shape)}"
            )
        device = torch.device(device)
        if x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)  # a channels-last view, no copy
        size = self.resize_size or self.input_size
        resize = bool(size) and tuple(x.shape[-2:]) != (size, size)
        if resize and x.dtype == torch.uint8 and device.type == "cpu":
            x, resize = resize_uint8(x, size, self.interpolation), False  # fast uint8 kernel
        x = x.to(device, non_blocking=True)
        out = torch.empty(x.shape, dtype=torch.float32, device=device)
        out.copy_(x)  # one strided pass: layout change and dtype conversion together
        to_unit = 1.0 / 255.0 if x.dtype == torch.uint8 else 1.0
        if resize:
            out = torch.nn.functional.interpolate(
                out.mul_(to_unit),
                size=(size, size),
                mode=self.interpolation,
                antialias=True,
                align_corners=False,
            )
            to_unit = 1.0
            if self.interpolation == "bicubic":
                out = out.clamp_(0.0, 1.0)  # bicubic overshoots; PIL clips to the uint8 range
        if self.resize_size:
            out = center_crop(out, self.input_size)
        if self.mean is None:
            return out.mul_(to_unit) if to_unit != 1.0 else out
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        # (x * to_unit - mean) / std as one multiply-add
        return out.mul_(to_unit / std).sub_(mean / std)


class Encoder:
    """A registry encoder with weights, ready to encode uint8 RGB patches.

    ``encode(patches)``: ``patches`` is uint8 ``(B, H, W, 3)`` or
    ``(B, 3, H, W)`` (numpy or torch, any square size; resized to
    ``input_size``), or float in [0, 1]. Returns ``(B, dim)`` float32 on
    ``device``. CLIP-family encoders also offer :meth:`encode_text` and
    :meth:`to_joint_space`.
    """

    def __init__(
        self,
        spec,
        model: EncoderModel,
        device: str = "auto",
        input_size: int | None = None,
        weights=None,
    ):
        self.spec = spec
        self.name = spec.name
        self.weights = weights
        self.dim = int(model.dim)
        self.input_size = int(input_size or spec.input_size or 0) or None
        try:
            self.device = torch.device(resolve_device(device))
            self.model = model.eval().to(self.device)
        except (RuntimeError, AssertionError) as exc:
            raise Sae1nError(
                f"cannot use device {device!r} for encoder {self.name!r} ({exc}); pick --device cpu or an available GPU"
            ) from exc
        self.model.requires_grad_(False)
        resize_size = getattr(spec, "resize_size", None)
        if resize_size and spec.input_size and self.input_size != spec.input_size:
            # keep the entry's crop fraction at another input size
            resize_size = int(round(self.input_size * resize_size / spec.input_size))
        self.transform = PatchTransform(
            self.input_size,
            spec.mean,
            spec.std,
            interpolation=getattr(spec, "interpolation", "bilinear"),
            resize_size=resize_size,
        )
        self.autocast_dtype = None
        if self.device.type == "cuda" and spec.autocast:
            self.autocast_dtype = (
                torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            )

    def __repr__(self) -> str:
        return f"Encoder({self.name!r}, dim={self.dim}, input_size={self.input_size}, device={self.device})"

    @property
    def supports_text(self) -> bool:
        return bool(self.model.has_text)

    def preprocess(self, patches) -> torch.Tensor:
        """uint8 patches -> normalised float ``(B, 3, S, S)`` on the device."""
        return self.transform(patches, self.device)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def encode(self, patches, preprocessed: bool = False) -> torch.Tensor:
        """``(B, dim)`` float32 features of raw RGB patches (on the device);
        ``preprocessed=True`` when ``patches`` already went through
        :attr:`transform`."""
        with torch.inference_mode():
            x = (
                torch.as_tensor(patches).to(self.device, non_blocking=True)
                if preprocessed
                else self.preprocess(patches)
            )
            if x.shape[0] == 0:
                return torch.zeros((0, self.dim), dtype=torch.float32, device=self.device)
            with self._autocast():
                out = self.model(x)
            return out.float()

    def encode_numpy(self, patches) -> np.ndarray:
        """Like :meth:`encode`, returned as a numpy float32 array."""
        return self.encode(patches).cpu().numpy()

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """``(n, joint_dim)`` text embeddings in the image-text space of this
        encoder (compare with :meth:`to_joint_space` of image features)."""
        if not self.supports_text:
            raise Sae1nError(
                f"encoder {self.name!r} has no text tower; use an encoder with a text tower (`sae1n extract-features --list-models`)"
            )
        if isinstance(texts, str):
            texts = [texts]
        with torch.inference_mode():
            out = self.model.encode_text(list(texts)).float()
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out

    def to_joint_space(self, features, normalize: bool = False) -> torch.Tensor:
        """Map extracted features (or directions in feature space, e.g. SAE
        decoder rows: the map is linear) into the image-text space."""
        if not self.supports_text:
            raise Sae1nError(f"encoder {self.name!r} has no image-text space")
        with torch.inference_mode():
            f = torch.as_tensor(features, dtype=torch.float32, device=self.device)
            out = self.model.to_joint_space(f).float()
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out


def resize_uint8(x: torch.Tensor, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """Antialiased bilinear (or bicubic) resize of uint8 ``(B, 3, H, W)``
    patches to ``size`` px (torch's uint8 kernel; within 2 grey levels of
    the PIL resize CLAM applies, several times faster)."""
    if x.shape[0] == 0:
        return x.new_zeros((0, 3, size, size))
    return torch.nn.functional.interpolate(
        x, size=(size, size), mode=interpolation, antialias=True, align_corners=False
    )


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` window of ``(B, C, H, W)`` images
    (torchvision's CenterCrop offsets: ``round((H - size) / 2)``)."""
    h, w = x.shape[-2:]
    if size > min(h, w):
        raise Sae1nError(f"cannot centre-crop {size} px from {h}x{w} images")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[..., top : top + size, left : left + size]
