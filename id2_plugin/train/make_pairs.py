"""Make (edited query, origin) training pairs: with a real diffusion model, or with an offline proxy.

Two generators write the same output: image files under ``<out>/edited/`` and a pairs manifest
(:mod:`.pairs`) at ``<out>/pairs.jsonl``. Both are seeded per (origin content, edit index), so a rerun
produces the same files and an interrupted run resumes: edits whose file already exists are kept.

* :func:`make_diffusion_pairs` is what the ID2 paper does: SDEdit-style text-guided image-to-image with
  diffusers' ``AutoPipelineForImage2Image`` (strength 0.9 for SD 2, guidance 7.5, several prompts per
  origin). It needs the model weights (a hub id or a local folder) and realistically a GPU.
* :func:`make_proxy_pairs` runs on a CPU without any generative model. **Its edits are proxies for real
  diffusion edits, not diffusion edits**: pixel-space content edits (objects pasted from other photos,
  removed, moved or duplicated; background replaced; re-framing, zoom-out; pose-like warps; text and
  shapes), style edits (colour grading, painterly / cartoon / sketch filters, posterisation), then a
  "regeneration" through the TAEF2 VAE (encode, noise the latent at strength ``s``, decode), then
  degradations (JPEG, blur, rescaling, noise). A W trained on them must be checked on real edits.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import require
from ..embedders.base import select_device
from ..errors import ConfigError, MediaError
from ..media import iter_image_files, load_image
from ..pairs import Pair, write_pairs
from ._proxy_ops import apply_op, sample_degradations, sample_recipe

MANIFEST_NAME = "pairs.jsonl"
EDITED_DIR = "edited"

#: Prompts used when none are given: generic text-guided edits of the kinds the paper's prompt set holds.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "a watercolor painting",
    "an oil painting in the style of Van Gogh",
    "a pencil sketch",
    "a photo taken at sunset",
    "a photo in winter with snow",
    "a cartoon illustration",
    "a cyberpunk scene with neon lights",
    "a vintage photograph",
    "a photo with a dog in the scene",
    "a detailed 3D render",
    "an anime style picture",
    "a photo on a rainy day",
)


def read_prompts(path: str | os.PathLike) -> list[str]:
    """One prompt per line; blank lines and lines starting with ``#`` are ignored."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"prompts file not found: {p}")
    prompts = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    prompts = [ln for ln in prompts if ln and not ln.startswith("#")]
    if not prompts:
        raise ConfigError(f"prompts file {p} has no prompts")
    return prompts


def _content_seed(path: Path) -> int:
    """A seed from the file's bytes, so an origin's edits do not depend on its path or on list order."""
    return int.from_bytes(hashlib.sha256(path.read_bytes()).digest()[:8], "little")


def _edit_name(origin: Path, k: int, ext: str) -> str:
    tag = hashlib.sha256(str(origin.resolve()).encode()).hexdigest()[:8]
    return f"{origin.stem}-{tag}-e{k}.{ext}"


