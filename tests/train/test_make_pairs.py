"""Pair generators: the offline proxy (real TAEF2 regeneration) and real diffusers img2img on a tiny pipeline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from id2_plugin.pairs import load_pairs
from id2_plugin.train import _proxy_ops as ops
from id2_plugin.train.make_pairs import (
    LatentRegenerator,
    make_diffusion_pairs,
    make_proxy_pairs,
    read_prompts,
    sample_plan,
)

ALL_OPS = [*ops.CONTENT_OPS, *ops.STYLE_OPS, *ops.DEGRADE_OPS, "flip"]


@pytest.fixture(scope="module")
def regenerator(shared_dir: Path) -> LatentRegenerator:
    return LatentRegenerator(weights=shared_dir / "models" / "taef2", device="cpu")


@pytest.mark.parametrize("name", ALL_OPS)
def test_each_op_is_seeded_and_returns_an_rgb_image(name: str, photo_paths: list[Path]) -> None:
    img = np.asarray(Image.open(photo_paths[10]).convert("RGB"))
    donor_img = np.asarray(Image.open(photo_paths[20]).convert("RGB"))
    a = ops.apply_op(name, img, np.random.default_rng(5), lambda: donor_img)
    b = ops.apply_op(name, img, np.random.default_rng(5), lambda: donor_img)
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    assert np.array_equal(a, b)
    if a.shape == img.shape:
        assert not np.array_equal(a, img), f"{name} left the image unchanged"


def test_plans_are_seeded_and_mix_content_and_style() -> None:
    plans = [sample_plan((0, 123, k), latent_prob=0.5, latent_strength=(0.05, 0.4)) for k in range(200)]
    assert plans[7] == sample_plan((0, 123, 7), latent_prob=0.5, latent_strength=(0.05, 0.4))
    names = [n for p in plans for n in p.pixel_ops]
    assert set(names) >= (set(ops.CONTENT_OPS) - {"restage", "crop"}) | set(ops.STYLE_OPS)
    assert not {"restage", "crop"} & set(names)  # only scene_prob / crop_prob ask for them
    regen = [p.strength for p in plans if p.strength is not None]
    assert 60 < len(regen) < 140 and all(0.05 <= s <= 0.4 for s in regen)
    assert plans[0].describe().startswith("proxy:")


def test_scene_prob_restages_a_share_of_edits_and_leaves_the_others_alone() -> None:
    kw = dict(latent_prob=0.5, latent_strength=(0.05, 0.4))
    base = [sample_plan((0, 123, k), **kw) for k in range(200)]
    scene = [sample_plan((0, 123, k), scene_prob=0.5, **kw) for k in range(200)]
    restaged = [s.pixel_ops[:1] == ("restage",) for s in scene]
    assert 70 < sum(restaged) < 130
    for b, s, r in zip(base, scene, restaged):
        assert (s == b) != r  # untouched plans are exactly the plans made without scene_prob
        if r:  # re-staging replaces the other layout changes rather than stacking on them
            assert not {"zoomout", "background", "reframe"} & set(s.pixel_ops)
            assert (s.strength, s.degradations) == (b.strength, b.degradations)
    assert all(p.pixel_ops[0] == "restage" for p in (sample_plan((1, 5, k), scene_prob=1.0, **kw) for k in range(20)))
    crops = [sample_plan((1, 5, k), crop_prob=1.0, **kw) for k in range(20)]
    assert all(p.pixel_ops[0] == "crop" and "reframe" not in p.pixel_ops for p in crops)
    # scene edits take precedence: with both at 1 every edit is re-staged
    assert all(sample_plan((1, 5, k), scene_prob=1.0, crop_prob=1.0, **kw).pixel_ops[0] == "restage" for k in range(20))


def test_restage_shrinks_the_subject_into_the_donor_scene(photo_paths: list[Path]) -> None:
    img = np.asarray(Image.open(photo_paths[10]).convert("RGB"))
    scene = np.full((300, 200, 3), (20, 200, 40), np.uint8)
    out = ops.restage(img, np.random.default_rng(0), lambda: scene)
    assert out.shape == img.shape
    green = (np.abs(out.astype(int) - (20, 200, 40)).sum(axis=2) < 30).mean()
    assert 0.25 < green < 0.95  # the new scene fills much of the frame, the subject the rest


def test_proxy_pairs_are_deterministic_and_valid(
    photo_paths: list[Path], tmp_path: Path, regenerator: LatentRegenerator
) -> None:
    origins = photo_paths[:2]
    kw = dict(
        edits_per_origin=1, seed=3, donors=photo_paths[:30], latent_prob=1.0, progress=False, regenerator=regenerator
    )
    m1 = make_proxy_pairs(origins, tmp_path / "a", **kw)
    m2 = make_proxy_pairs(origins, tmp_path / "b", **kw)
    p1, p2 = load_pairs(m1), load_pairs(m2)
    assert len(p1) == 2 and [p.origin for p in p1] == [o.resolve() for o in origins]
    assert [(p.query.name, p.source, p.strength) for p in p1] == [(p.query.name, p.source, p.strength) for p in p2]
    for a, b in zip(p1, p2):
        assert a.query.read_bytes() == b.query.read_bytes()
        assert "latent" in (a.source or "") and a.model == "proxy:taef2" and 0.05 <= (a.strength or 0) <= 0.4
        edited = np.asarray(Image.open(a.query).convert("RGB"), np.float32)
        original = np.asarray(Image.open(a.origin).convert("RGB").resize(edited.shape[1::-1]), np.float32)
        assert np.abs(edited - original).mean() > 2.0  # an edit, not a copy
    # a different seed gives different edits
    m3 = make_proxy_pairs(origins, tmp_path / "c", **{**kw, "seed": 4})
    assert [p.query.read_bytes() for p in load_pairs(m3)] != [p.query.read_bytes() for p in p1]


def test_proxy_resumes_and_skips_unreadable_origins(
    photo_paths: list[Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "origins"
    src.mkdir()
    for p in photo_paths[:3]:
        shutil.copy(p, src / p.name)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out"
    manifest = make_proxy_pairs(src, out, edits_per_origin=2, latent_prob=0.0, progress=False)
    pairs = load_pairs(manifest)
    assert len(pairs) == 6 and all("broken" not in str(p.origin) for p in pairs)
    assert "skipped unreadable origin" in capfd.readouterr().err
    victim = pairs[3].query
    before = victim.read_bytes()
    victim.unlink()
    text = manifest.read_text()
    make_proxy_pairs(src, out, edits_per_origin=2, latent_prob=0.0, progress=False)
    assert victim.read_bytes() == before
    assert manifest.read_text() == text


def test_read_prompts(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("# comment\na cat\n\n  snowy day \n")
    assert read_prompts(f) == ["a cat", "snowy day"]


def _tiny_sd_img2img(folder: Path) -> Path:
    """A randomly initialised, test-sized Stable Diffusion img2img pipeline saved with save_pretrained."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=32,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=2,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-5,
            num_attention_heads=4,
            num_hidden_layers=2,
            pad_token_id=1,
            vocab_size=1000,
        )
    )
    # GPT-2 byte-to-unicode table: a byte-level BPE vocabulary without merges covers any text.
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    vocab: dict[str, int] = {"<|startoftext|>": 0, "!": 1, "<|endoftext|>": 2}
    for c in cs:
        for tok in (chr(c), chr(c) + "</w>"):
            vocab.setdefault(tok, len(vocab))
    (folder / "tok").mkdir(parents=True)
    (folder / "tok" / "vocab.json").write_text(json.dumps(vocab))
    (folder / "tok" / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(folder / "tok" / "vocab.json"), str(folder / "tok" / "merges.txt"), model_max_length=16
    )
    pipe = StableDiffusionImg2ImgPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder / "model")
    return folder / "model"


