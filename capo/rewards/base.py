"""What every hub reward shares (``capo.rewards.real``, ``mps``, ``vqascore``): loading weights
with errors that say how to get them, upstream's PIL preprocessing (``Pixels``, equal to
transformers 4.x's processors), input checks, the autocast choice, and the batched ``Reward``
base class."""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from typing import Sequence

import numpy as np

from capo.rewards import RewardLoadError


CLIP_MAX_TOKENS = 77


DEFAULT_BATCH_SIZE = 16


def resolve_device(device):
    import torch

    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


def require(module: str, pip_name: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise RewardLoadError(f"{what} needs the Python package {pip_name!r}: `pip install {pip_name}` ({e})") from e


def first_line(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def hub_hint(hub_id: str) -> str:
    return (f"Download it on a connected machine with `hf download {hub_id}` (older huggingface_hub: "
            f"`huggingface-cli download {hub_id}`), or `hf download {hub_id} --local-dir DIR` and pass path=DIR.")


def from_pretrained(cls, source, what: str, hub_id: str, **kwargs):
    """``cls.from_pretrained(source)``; offline / not-found errors become ``RewardLoadError``."""
    try:
        return cls.from_pretrained(str(source), **kwargs)
    except OSError as e:  # huggingface_hub's offline / not-found / gated errors are OSErrors
        raise RewardLoadError(f"{what}: cannot load {str(source)!r} ({first_line(e)}). "
                              f"{hub_hint(hub_id)}") from e


def has_processor(path) -> bool:
    """A processor saved next to the model (transformers 5 writes ``processor_config.json``,
    older versions ``preprocessor_config.json``)."""
    return path is not None and any((Path(path) / f).is_file()
                                    for f in ("processor_config.json", "preprocessor_config.json"))


def to_pil(images: np.ndarray) -> list:
    from PIL import Image

    return [Image.fromarray(im) for im in images]


def check_inputs(images, prompts) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (B, H, W, 3); got {images.dtype} {images.shape}")
    if len(prompts) != len(images):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    return images


def pooled_output(out):
    """transformers < 5 returns a tensor from ``get_*_features``; 5.x a model output."""
    import torch

    return out if torch.is_tensor(out) else out.pooler_output


# The rewards were trained and published with transformers 4.x, whose image processors resize
# with PIL; transformers 5's default ("fast") processors resize with torchvision and move pixels
# by up to 2 levels (MPS scores by up to ~8e-4). The OpenAI-CLIP rewards (aesthetic, CLIPScore)
# use OpenAI's torchvision transform on PIL images instead, which crops with rounded offsets.
# capo preprocesses all of them here, with PIL, whatever transformers version is installed.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)


OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _size_field(size, key):
    """``size[key]`` of a processor's size (a dict in transformers 4.x, a ``SizeDict`` in 5.x)."""
    v = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(v) if v is not None else None


class Pixels:
    """PIL preprocessing: uint8 ``(B, H, W, 3)`` images (or PIL images) -> float32 ``(B, 3, h, w)``.

    Steps, as transformers 4.x's ``CLIPImageProcessor`` / ``BlipImageProcessor`` run them
    (``image_processing_clip.py``; ``image_transforms.py`` ``get_resize_output_image_size``,
    ``resize``, ``center_crop``, ``rescale``, ``normalize``):

    * RGB conversion (``do_convert_rgb``);
    * resize with PIL (``resample``, bicubic for every reward here): ``size`` an int resizes the
      shortest side to it and the other to ``int(size * long / short)`` (truncated, as
      torchvision's ``Resize``), ``size`` a pair ``(h, w)`` resizes to exactly that;
    * center crop to ``crop`` ``(h, w)``: top/left offsets ``(H - h) // 2`` (``crop_rounding=
      "floor"``, transformers) or ``int(round((H - h) / 2))`` (``"round"``, torchvision's
      ``CenterCrop``, used by OpenAI CLIP's ``_transform``: ``Pixels.openai``);
    * rescale ``x * rescale_factor`` computed in float64 then cast to float32 (``Pixels.openai``:
      ``x / 255`` in float32, torchvision's ``ToTensor``), normalise ``(x - mean) / std`` in float32.
    """

    def __init__(self, size, crop=None, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, resample: int = 3,
                 crop_rounding: str = "floor", rescale_factor: float | None = 1 / 255, normalize: bool = True,
                 convert_rgb: bool = True):
        if crop_rounding not in ("floor", "round"):
            raise ValueError(f"crop_rounding must be 'floor' or 'round'; got {crop_rounding!r}")
        self.size = size if size is None or isinstance(size, int) else (int(size[0]), int(size[1]))
        self.crop = None if crop is None else (int(crop[0]), int(crop[1]))
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.resample, self.crop_rounding = int(resample), crop_rounding
        self.rescale_factor, self.normalize, self.convert_rgb = rescale_factor, bool(normalize), bool(convert_rgb)
        self.to_tensor = False  # rescale as transformers does (float64 product, cast to float32)

    @classmethod
    def openai(cls, n_px: int) -> "Pixels":
        """OpenAI CLIP's ``_transform(n_px)`` (openai/CLIP ``clip/clip.py``; jmhessel/clipscore's
        ``_transform_test``): ``Resize(n_px, BICUBIC)``, ``CenterCrop(n_px)``, ``ToTensor``,
        ``Normalize`` with OpenAI's mean and std."""
        p = cls(int(n_px), (int(n_px), int(n_px)), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, 3, "round")
        p.to_tensor = True  # torchvision's ToTensor: float32 x / 255
        return p

    @classmethod
    def from_processor(cls, proc, crop_rounding: str = "floor") -> "Pixels":
        """The steps a transformers image processor's config asks for, run as transformers 4.x's
        PIL processors run them (whichever backend ``proc`` itself would use)."""
        ip = getattr(proc, "image_processor", proc)
        if getattr(ip, "do_pad", None):
            raise ValueError(f"{type(ip).__name__} pads (do_pad=True): not a preprocessing capo reproduces")
        size = None
        if getattr(ip, "do_resize", True):
            s = ip.size
            if isinstance(s, int):  # an old int config, already converted by 4.x's get_size_dict
                size = s if not getattr(ip, "default_to_square", True) else (s, s)
            elif _size_field(s, "shortest_edge") and not _size_field(s, "longest_edge"):
                size = _size_field(s, "shortest_edge")
            elif _size_field(s, "height") and _size_field(s, "width"):
                size = (_size_field(s, "height"), _size_field(s, "width"))
            else:
                raise ValueError(f"{type(ip).__name__}: unsupported resize size {s!r}")
        crop = None
        if getattr(ip, "do_center_crop", False):
            c = ip.crop_size
            crop = (c, c) if isinstance(c, int) else (_size_field(c, "height"), _size_field(c, "width"))
        normalize = bool(getattr(ip, "do_normalize", True))
        resample = getattr(ip, "resample", None)
        return cls(size, crop, ip.image_mean if normalize else (0.0,) * 3, ip.image_std if normalize else (1.0,) * 3,
                   3 if resample is None else int(resample), crop_rounding,
                   float(ip.rescale_factor) if getattr(ip, "do_rescale", True) else None, normalize,
                   getattr(ip, "do_convert_rgb", True) is not False)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` after the resize (transformers' ``get_resize_output_image_size``)."""
        if self.size is None:
            return height, width
        if not isinstance(self.size, int):
            return self.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.size, int(self.size * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def one(self, image) -> np.ndarray:
        """One image -> float32 ``(3, h, w)``."""
        from PIL import Image

        im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
        if self.convert_rgb and im.mode != "RGB":
            im = im.convert("RGB")
        if self.size is not None:
            h, w = self.output_size(im.height, im.width)
            im = im.resize((w, h), resample=self.resample)
        x = np.asarray(im)
        if self.crop is not None:
            (H, W), (ch, cw) = x.shape[:2], self.crop
            if ch > H or cw > W:
                raise ValueError(f"center crop {self.crop} larger than the resized image {(H, W)}")
            if self.crop_rounding == "floor":
                top, left = (H - ch) // 2, (W - cw) // 2
            else:
                top, left = int(round((H - ch) / 2.0)), int(round((W - cw) / 2.0))
            x = x[top:top + ch, left:left + cw]
        if self.to_tensor:
            x = x.astype(np.float32) / np.float32(255)
        elif self.rescale_factor:
            x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
        else:
            x = x.astype(np.float32)
        if self.normalize:
            x = (x - self.mean) / self.std
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def __call__(self, images):
        import torch

        return torch.from_numpy(np.stack([self.one(im) for im in images]))

    def __repr__(self) -> str:
        return (f"Pixels(size={self.size}, crop={self.crop}, resample={self.resample}, "
                f"crop_rounding={self.crop_rounding!r})")


def autocast_dtype(autocast, device, upstream: str | None):
    """The autocast dtype a reward runs under: ``"auto"`` = ``upstream`` on CUDA (the dtype the
    upstream scorer autocasts to there) and none elsewhere; ``None`` / ``"off"`` / ``"float32"`` =
    none; ``"bfloat16"`` / ``"float16"`` (or a torch dtype) = that one, on any device."""
    import torch

    if autocast == "auto":
        autocast = upstream if torch.device(device).type == "cuda" else None
    if autocast in (None, False, "off", "none", "float32", torch.float32):
        return None
    names = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    dt = names.get(autocast, autocast)
    if dt not in (torch.bfloat16, torch.float16):
        raise ValueError(f"autocast must be 'auto', None, 'bfloat16' or 'float16'; got {autocast!r}")
    return dt


class Reward:
    """Validation, batching, ``no_grad`` and the reward's autocast (``self.autocast``: a torch dtype
    or None) around ``_score(images, prompts) -> tensor (b,)``."""

    name = ""
    bt_transform = "identity"
    autocast = None

    def __init__(self, device, batch_size: int):
        self.device = device
        self.batch_size = int(batch_size)

    def _score(self, images: np.ndarray, prompts: list[str]):
        raise NotImplementedError

    def __call__(self, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        import torch

        images = check_inputs(images, prompts)
        prompts = [str(p) for p in prompts]
        out = np.empty(len(images), np.float64)
        amp = (torch.autocast(torch.device(self.device).type, dtype=self.autocast) if self.autocast is not None
               else contextlib.nullcontext())
        with torch.no_grad(), amp:
            for i in range(0, len(images), self.batch_size):
                s = self._score(images[i:i + self.batch_size], prompts[i:i + self.batch_size])
                out[i:i + len(s)] = s.double().cpu().numpy()
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, bt_transform={self.bt_transform!r})"
