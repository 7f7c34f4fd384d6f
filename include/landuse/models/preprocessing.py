"""The one preprocessing implementation shared by training and scoring.

The seed's central warning: a scorer must replicate exactly what training did. So a
bundle carries a :class:`PreprocessSpec`, and both the trainer and every runner turn
decoded tiles into network input through :func:`to_tensor` — never through their own code.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, model_validator


class PreprocessSpec(BaseModel):
    """How decoded uint8 tiles become the network's input tensor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: int = Field(224, ge=8, le=4096, description="square input side in pixels")
    bands: tuple[Literal["red", "green", "blue", "nir"], ...] = Field(
        ("red", "green", "blue"), description="image channels the tiles hold, in order"
    )
    channel_order: Literal["RGB", "BGR"] = Field("RGB", description="order fed to the network")
    layout: Literal["NHWC", "NCHW"] = "NHWC"
    dtype: Literal["float32", "uint8"] = Field("float32", description="input tensor type")
    scale: float = Field(1.0, gt=0, description="multiply pixel values by this first")
    mean: tuple[float, ...] = Field((0.0, 0.0, 0.0), description="then subtract, per channel")
    std: tuple[float, ...] = Field((1.0, 1.0, 1.0), description="then divide, per channel")

    @model_validator(mode="after")
    def _consistent(self) -> PreprocessSpec:
        n = self.channels
        if len(self.mean) != n or len(self.std) != n:
            raise ValueError(
                f"preprocessing mean {self.mean} and std {self.std} need {n} values "
                f"(one per channel of {self.channel_order})"
            )
        if any(s == 0 for s in self.std):
            raise ValueError("preprocessing std values must be non-zero")
        if self.bands[:3] != ("red", "green", "blue"):
            raise ValueError(f"preprocessing bands must start with red, green, blue: {self.bands}")
        if self.dtype == "uint8" and (self.scale != 1 or any(self.mean) or set(self.std) != {1}):
            raise ValueError("a uint8 input takes raw pixels: scale 1, mean 0, std 1")
        return self

    @property
    def channels(self) -> int:
        """Channels fed to the network (RGB or BGR: 3)."""
        return 3

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one input, without the batch axis."""
        s = self.input_size
        return (self.channels, s, s) if self.layout == "NCHW" else (s, s, self.channels)


# The seed's conventions, for import-model and documentation.
TF_RESNET50 = PreprocessSpec(mean=(123.68, 116.78, 103.94))
CAFFE_BGR = PreprocessSpec(channel_order="BGR", mean=(103.939, 116.779, 123.68))
CNTK_ALEXNET = PreprocessSpec(channel_order="BGR", layout="NCHW", mean=(114.0, 114.0, 114.0))


class ImageError(ValueError):
    """A tile cannot be decoded or does not fit the preprocessing spec."""


def decode(data: bytes, spec: PreprocessSpec, name: str = "image") -> np.ndarray:
    """Decode PNG/JPEG bytes into an (H, W, 3) uint8 RGB array of the spec's size.

    Tiles of another size are resized (bilinear) so the network always sees its input size.

    Raises:
        ImageError: the bytes are not a decodable image, or lack the spec's bands.
    """
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            img: Image.Image = opened
            if img.mode in ("P", "PA"):  # palette colours are RGB
                img = img.convert("RGBA" if img.mode == "PA" else "RGB")
            bands = len(img.getbands())
            if bands < 3:
                raise ImageError(f"{name}: {bands} band(s), the model needs red, green, blue")
            rgb = img.convert("RGB") if img.mode != "RGB" else img
            if rgb.size != (spec.input_size, spec.input_size):
                rgb = rgb.resize((spec.input_size, spec.input_size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageError(f"{name}: not a readable image ({err})") from err


def to_tensor(images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A batch of (N, H, W, 3) uint8 RGB tiles as the network's input tensor."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ImageError(f"expected (N, H, W, 3) RGB tiles, got shape {images.shape}")
    x = images[..., ::-1] if spec.channel_order == "BGR" else images
    if spec.dtype == "uint8":
        out = np.ascontiguousarray(x)
    else:
        out = x.astype(np.float32)
        if spec.scale != 1:
            out *= np.float32(spec.scale)
        out -= np.asarray(spec.mean, dtype=np.float32)
        if any(s != 1 for s in spec.std):
            out /= np.asarray(spec.std, dtype=np.float32)
    if spec.layout == "NCHW":
        out = np.ascontiguousarray(out.transpose(0, 3, 1, 2))
    return out


def load_batch(
    datas: list[bytes], spec: PreprocessSpec, names: list[str] | None = None
) -> np.ndarray:
    """Decode and preprocess a batch of encoded tiles (the path scoring and training share)."""
    names = names or [f"image {i}" for i in range(len(datas))]
    decoded = np.stack([decode(d, spec, n) for d, n in zip(datas, names, strict=True)])
    return to_tensor(decoded, spec)