def _save(arr: np.ndarray, path: Path, quality: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.fromarray(arr).save(tmp, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    os.replace(tmp, path)


def _as_origins(origins: Sequence[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    paths = iter_image_files([origins] if isinstance(origins, (str, os.PathLike)) else list(origins))
    if not paths:
        raise ConfigError(f"no images found in {origins}")
    return [Path(p).resolve() for p in paths]


def _report_skip(bar: Any, origin: Path, exc: Exception) -> None:
    msg = str(exc) if isinstance(exc, MediaError) else f"{origin}: {exc}"
    bar.write(f"skipped unreadable origin {msg}", file=sys.stderr)


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="edit", disable=not enabled)


# -- real diffusion edits ---------------------------------------------------------------------------
def _fit_size(w: int, h: int, size: int, multiple: int = 64) -> tuple[int, int]:
    """Longer side ``size``, both sides multiples of ``multiple`` (the UNet downsamples by 64)."""
    s = size / max(w, h)
    return max(multiple, round(w * s / multiple) * multiple), max(multiple, round(h * s / multiple) * multiple)


def _img2img_pipeline(model: str, device: str, dtype: str) -> Any:
    """A diffusers img2img pipeline for ``model`` (hub id or local folder) on the selected device."""
    diffusers = require("diffusers")
    dev, tdtype = select_device(device, dtype)
    try:
        pipeline = diffusers.AutoPipelineForImage2Image.from_pretrained(model, torch_dtype=tdtype)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load diffusion model {model!r}: {exc}") from None
    pipeline = pipeline.to(dev)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _edit(pipeline: Any, image: Any, prompt: str, seed: int, settings: dict[str, Any]) -> np.ndarray:
    """One seeded img2img edit of ``image`` (PIL) as RGB uint8."""
    torch = require("torch")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    result = pipeline(prompt=prompt, image=image, generator=gen, **settings).images[0]
    return np.asarray(result.convert("RGB"))


def make_diffusion_pairs(
    origins: Sequence[str | os.PathLike] | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model: str,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    edits_per_origin: int = 4,
    strength: float = 0.9,
    guidance_scale: float = 7.5,
    num_inference_steps: int = 50,
    size: int = 512,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "auto",
    image_format: str = "jpg",
    quality: int = 95,
    progress: bool = True,
    pipeline: Any = None,
) -> Path:
    """Edit every origin ``edits_per_origin`` times with a text-guided img2img diffusion model.

    ``model`` is a diffusers hub id or a local folder (``save_pretrained`` layout); ``pipeline`` may pass an
    already built pipeline instead. Each origin gets distinct prompts drawn (seeded) from ``prompts``.
    Unreadable origins are reported on stderr and skipped. Returns the manifest path.
    """
    if not prompts:
        raise ConfigError("make-pairs needs at least one prompt")
    if not 0.0 < strength <= 1.0:
        raise ConfigError(f"strength={strength} must be in (0, 1]")
    out = Path(out_dir)
    paths = _as_origins(origins)
    if pipeline is None:
        pipeline = _img2img_pipeline(model, device, dtype)
    settings = {"strength": strength, "guidance_scale": guidance_scale, "num_inference_steps": num_inference_steps}
    pairs: list[Pair] = []
    bar = _progress(len(paths) * edits_per_origin, "diffusion edits", progress)
    for origin in paths:
        try:
            image = load_image(origin)
            base_seed = _content_seed(origin)
        except (MediaError, OSError) as exc:
            _report_skip(bar, origin, exc)
            bar.update(edits_per_origin)
            continue
        rng = np.random.default_rng([seed, base_seed])
        order = rng.permutation(len(prompts))
        for k in range(edits_per_origin):
            prompt = prompts[int(order[k % len(prompts)])]
            target = out / EDITED_DIR / _edit_name(origin, k, image_format)
            # one draw per edit whether the file exists or not: a resumed run makes the same edits
            edit_seed = int(rng.integers(0, 2**63 - 1)) ^ k
            if not target.is_file():
                edited = _edit(pipeline, image.resize(_fit_size(*image.size, size)), prompt, edit_seed, settings)
                _save(edited, target, quality)
            pairs.append(
                Pair(
                    query=target,
                    origin=origin,
                    model=model,
                    prompt=prompt,
                    strength=strength,
                    source="diffusers-img2img",
                )
            )
            bar.update(1)
    bar.close()
    if not pairs:
        raise ConfigError("no pairs were made: every origin was unreadable")
    return write_pairs(out / MANIFEST_NAME, pairs)


# -- offline proxy edits ----------------------------------------------------------------------------
@dataclass
class _Pending:
    target: Path
    image: np.ndarray
    plan: ProxyPlan
    rng: np.random.Generator


class LatentRegenerator:
    """ "Regeneration" through TAEF2: encode, noise the latent at strength ``s``, decode.

    ``z' = mu + sqrt(1 - s) (z - mu) + sqrt(s) sigma eps`` with per-image, per-channel mean ``mu`` and
    spread ``sigma`` and spatially smoothed Gaussian ``eps``: textures and local colours change the way a
    partial re-synthesis changes them, while the layout survives (there is no denoiser to restore detail).
    """

    def __init__(self, weights: str | os.PathLike | None = None, device: str = "auto", size: int = 256) -> None:
        from ..embedders.taesd import TAEF2Decoder, TAEF2Encoder

        self.size = size
        self.encoder = TAEF2Encoder(weights=weights, device=device, dtype="float32", input_size=size)
        self.decoder = TAEF2Decoder(weights=weights, device=device, dtype="float32")

    def __call__(
        self, images: list[np.ndarray], strengths: list[float], smooths: list[float], rngs: list[np.random.Generator]
    ) -> list[np.ndarray]:
        torch = require("torch")
        cv2 = require("cv2")
        sq = np.stack([cv2.resize(im, (self.size, self.size), interpolation=cv2.INTER_AREA) for im in images])
        x = torch.from_numpy(sq).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(self.encoder.device)
        with torch.inference_mode():
            z = self.encoder.model(x).float().cpu()
        noise = []
        for zi, sm, rng in zip(z, smooths, rngs):
            e = rng.standard_normal(zi.shape).astype(np.float32)
            if sm > 0:
                e = cv2.GaussianBlur(e.transpose(1, 2, 0), (0, 0), sm).transpose(2, 0, 1)
                e = e / (e.std(axis=(1, 2), keepdims=True) + 1e-6)
            noise.append(e)
        eps = torch.from_numpy(np.stack(noise))
        s = torch.tensor(strengths, dtype=torch.float32)[:, None, None, None]
        mu = z.mean(dim=(2, 3), keepdim=True)
        sd = z.std(dim=(2, 3), keepdim=True)
        zn = mu + (1 - s).sqrt() * (z - mu) + s.sqrt() * sd * eps
        y = self.decoder.decode(zn).float().cpu()
        dec = ((y.permute(0, 2, 3, 1).numpy() + 1.0) * 127.5 + 0.5).clip(0, 255).astype(np.uint8)
        return [cv2.resize(d, (im.shape[1], im.shape[0]), interpolation=cv2.INTER_CUBIC) for d, im in zip(dec, images)]


def _load_rgb(path: Path, max_side: int) -> np.ndarray:
    img = load_image(path)
    if max(img.size) > max_side:
        s = max_side / max(img.size)
        img = img.resize((max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s))))
    return np.asarray(img.convert("RGB"))


@dataclass(frozen=True)
class ProxyPlan:
    """What one proxy edit does, drawn before anything runs (so it is known even for existing files)."""

    seed: tuple[int, ...]
    pixel_ops: tuple[str, ...]
    strength: float | None
    smooth: float
    degradations: tuple[str, ...]

    def describe(self) -> str:
        """``proxy:<op>+<op>+latent0.23+jpeg``: the manifest's ``source`` field."""
        names = (
            list(self.pixel_ops)
            + ([f"latent{self.strength:.2f}"] if self.strength is not None else [])
            + list(self.degradations)
        )
        return "proxy:" + ("+".join(names) or "identity")


def sample_plan(
    seed: tuple[int, ...],
    *,
    latent_prob: float,
    latent_strength: tuple[float, float],
    scene_prob: float = 0.0,
    crop_prob: float = 0.0,
) -> ProxyPlan:
    """The seeded plan of one proxy edit: pixel ops, latent regeneration strength (or None), degradations.

    With probability ``scene_prob`` the edit starts by re-staging the subject in a new scene (``restage``),
    else with probability ``crop_prob`` by a tight crop (``crop``); both replace the recipe's other layout
    changes. Those draws have their own random streams, so with both at 0 the plans are exactly those made
    before the options existed.
    """
    rng = np.random.default_rng([*seed, 0])
    pixel_ops = sample_recipe(rng)
    lead = None
    if scene_prob and np.random.default_rng([*seed, 3]).random() < scene_prob:
        lead = "restage"
    elif crop_prob and np.random.default_rng([*seed, 4]).random() < crop_prob:
        lead = "crop"
    if lead:
        pixel_ops = [lead, *(op for op in pixel_ops if op not in ("zoomout", "background", "reframe"))]
    strength = float(rng.uniform(*latent_strength)) if rng.random() < latent_prob else None
    smooth = float(rng.uniform(0.0, 1.5))
    return ProxyPlan(tuple(seed), tuple(pixel_ops), strength, smooth, tuple(sample_degradations(rng)))


def _donor_sampler(
    rng: np.random.Generator, exclude: Path, donor_paths: list[Path], cache: dict[Path, np.ndarray], max_side: int
) -> Callable[[], np.ndarray]:
    """A callable returning a random readable donor photo other than ``exclude``."""

    def draw() -> np.ndarray:
        for _ in range(20):
            p = donor_paths[int(rng.integers(0, len(donor_paths)))]
            if p == exclude:
                continue
            if p not in cache:
                try:
                    cache[p] = _load_rgb(p, max_side)
                except MediaError:
                    continue
                if len(cache) > 256:  # bounded memory: forget the oldest donor
                    cache.pop(next(iter(cache)))
            return cache[p]
        raise ConfigError("could not read any donor image (need readable photos besides the origin)")

    return draw


def _check_proxy_options(
    edits_per_origin: int, latent_strength: tuple[float, float], scene_prob: float, crop_prob: float
) -> None:
    """Refuse out-of-range proxy options before any work."""
    if edits_per_origin < 1:
        raise ConfigError(f"edits_per_origin={edits_per_origin} must be >= 1")
    lo, hi = latent_strength
    if not 0.0 <= lo <= hi < 1.0:
        raise ConfigError(f"latent_strength={latent_strength} must satisfy 0 <= lo <= hi < 1")
    for name, prob in (("scene_prob", scene_prob), ("crop_prob", crop_prob)):
        if not 0.0 <= prob <= 1.0:
            raise ConfigError(f"{name}={prob} must be in [0, 1]")


def _start_edit(
    plan: ProxyPlan,
    target: Path,
    image: np.ndarray,
    origin: Path,
    donor_paths: list[Path],
    donor_cache: dict[Path, np.ndarray],
    max_side: int,
) -> _Pending:
    """The plan's pixel ops applied to the origin: the edit up to its latent regeneration."""
    # Ops draw from their own stream, so the plan (and the manifest) never depends on execution.
    rng = np.random.default_rng([*plan.seed, 1])
    img = image
    donor = _donor_sampler(rng, origin, donor_paths, donor_cache, max_side)
    for name in plan.pixel_ops:
        img = apply_op(name, img, rng, donor)
    return _Pending(target, img, plan, rng)


class _ProxyBatch:
    """Edits waiting for the latent regeneration, which runs on a whole batch; then degraded and saved."""

    def __init__(
        self,
        bar: Any,
        batch_size: int,
        quality: int,
        regenerator: Callable[..., list[np.ndarray]] | None,
        weights: str | os.PathLike | None,
        device: str,
    ) -> None:
        """An empty batch; the regenerator is built on first use unless one is given."""
        self.bar, self.batch_size, self.quality = bar, batch_size, quality
        self.regen, self.weights, self.device = regenerator, weights, device
        self.pending: list[_Pending] = []

    def add(self, edit: _Pending) -> None:
        """Queue one edit; finish the batch when it is full."""
        self.pending.append(edit)
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Regenerate, degrade and save the queued edits."""
        self._regenerate([p for p in self.pending if p.plan.strength is not None])
        for p in self.pending:
            for name in p.plan.degradations:
                p.image = apply_op(name, p.image, p.rng, lambda: p.image)
            _save(p.image, p.target, self.quality)
        self.bar.update(len(self.pending))
        self.pending.clear()

    def _regenerate(self, todo: list[_Pending]) -> None:
        """Replace the images of ``todo`` by their regeneration through the VAE."""
        if not todo:
            return
        if self.regen is None:
            self.regen = LatentRegenerator(weights=self.weights, device=self.device)
        noise_rngs = [np.random.default_rng([*p.plan.seed, 2]) for p in todo]
        images, strengths, smooths = (
            [p.image for p in todo],
            [p.plan.strength for p in todo],
            [p.plan.smooth for p in todo],
        )
        regenerated = self.regen(images, strengths, smooths, noise_rngs)
        for p, im in zip(todo, regenerated):
            p.image = im


def make_proxy_pairs(
    origins: Sequence[str | os.PathLike] | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    edits_per_origin: int = 4,
    seed: int = 0,
    donors: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
    latent_prob: float = 0.5,
    latent_strength: tuple[float, float] = (0.05, 0.4),
    scene_prob: float = 0.0,
    crop_prob: float = 0.0,
    weights: str | os.PathLike | None = None,
    device: str = "auto",
    max_side: int = 384,
    batch_size: int = 8,
    quality: int = 95,
    progress: bool = True,
    regenerator: Callable[..., list[np.ndarray]] | None = None,
) -> Path:
    """Make ``edits_per_origin`` proxy edits of every origin (see the module docstring: NOT diffusion edits).

    ``donors`` are the photos that inserted objects, new backgrounds and mixed halves come from (default:
    the origins themselves; an origin is never its own donor). With probability ``latent_prob`` an edit is
    regenerated through TAEF2 at a strength drawn from ``latent_strength``; with probability ``scene_prob`` it
    re-stages the subject in a new scene first (the hardest, layout-changing kind of edit), else with probability
    ``crop_prob`` it starts with a tight crop. Each edit's randomness is seeded
    by (``seed``, the origin's bytes, edit index): the same inputs give the same files. Unreadable origins
    are reported and skipped; an unreadable donor is replaced by another. Returns the manifest path.
    """
    _check_proxy_options(edits_per_origin, latent_strength, scene_prob, crop_prob)
    out = Path(out_dir)
    paths = _as_origins(origins)
    donor_paths = _as_origins(donors) if donors is not None else paths
    donor_cache: dict[Path, np.ndarray] = {}
    pairs: list[Pair] = []
    bar = _progress(len(paths) * edits_per_origin, "proxy edits", progress)
    batch = _ProxyBatch(bar, batch_size, quality, regenerator, weights, device)
    for origin in paths:
        try:
            base_seed = _content_seed(origin)
            image = _load_rgb(origin, max_side)
        except (MediaError, OSError) as exc:
            _report_skip(bar, origin, exc)
            bar.update(edits_per_origin)
            continue
        for k in range(edits_per_origin):
            plan = sample_plan(
                (seed, base_seed, k),
                latent_prob=latent_prob,
                latent_strength=latent_strength,
                scene_prob=scene_prob,
                crop_prob=crop_prob,
            )
            target = out / EDITED_DIR / _edit_name(origin, k, "jpg")
            if target.is_file():
                bar.update(1)
            else:
                batch.add(_start_edit(plan, target, image, origin, donor_paths, donor_cache, max_side))
            pairs.append(
                Pair(
                    query=target,
                    origin=origin,
                    model="proxy:taef2",
                    strength=plan.strength or 0.0,
                    source=plan.describe(),
                )
            )
    batch.flush()
    bar.close()
    if not pairs:
        raise ConfigError("no pairs were made: every origin was unreadable")
    return write_pairs(out / MANIFEST_NAME, pairs)
