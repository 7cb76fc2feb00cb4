"""Image parameterisations for feature visualisation: K images (one per unit) as one batched module.

Every parameterisation is an ``nn.Module`` whose ``forward()`` returns ``[K, C, H, W]`` images in
[0, 1] (C = 3, or 4 with an alpha channel) and whose ``project()`` puts its parameters back inside
their bounds after an optimiser step. Item ``i`` is initialised from ``generators[i]`` only, so a
batch of K units starts exactly where K separate runs start.

The Fourier parameterisation follows Lucid (``lucid.optvis.param.spatial.fft_image``) and its
PyTorch port Lucent: a real 2-D spectrum per channel, scaled by ``1 / max(f, 1 / max(H, W)) **
decay_power``, inverted with an orthonormal inverse rFFT (Lucid's ``irfft2d * sqrt(H * W)``), divided
by 4, then mapped through Lucid's colour decorrelation matrix and a sigmoid.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Square root of the colour covariance of ImageNet (Lucid's color_correlation_svd_sqrt).
_COLOR_SVD_SQRT = np.asarray([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32)
COLOR_CORRELATION = _COLOR_SVD_SQRT / np.max(np.linalg.norm(_COLOR_SVD_SQRT, axis=0))
# Lucid divides the inverse FFT by this constant; larger values give less saturated starts.
FFT_SCALE_DIVISOR = 4.0


def rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """|f| of every coefficient of a real 2-D FFT of an h x w image: [h, w // 2 + 1]."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


def spectrum_scale(h: int, w: int, decay_power: float) -> np.ndarray:
    """Lucid's per-frequency amplitude scale: 1 / max(|f|, 1 / max(h, w)) ** decay_power."""
    return 1.0 / np.maximum(rfft2d_freqs(h, w), 1.0 / max(w, h)) ** decay_power


def decorrelate_colors(x: torch.Tensor) -> torch.Tensor:
    """Map decorrelated colour channels [K, 3, H, W] to RGB with Lucid's normalised colour matrix."""
    m = torch.as_tensor(COLOR_CORRELATION, dtype=x.dtype, device=x.device)
    return torch.einsum("kchw,dc->kdhw", x, m)


def to_valid_rgb(raw: torch.Tensor, *, decorrelate: bool, sigmoid: bool = True) -> torch.Tensor:
    """Raw values [K, 3 or 4, H, W] -> image in [0, 1]: decorrelate RGB, sigmoid every channel.

    Without ``sigmoid`` the values are returned as they are (pixels bounded by projection instead).
    """
    rgb, alpha = raw[:, :3], raw[:, 3:]
    if decorrelate:
        rgb = decorrelate_colors(rgb)
    out = torch.cat([rgb, alpha], 1) if alpha.shape[1] else rgb
    return torch.sigmoid(out) if sigmoid else out


def _draw(generators: Sequence[torch.Generator], shape: tuple[int, ...], sd: float) -> torch.Tensor:
    """One normal draw of ``shape`` per item, each from its own generator (CPU, float32)."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators]) * sd


class ImageParam(nn.Module):
    """Base class: ``forward() -> [K, C, H, W]`` in the image range, ``project()`` enforces bounds."""

    channels: int = 3
    size: tuple[int, int]

    def raw(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self) -> torch.Tensor:
        return self.raw()

    @torch.no_grad()
    def project(self) -> None:
        """Clamp parameters into their bounds (a no-op for unbounded parameterisations)."""

    def box(self) -> dict[int, tuple[object, object]]:
        """Bounds of bounded parameters: ``id(param) -> (lower, upper)``, each None, a float or a
        tensor broadcastable to one item of the parameter (what bounded L-BFGS honours exactly)."""
        return {}

    @property
    def batch(self) -> int:
        return int(self.forward_shape()[0])

    def forward_shape(self) -> tuple[int, ...]:  # pragma: no cover - abstract
        raise NotImplementedError


class _SpatialParam(ImageParam):
    """Shared pieces of pixel and Fourier images: colour mapping, alpha, shared low-res component."""

    def _setup(
        self,
        k: int,
        size: tuple[int, int],
        *,
        decorrelate: bool,
        sigmoid: bool,
        alpha: bool,
        shared: int | None,
        shared_sd: float,
        generators: Sequence[torch.Generator] | None,
        seed: int,
    ) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.k = int(k)
        self.channels = 4 if alpha else 3
        self.decorrelate = decorrelate
        self.sigmoid = sigmoid
        self.shared = None
        if shared:
            # Lucid's aligned visualisations: one low-resolution image added to every item of the batch.
            h, w = (max(1, math.ceil(s / shared)) for s in self.size)
            g = torch.Generator().manual_seed(int(seed))
            self.shared = nn.Parameter(torch.randn((1, self.channels, h, w), generator=g) * shared_sd)

    def _finish(self, raw: torch.Tensor) -> torch.Tensor:
        if self.shared is not None:
            raw = raw + F.interpolate(self.shared, size=self.size, mode="bilinear", align_corners=False)
        return to_valid_rgb(raw, decorrelate=self.decorrelate, sigmoid=self.sigmoid)

    def forward(self) -> torch.Tensor:
        return self._finish(self.raw())

    def forward_shape(self) -> tuple[int, ...]:
        return (self.k, self.channels, *self.size)


class PixelParam(_SpatialParam):
    """Raw pixels, one tensor per item.

    With ``sigmoid=False`` (cnnpref's parameterisation) the parameters *are* the RGB pixels and
    ``bounds`` (default (0, 1)) are enforced by ``project()`` after every step.
    """

    def __init__(
        self,
        k: int,
        size: tuple[int, int],
        *,
        sd: float = 0.01,
        decorrelate: bool = False,
        sigmoid: bool = True,
        alpha: bool = False,
        bounds: tuple[float, float] | None = (0.0, 1.0),
        shared: int | None = None,
        shared_sd: float = 0.01,
        generators: Sequence[torch.Generator] | None = None,
        init: torch.Tensor | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self._setup(
            k,
            size,
            decorrelate=decorrelate,
            sigmoid=sigmoid,
            alpha=alpha,
            shared=shared,
            shared_sd=shared_sd,
            generators=generators,
            seed=seed,
        )
        shape = (self.channels, *self.size)
        if init is None:
            gens = generators or [torch.Generator().manual_seed(seed + i) for i in range(k)]
            init = _draw(gens, shape, sd)
            if not sigmoid:
                init = init + 0.5  # raw pixels start as grey plus noise, inside the bounds
        if tuple(init.shape) != (k, *shape):
            raise ValueError(f"init has shape {tuple(init.shape)}, expected {(k, *shape)}")
        self.pixels = nn.Parameter(init.detach().clone().float())
        self.bounds = None if sigmoid else bounds
        if self.bounds is not None:
            self.project()

    def raw(self) -> torch.Tensor:
        return self.pixels

    @torch.no_grad()
    def project(self) -> None:
        if self.bounds is not None:
            self.pixels.clamp_(*self.bounds)

    def box(self) -> dict[int, tuple[object, object]]:
        return {} if self.bounds is None else {id(self.pixels): tuple(self.bounds)}


class FFTParam(_SpatialParam):
    """Lucid's Fourier parameterisation with decorrelated colour and a sigmoid.

    ``spectrum`` is [K, C, H, W // 2 + 1, 2] (real, imaginary), Lucent's layout, so a Lucent spectrum
    can be passed as ``init`` (Lucent keeps one extra, unused column for odd W; it is dropped).
    """

    def __init__(
        self,
        k: int,
        size: tuple[int, int],
        *,
        sd: float = 0.01,
        decay_power: float = 1.0,
        decorrelate: bool = True,
        alpha: bool = False,
        shared: int | None = None,
        shared_sd: float = 0.01,
        generators: Sequence[torch.Generator] | None = None,
        init: torch.Tensor | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self._setup(
            k,
            size,
            decorrelate=decorrelate,
            sigmoid=True,
            alpha=alpha,
            shared=shared,
            shared_sd=shared_sd,
            generators=generators,
            seed=seed,
        )
        h, w = self.size
        shape = (self.channels, h, w // 2 + 1, 2)
        if init is None:
            gens = generators or [torch.Generator().manual_seed(seed + i) for i in range(k)]
            init = _draw(gens, shape, sd)
        init = init[..., : w // 2 + 1, :]
        if tuple(init.shape) != (k, *shape):
            raise ValueError(f"init has shape {tuple(init.shape)}, expected {(k, *shape)}")
        self.decay_power = float(decay_power)
        self.spectrum = nn.Parameter(init.detach().clone().float())
        scale = torch.tensor(spectrum_scale(h, w, decay_power), dtype=torch.float32)
        self.register_buffer("scale", scale[None, None, :, :, None], persistent=False)

    def raw(self) -> torch.Tensor:
        h, w = self.size
        spec = torch.view_as_complex((self.scale * self.spectrum).contiguous())
        return torch.fft.irfftn(spec, s=(h, w), norm="ortho") / FFT_SCALE_DIVISOR


def fft_sample(
    k: int,
    size: tuple[int, int],
    *,
    sd: float,
    decay_power: float,
    decorrelate: bool = True,
    generators: Sequence[torch.Generator],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """A fresh random image per item from a scaled spectrum (Lucid's ``image_sample``), in [0, 1]."""
    p = FFTParam(k, size, sd=sd, decay_power=decay_power, decorrelate=decorrelate, generators=generators)
    with torch.no_grad():
        return p.to(device)()


# ----------------------------------------------------------------------------------------------
# Deep generator network prior (Dosovitskiy & Brox 2016, the fc6 generator cnnpref uses)


class _View(nn.Module):
    def __init__(self, *shape: int):
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(-1, *self.shape)


def _fc6_layers() -> OrderedDict[str, nn.Module]:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for name in ("defc7", "defc6", "defc5"):
        layers[name] = nn.Linear(4096, 4096)
        layers["relu_" + name] = nn.LeakyReLU(0.3)
    layers["reshape"] = _View(256, 4, 4)
    # (name, in, out, kernel, stride); stride-2 "deconv" layers double the size, 4 -> 256 pixels.
    spec = [
        ("deconv5", 256, 256, 4, 2),
        ("conv5_1", 256, 512, 3, 1),
        ("deconv4", 512, 256, 4, 2),
        ("conv4_1", 256, 256, 3, 1),
        ("deconv3", 256, 128, 4, 2),
        ("conv3_1", 128, 128, 3, 1),
        ("deconv2", 128, 64, 4, 2),
        ("deconv1", 64, 32, 4, 2),
        ("deconv0", 32, 3, 4, 2),
    ]
    for name, cin, cout, k, s in spec:
        layers[name] = nn.ConvTranspose2d(cin, cout, k, s, 1)
        if name != "deconv0":
            layers["relu_" + name] = nn.LeakyReLU(0.3)
    return layers


class FC6Generator(nn.Module):
    """The fc6-code generator: a 4096-d code -> a 256 x 256 BGR image with the ImageNet mean removed.

    Module names match Caffe's prototxt (defc7 ... deconv0) and the PyTorch conversion Lucent loads
    (``G.<name>.weight``), so either kind of converted file loads with ``load_generator``.
    """

    code_dim = 4096
    # Per-channel RGB mean (0..255) the Caffe generator's output is relative to.
    rgb_mean = (123.0, 117.0, 104.0)

    def __init__(self):
        super().__init__()
        self.G = nn.Sequential(_fc6_layers())

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        """[K, 4096] codes -> [K, 3, 256, 256] RGB images in [0, 1]."""
        bgr = self.G(code)
        mean = torch.tensor(self.rgb_mean, dtype=bgr.dtype, device=bgr.device).view(1, 3, 1, 1)
        return ((bgr.flip(1) + mean) / 255.0).clamp(0.0, 1.0)


def load_generator(path: str | os.PathLike | None = None, *, seed: int = 0) -> FC6Generator:
    """An fc6 generator with weights from ``path`` (.safetensors or a torch file read with
    ``weights_only=True``; keys with or without the ``G.`` prefix), or random weights under ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        gen = FC6Generator()
    if path is not None:
        from .._errors import WeightsError

        path = os.fspath(path)
        try:
            if path.endswith(".safetensors"):
                from safetensors.torch import load_file

                sd = load_file(path)
            else:
                sd = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError) as err:
            raise WeightsError(f"cannot read generator weights {path!r}: {err}") from err
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        sd = {(k if k.startswith("G.") else "G." + k): v for k, v in sd.items()}
        try:
            gen.load_state_dict(sd, strict=True)
        except RuntimeError as err:
            first = str(err).splitlines()[0]
            raise WeightsError(f"{path!r} is not an fc6 generator state dict: {first}") from err
    gen.eval()
    for p in gen.parameters():
        p.requires_grad_(False)
    return gen


class DGNParam(ImageParam):
    """Images made by a deep generator network from K optimised codes, codes kept inside bounds.

    cnnpref optimises the fc6 code with lower bound 0 (the code is a post-ReLU feature) and an upper
    bound per dimension; ``code_bounds`` is (lower, upper), each a float, a [4096] tensor, or None.
    The 256-pixel output is resized to ``size``.
    """

    def __init__(
        self,
        k: int,
        size: tuple[int, int],
        generator: FC6Generator,
        *,
        code_bounds: tuple[object, object] = (0.0, None),
        sd: float = 1.0,
        generators: Sequence[torch.Generator] | None = None,
        init: torch.Tensor | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.k = int(k)
        self.size = (int(size[0]), int(size[1]))
        self.generator = generator
        dim = generator.code_dim
        if init is None:
            gens = generators or [torch.Generator().manual_seed(seed + i) for i in range(k)]
            init = _draw(gens, (dim,), sd).abs()
        self.code = nn.Parameter(init.detach().clone().float())
        lo, hi = code_bounds
        self.register_buffer("lower", None if lo is None else torch.as_tensor(lo, dtype=torch.float32))
        self.register_buffer("upper", None if hi is None else torch.as_tensor(hi, dtype=torch.float32))
        self.project()

    def forward(self) -> torch.Tensor:
        img = self.generator(self.code)
        if tuple(img.shape[-2:]) != self.size:
            img = F.interpolate(img, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return img

    def forward_shape(self) -> tuple[int, ...]:
        return (self.k, 3, *self.size)

    @torch.no_grad()
    def project(self) -> None:
        self.code.clamp_(min=self.lower, max=self.upper)

    def box(self) -> dict[int, tuple[object, object]]:
        return {id(self.code): (self.lower, self.upper)}
