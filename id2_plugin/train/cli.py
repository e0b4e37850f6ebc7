"""CLI commands ``make-pairs`` and ``train`` (registered through the ``id2_register_commands`` hook)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..cli_support import EXIT_OK, cache_option, echo_json, get_state, handle_errors
from ..config import Config
from ..errors import ConfigError
from ..hookspecs import hookimpl


def _strength_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected LO,HI like 0.05,0.4, got {text!r}") from None
    return lo, hi


@click.command("make-pairs")
@click.argument("origins", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder: edited/ and pairs.jsonl.")
@click.option("--model", default=None, help="Diffusers img2img model: hub id or local folder (real diffusion edits).")
@click.option(
    "--proxy",
    is_flag=True,
    help="Offline proxy edits (TAEF2 latent noising + content/style edits), no diffusion model.",
)
@click.option("--edits-per-origin", type=int, default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option(
    "--prompts",
    "prompts_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="[diffusion] One prompt per line (default: a built-in set of generic edits).",
)
@click.option(
    "--strength", type=float, default=0.9, show_default=True, help="[diffusion] SDEdit strength (paper: 0.9 for SD 2)."
)
@click.option(
    "--guidance", type=float, default=7.5, show_default=True, help="[diffusion] Classifier-free guidance scale."
)
@click.option("--steps", type=int, default=50, show_default=True, help="[diffusion] Inference steps.")
@click.option("--size", type=int, default=512, show_default=True, help="[diffusion] Longer side of the model input.")
@click.option(
    "--donors",
    multiple=True,
    type=click.Path(exists=True),
    help="[proxy] Photos that inserted objects/backgrounds come from (default: the origins).",
)
@click.option(
    "--latent-prob",
    type=float,
    default=0.5,
    show_default=True,
    help="[proxy] Fraction of edits regenerated through TAEF2.",
)
@click.option(
    "--scene-prob",
    type=float,
    default=0.0,
    show_default=True,
    help="[proxy] Fraction of edits that re-stage the subject, smaller, in another photo's scene.",
)
@click.option(
    "--crop-prob",
    type=float,
    default=0.0,
    show_default=True,
    help="[proxy] Fraction of the other edits that start with a tight crop (45-85% of each side).",
)
@click.option(
    "--latent-strength",
    default="0.05,0.4",
    show_default=True,
    help="[proxy] LO,HI range of the latent noising strength.",
)
@click.option("--weights", default=None, help="[proxy] TAEF2 weights folder (default: model search path).")
@handle_errors
def make_pairs(
    origins: tuple[str, ...],
    out: str,
    model: str | None,
    proxy: bool,
    edits_per_origin: int,
    seed: int,
    device: str,
    prompts_file: str | None,
    strength: float,
    guidance: float,
    steps: int,
    size: int,
    donors: tuple[str, ...],
    latent_prob: float,
    scene_prob: float,
    crop_prob: float,
    latent_strength: str,
    weights: str | None,
) -> None:
    """Make (edited query, origin) training pairs from ORIGINS (files or folders) into OUT/pairs.jsonl.

    With --model: real text-guided img2img edits (diffusers AutoPipelineForImage2Image). With --proxy: offline
    proxy edits that only imitate diffusion edits; check a W trained on them against real edits.
    """
    from ..pairs import load_pairs
    from .make_pairs import (
        DEFAULT_PROMPTS,
        make_diffusion_pairs,
        make_proxy_pairs,
        read_prompts,
    )

    if bool(model) == proxy:
        raise ConfigError("give exactly one of --model MODEL (diffusion edits) or --proxy (offline proxy edits)")
    if model:
        manifest = make_diffusion_pairs(
            list(origins),
            out,
            model=model,
            prompts=read_prompts(prompts_file) if prompts_file else DEFAULT_PROMPTS,
            edits_per_origin=edits_per_origin,
            strength=strength,
            guidance_scale=guidance,
            num_inference_steps=steps,
            size=size,
            seed=seed,
            device=device,
        )
    else:
        manifest = make_proxy_pairs(
            list(origins),
            out,
            edits_per_origin=edits_per_origin,
            seed=seed,
            donors=list(donors) or None,
            latent_prob=latent_prob,
            scene_prob=scene_prob,
            crop_prob=crop_prob,
            latent_strength=_strength_range(latent_strength),
            weights=weights,
            device=device,
        )
    n = len(load_pairs(manifest))
    click.echo(f"wrote {n} pairs to {manifest}")
    sys.exit(EXIT_OK)


RECIPES = ("paper", "auto", "pca", "pair-whiten", "cosface")


@click.command("train")
@click.argument("pairs", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output W (.safetensors).")
@click.option(
    "--recipe",
    type=click.Choice(RECIPES),
    default=None,
    help="paper: CosFace W on PAIRS (the reference recipe); auto: choose among pca / pair-whiten / cosface by "
    "grouped cross-validation on --real pairs; pca, pair-whiten, cosface: that recipe, settings as given. "
    "Default: auto with --real, else paper.",
)
@click.option(
    "--real",
    "real_pairs",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Manifest of REAL edit pairs (repeatable): fitted on and cross-validated by origin group.",
)
@click.option(
    "--unlabelled",
    multiple=True,
    type=click.Path(exists=True),
    help="Photos without labels for the PCA map (folders recurse; repeatable); they are also the CV distractors.",
)
@click.option(
    "--folds", "n_folds", type=int, default=5, show_default=True, help="Grouped cross-validation folds on --real."
)
@click.option(
    "--rank", type=int, default=768, show_default=True, help="[pca recipes] Principal directions kept (= output dim)."
)
@click.option(
    "--eps", type=float, default=0.1, show_default=True, help="[pca recipes] Whitening regulariser (x mean variance)."
)
@click.option("--power", type=float, default=0.5, show_default=True, help="[pca recipes] 0.5 whitens, 0 only rotates.")
@click.option(
    "--shrink",
    type=float,
    default=0.6,
    show_default=True,
    help="[pair-whiten] Shrinkage of the edit scatter to identity.",
)
@click.option(
    "--proxy-weight",
    type=float,
    default=0.0,
    show_default=True,
    help="[cosface] Loss weight of a PAIRS (proxy) pair relative to a real pair (0: real pairs only).",
)
@click.option(
    "--val-pairs",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Validation manifest (other origins); default: hold out --val-fraction of the origins.",
)
@click.option("--val-fraction", type=float, default=0.15, show_default=True)
@click.option(
    "--distractors",
    multiple=True,
    type=click.Path(exists=True),
    help="Extra gallery images for validation (files or folders).",
)
@click.option(
    "--pool",
    type=int,
    default=None,
    help="Average-pool the latent spatially by this factor before W (paper: 2, pca recipes: 1).",
)
@click.option("--out-dim", type=int, default=512, show_default=True)
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option(
    "--ids-per-batch", type=int, default=32, show_default=True, help="P identities per batch (K members each)."
)
@click.option("--k", "k_members", type=int, default=4, show_default=True)
@click.option("--steps-per-epoch", type=int, default=None)
@click.option("--lr", type=float, default=3.5e-4, show_default=True)
@click.option("--init", type=click.Choice(["random", "pca", "lda"]), default="lda", show_default=True)
@click.option("--init-rank", type=int, default=1024, show_default=True, help="PCA subspace kept before LDA.")
@click.option(
    "--whiten-eps",
    type=float,
    default=10.0,
    show_default=True,
    help="Within-identity whitening regulariser of the init (x mean eigenvalue); "
    "higher keeps more raw-latent geometry.",
)
@click.option("--no-augment", is_flag=True, help="Disable latent-space random erasing.")
@click.option(
    "--anchor",
    type=float,
    default=0.0,
    show_default=True,
    help="Penalty on the distance of W from its closed-form init.",
)
@click.option("--patience", type=int, default=0, show_default=True, help="Early stopping on validation mAP (0 = off).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N (embedder.device).")
@click.option("--embedder", "embedder_name", default=None, help="Embedder name (embedder.name).")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep the latent matrix in this folder (default: a temporary folder deleted when training ends).",
)
@cache_option
@click.option("--checkpoint-dir", type=click.Path(file_okay=False), default=None, help="Default: OUT.ckpt.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint of an interrupted run.")
@click.option("--dtype", "save_dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.pass_context
@handle_errors
def train(
    ctx: click.Context,
    pairs: tuple[str, ...],
    out: str,
    recipe: str | None,
    real_pairs: tuple[str, ...],
    device: str | None,
    embedder_name: str | None,
    cache: str | None,
    as_json: bool,
    **options: Any,
) -> None:
    """Train the projection W and save it to --out.

    With --real (real edit pairs) and --unlabelled (photos), the default recipe is `auto`: candidates
    (pca whitening; pair-whiten; PCA + anchored CosFace on real and, with PAIRS, proxy pairs) are scored by
    grouped cross-validation on the real pairs and the best is fitted on all of them, never one below the
    unsupervised PCA map. Without --real, `paper`: CosFace W on the PAIRS manifest (the reference recipe).
    """
    from ..assembly import build_encoder

    cfg = get_state(ctx).config(**{"embedder.name": embedder_name, "embedder.device": device, "cache.dir": cache})
    encoder = build_encoder(cfg.embedder)
    recipe = recipe or ("auto" if real_pairs else "paper")
    shared = {name: options.pop(name) for name in ("pool", "anchor", "seed", "cache_dir", "save_dtype")}
    real = {name: options.pop(name) for name in _REAL_ONLY}
    if recipe != "paper":
        _train_real(recipe, real_pairs, pairs, out, encoder=encoder, as_json=as_json, **shared, **real)
        return
    if len(pairs) != 1:
        raise ConfigError("the paper recipe trains on exactly one PAIRS manifest")
    _train_paper(pairs[0], out, encoder=encoder, cfg=cfg, as_json=as_json, **shared, **options)


#: ``train`` options only the real-pairs recipes read
_REAL_ONLY = ("unlabelled", "n_folds", "rank", "eps", "power", "shrink", "proxy_weight")


def _train_paper(
    pairs: str,
    out: str,
    *,
    encoder: Any,
    cfg: Config,
    pool: int | None,
    anchor: float,
    seed: int,
    cache_dir: str | None,
    save_dtype: str,
    val_pairs: str | None,
    val_fraction: float,
    distractors: tuple[str, ...],
    out_dim: int,
    epochs: int,
    ids_per_batch: int,
    k_members: int,
    steps_per_epoch: int | None,
    lr: float,
    init: str,
    init_rank: int,
    whiten_eps: float,
    no_augment: bool,
    patience: int,
    checkpoint_dir: str | None,
    resume: bool,
    as_json: bool,
) -> None:
    """The paper recipe: CosFace W on one PAIRS manifest."""
    from ..cache import latent_cache
    from ..media import iter_image_files
    from .train_config import TrainConfig
    from .trainer import train_projection

    tcfg = TrainConfig(
        out_dim=out_dim,
        pool=pool or 2,
        epochs=epochs,
        ids_per_batch=ids_per_batch,
        k=k_members,
        steps_per_epoch=steps_per_epoch,
        lr=lr,
        init=init,
        init_rank=init_rank,
        whiten_eps=whiten_eps,
        augment=not no_augment,
        anchor=anchor,
        val_fraction=val_fraction,
        patience=patience,
        seed=seed,
        device=cfg.embedder.device,
    )
    result = train_projection(
        pairs,
        out,
        encoder=encoder,
        config=tcfg,
        val_pairs_path=val_pairs,
        distractors=iter_image_files(list(distractors)) if distractors else (),
        cache_dir=cache_dir,
        latent_cache=latent_cache(encoder, cfg.cache.dir),
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        save_dtype=save_dtype,
        log=lambda s: click.echo(s, err=as_json),
    )
    _print_paper_result(result, as_json)


def _print_paper_result(result: Any, as_json: bool) -> None:
    """What ``train`` prints for the paper recipe: the saved W and its validation metrics."""
    summary: dict[str, Any] = {
        "out": str(result.path),
        "shape": list(result.projection.weight.shape),
        "pool": result.projection.pool,
        "best_epoch": result.best_epoch,
        "size_bytes": Path(result.path).stat().st_size,
        "validation": result.val_metrics,
    }
    if as_json:
        echo_json(summary)
        return
    click.echo(
        f"saved W {summary['shape'][0]}x{summary['shape'][1]} "
        f"(pool {summary['pool']}, best epoch {summary['best_epoch']}) "
        f"to {summary['out']} ({summary['size_bytes'] / 1e6:.1f} MB)"
    )
    for name, m in result.val_metrics.items():
        click.echo(f"  validation {name:12s} top1 {m['top1']:.3f}  mAP {m['mAP']:.3f}")


def _train_real(
    recipe: str,
    real_pairs: tuple[str, ...],
    proxies: tuple[str, ...],
    out: str,
    *,
    encoder: Any,
    unlabelled: tuple[str, ...],
    n_folds: int,
    pool: int | None,
    rank: int,
    eps: float,
    power: float,
    shrink: float,
    anchor: float,
    proxy_weight: float,
    seed: int,
    cache_dir: str | None,
    save_dtype: str,
    as_json: bool,
) -> None:
    from .real_pairs import Recipe, train_on_real_pairs

    if not real_pairs or not unlabelled:
        raise ConfigError(f"--recipe {recipe} needs --real MANIFEST (real edit pairs) and --unlabelled PHOTOS")
    candidates = None
    if recipe != "auto":
        candidates = [Recipe("pca", pool=pool or 1, rank=rank, eps=eps, power=power)]
        if recipe != "pca":
            candidates.append(
                Recipe(
                    recipe,
                    pool=pool or 1,
                    rank=rank,
                    eps=eps,
                    power=power,
                    shrink=shrink,
                    anchor=anchor or 1.0,
                    proxy_weight=proxy_weight,
                )
            )
    log = (lambda s: click.echo(s, err=True)) if as_json else click.echo
    result = train_on_real_pairs(
        real_pairs,
        unlabelled,
        out,
        encoder=encoder,
        candidates=candidates,
        proxy_manifests=proxies,
        n_folds=n_folds,
        seed=seed,
        cache_dir=cache_dir,
        save_dtype=save_dtype,
        log=log,
    )
    if as_json:
        echo_json(dict(result.report(), out=out))
        return
    chosen = next(r for r in result.results if r.name == result.recipe.name)
    mean, lo, hi = chosen.spread("mAP")
    click.echo(
        f"saved W {result.projection.in_dim}x{result.projection.out_dim} (pool {result.projection.pool}) to {out}: "
        f"{result.recipe.name}; cross-validated top1 {chosen.pooled['top1']:.3f} mAP {chosen.pooled['mAP']:.3f} "
        f"(fold mAP {lo:.2f}-{hi:.2f}; raw latent {result.raw.pooled['top1']:.3f} / {result.raw.pooled['mAP']:.3f})"
    )


@hookimpl
def id2_register_commands(cli: click.Group) -> None:
    cli.add_command(make_pairs)
    cli.add_command(train)