@pytest.mark.slow
def test_diffusion_pairs_with_a_tiny_img2img_pipeline(photo_paths: list[Path], tmp_path: Path) -> None:
    model = _tiny_sd_img2img(tmp_path)
    prompts = ["a cat", "a snowy day", "an oil painting"]
    kw = dict(
        model=str(model),
        prompts=prompts,
        edits_per_origin=2,
        num_inference_steps=2,
        size=64,
        device="cpu",
        progress=False,
    )
    manifest = make_diffusion_pairs(photo_paths[:2], tmp_path / "out", **kw)
    pairs = load_pairs(manifest)
    assert len(pairs) == 4
    for p in pairs:
        assert p.model == str(model) and p.prompt in prompts and p.strength == 0.9 and p.source == "diffusers-img2img"
        with Image.open(p.query) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
    assert pairs[0].prompt != pairs[1].prompt  # distinct prompts per origin
    raw = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert raw[0]["query"].startswith("edited/") and raw[0]["origin"].endswith(photo_paths[0].name)
    # seeded: a second run into another folder reproduces the images exactly
    again = load_pairs(make_diffusion_pairs(photo_paths[:2], tmp_path / "again", **kw))
    assert [p.query.read_bytes() for p in again] == [p.query.read_bytes() for p in pairs]
