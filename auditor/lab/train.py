"""Training the lab's tiny Stable Diffusion, and the lab's own quick extraction check.

VAE first (a few hundred steps on the dataset's images), then the latents' posterior (mean, std) and the frozen
text encoder's states are cached once, and the UNet is trained with the standard DDPM noise-prediction loss,
dropping ~10 % of captions to the empty prompt so classifier-free guidance works at sampling time. Everything
is seeded; the result is saved with ``save_pretrained`` as a standard StableDiffusionPipeline folder.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..utils import write_json
from .config import LabConfig

log = logging.getLogger(__name__)


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def to_training_array(img: Image.Image, res: int) -> np.ndarray:
    """SD-style preprocessing: shorter side resized to ``res`` (bicubic), centre crop; float32 HWC in [0, 1]."""
    img = img.convert("RGB")
    w, h = img.size
    s = res / min(w, h)
    nw, nh = max(res, round(w * s)), max(res, round(h * s))
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - res) // 2, (nh - res) // 2
    img = img.crop((left, top, left + res, top + res))
    return np.asarray(img, dtype=np.float32) / 255.0


def tiled_l2(a: np.ndarray, b: np.ndarray, tiles: int = 4) -> float:
    """Carlini et al. (2023)'s tiled L2: split both images (HWC, [0, 1], same size) into ``tiles`` x ``tiles``
    tiles, take the RMS difference of each tile, return the largest. A copy is < ~0.15 everywhere."""
    h, w = a.shape[:2]
    ys = np.linspace(0, h, tiles + 1).astype(int)
    xs = np.linspace(0, w, tiles + 1).astype(int)
    worst = 0.0
    for i in range(tiles):
        for j in range(tiles):
            d = a[ys[i]:ys[i + 1], xs[j]:xs[j + 1]] - b[ys[i]:ys[i + 1], xs[j]:xs[j + 1]]
            worst = max(worst, float(np.sqrt(np.mean(d * d))))
    return worst


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        p = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))  # cosine to 10 %
    return f


def train_pipeline(cfg: LabConfig, images: Sequence[np.ndarray], captions: Sequence[str], out_dir: str | Path,
                   tokenizer_dir: str | Path) -> dict:
    """Train VAE + UNet on (image, caption) pairs and save the pipeline into ``out_dir``. Returns stats."""
    import torch
    import torch.nn.functional as F

    from .model import make_pipeline, make_schedulers, make_text_encoder, make_unet, make_vae
    from .tokenizer import build_clip_tokenizer

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    stats: dict = {"device": device, "n_images": len(images), "torch_threads": torch.get_num_threads()}

    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous() * 2 - 1  # [N,3,H,W] in [-1,1]
    n = x.shape[0]
    tokenizer = build_clip_tokenizer(tokenizer_dir)
    text_encoder = make_text_encoder(cfg)
    vae = make_vae(cfg)
    unet = make_unet(cfg)
    ddpm, ddim = make_schedulers()
    stats["params"] = {"unet": sum(p.numel() for p in unet.parameters()),
                       "vae": sum(p.numel() for p in vae.parameters()),
                       "text_encoder": sum(p.numel() for p in text_encoder.parameters())}

    # --- VAE ----------------------------------------------------------------------------------------
    t0 = time.time()
    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(min(20, cfg.vae_steps), cfg.vae_steps))
    bar = tqdm(range(cfg.vae_steps), desc="lab: train VAE", disable=not cfg.progress)
    for _ in bar:
        idx = torch.randint(0, n, (min(cfg.vae_batch_size, n),), generator=gen)
        xb = x[idx].to(device)
        post = vae.encode(xb).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(device)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, xb) + 0.5 * F.l1_loss(rec, xb) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        means, stds, recs = [], [], []
        for i in range(0, n, 64):
            post = vae.encode(x[i:i + 64].to(device)).latent_dist
            means.append(post.mean.cpu())
            stds.append(post.std.cpu())
            recs.append(vae.decode(post.mean).sample.cpu())
        mean, std = torch.cat(means), torch.cat(stds)
        rec = ((torch.cat(recs).clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    scaling = float(1.0 / mean.flatten().std().clamp_min(1e-3))
    vae.register_to_config(scaling_factor=scaling)
    rec_l2 = [tiled_l2(rec[i], images[i]) for i in range(n)]
    stats["vae"] = {"seconds": round(time.time() - t0, 1), "steps": cfg.vae_steps, "scaling_factor": scaling,
                    "recon_tiled_l2_median": float(np.median(rec_l2)), "recon_tiled_l2_p95": float(np.quantile(rec_l2, 0.95))}
    log.info("VAE: %s", stats["vae"])

    # --- frozen text states ---------------------------------------------------------------------------
    text_encoder.to(device)
    uniq = sorted(set(captions) | {""})
    cap_index = {c: i for i, c in enumerate(uniq)}
    with torch.no_grad():
        states = []
        for i in range(0, len(uniq), 128):
            ids = tokenizer(uniq[i:i + 128], padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(device)
            states.append(text_encoder(ids)[0].cpu())
        states = torch.cat(states)
    cap_ids = torch.tensor([cap_index[c] for c in captions])
    empty_id = cap_index[""]

    # --- UNet -----------------------------------------------------------------------------------------
    t0 = time.time()
    unet.to(device).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps, cfg.train_steps))
    alphas = ddpm.alphas_cumprod
    losses = []
    bar = tqdm(range(cfg.train_steps), desc="lab: train UNet", disable=not cfg.progress)
    for step in bar:
        idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scaling
        c = cap_ids[idx].clone()
        c[torch.rand(len(idx), generator=gen) < cfg.caption_dropout] = empty_id
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, ddpm.config.num_train_timesteps, (len(idx),), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        pred = unet(zt.to(device), t.to(device), states[c].to(device)).sample
        loss = F.mse_loss(pred, noise.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
    unet.eval().requires_grad_(False)
    stats["unet"] = {"seconds": round(time.time() - t0, 1), "steps": cfg.train_steps, "batch_size": cfg.batch_size,
                     "final_loss": float(np.mean(losses[-100:])) if losses else None,
                     "epochs": round(cfg.train_steps * cfg.batch_size / max(1, n), 1)}
    log.info("UNet: %s", stats["unet"])

    pipe = make_pipeline(unet.cpu(), vae.cpu(), text_encoder.cpu(), tokenizer, ddim)
    pipe.save_pretrained(str(out_dir))
    write_json(Path(out_dir) / "lab_training.json", stats)
    return stats


def load_pipeline(model_dir: str | Path, device: str = "auto"):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(model_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(resolve_device(device))


def generate(pipe, prompts: Sequence[str], n: int, steps: int, guidance: float, seed: int,
             batch: int = 64) -> np.ndarray:
    """``n`` images per prompt, [len(prompts), n, H, W, 3] float in [0, 1]; seeded per prompt."""
    import torch

    out = []
    for pi, p in enumerate(prompts):
        imgs = []
        for k in range(0, n, batch):
            m = min(batch, n - k)
            g = torch.Generator().manual_seed(seed * 1_000_003 + pi * 1009 + k)
            latents = torch.randn((m, pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size), generator=g)
            r = pipe([p] * m, num_inference_steps=steps, guidance_scale=guidance, latents=latents.to(pipe.device),
                     output_type="np")
            imgs.append(r.images)
        out.append(np.concatenate(imgs))
    return np.stack(out)


def quick_eval(pipe, groups: list[dict], cfg: LabConfig, progress: Optional[bool] = None) -> dict:
    """The lab's own extraction check: for each group (``caption``, ``image`` [H,W,3] in [0,1], ``copy_count``),
    generate ``eval_generations`` images from the main caption and call the group extracted when any is within
    ``eval_threshold`` tiled L2 of the training image. Returns per-group rows and a table by copy count."""
    rows = []
    progress = cfg.progress if progress is None else progress
    for g in tqdm(groups, desc="lab: quick extraction eval", disable=not progress):
        gen = generate(pipe, [g["caption"]], cfg.eval_generations, cfg.eval_steps, cfg.eval_guidance, cfg.seed)[0]
        d = [tiled_l2(im, g["image"]) for im in gen]
        rows.append({"group": g["group"], "source": g["source"], "copy_count": g["copy_count"],
                     "min_tiled_l2": float(min(d)), "extracted": bool(min(d) < cfg.eval_threshold)})
    return {"groups": rows, "by_copy_count": by_copy_count(rows)}


def by_copy_count(rows: list[dict]) -> list[dict]:
    out = []
    for cc in sorted({r["copy_count"] for r in rows}, reverse=True):
        sel = [r for r in rows if r["copy_count"] == cc]
        out.append({"copy_count": cc, "groups": len(sel), "extracted": sum(r["extracted"] for r in sel),
                    "rate": sum(r["extracted"] for r in sel) / len(sel),
                    **({"template": sum(r["template"] for r in sel)} if any("template" in r for r in sel) else {}),
                    "median_min_tiled_l2": float(np.median([r["min_tiled_l2"] for r in sel]))})
    return out


def format_table(table: list[dict]) -> str:
    """Markdown table by copy count; a ``template`` column (partial copies, counted apart) when the rows have one."""
    tpl = any("template" in r for r in table)
    lines = ["| copies | groups | extracted | rate |" + (" template only |" if tpl else "") + " median min tiled L2 |",
             "|---:|---:|---:|---:|" + ("---:|" if tpl else "") + "---:|"]
    for r in table:
        lines.append(f"| {r['copy_count']} | {r['groups']} | {r['extracted']} | {r['rate']:.0%} | "
                     + (f"{r.get('template', 0)} | " if tpl else "") + f"{r['median_min_tiled_l2']:.3f} |")
    return "\n".join(lines)


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, default=str)
