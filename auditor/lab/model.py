"""The lab's tiny Stable Diffusion: the same components and pipeline class as SD 1.x, sized for a CPU.

* text encoder: a :class:`transformers.CLIPTextModel` (CLIP's architecture, CLIP's real 49408-token vocabulary
  via :mod:`auditor.lab.tokenizer`), small and randomly initialised from the seed, then frozen. A frozen random
  transformer still maps different captions to different, stable hidden states -- all the UNet's cross-attention
  needs to tie a caption to an image, which is what memorisation is.
* VAE: an :class:`diffusers.AutoencoderKL` with two downsamplings and 16 latent channels (32 px -> 8x8x16
  latents, 3x compression, like SD3's 16-channel VAE; SD 1.x's 4-channel /8 VAE is 48x, far too lossy at
  32 px to reproduce a training image within Carlini's tiled-L2 threshold). The UNet's cost is set by the 8x8
  latent grid, so the extra channels are nearly free, and a VAE this mild reconstructs well after a few
  hundred steps,
  trained briefly on the dataset itself (reconstruction + a tiny KL term), its ``scaling_factor`` set to
  1/std of the latents, as SD's was.
* UNet: a small :class:`diffusers.UNet2DConditionModel` with cross-attention to the text states.
* schedulers: DDPM for training (SD's scaled-linear betas, 1000 steps), DDIM for sampling (saved in the
  pipeline), so ``DiffusionPipeline.from_pretrained(dir)`` gives a standard ``StableDiffusionPipeline``.
"""

from __future__ import annotations

from .config import LabConfig


def make_text_encoder(cfg: LabConfig):
    from transformers import CLIPTextConfig, CLIPTextModel

    tc = CLIPTextConfig(
        vocab_size=49408, hidden_size=cfg.text_width, intermediate_size=cfg.text_width * 4,
        num_hidden_layers=cfg.text_layers, num_attention_heads=max(1, cfg.text_width // 32),
        max_position_embeddings=77, projection_dim=cfg.text_width,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    model = CLIPTextModel(tc)
    model.requires_grad_(False)
    return model.eval()


def make_vae(cfg: LabConfig):
    from diffusers import AutoencoderKL

    ch = tuple(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * len(ch), up_block_types=("UpDecoderBlock2D",) * len(ch),
        block_out_channels=ch, layers_per_block=1, norm_num_groups=min(32, ch[0]), sample_size=cfg.resolution,
    )


def make_unet(cfg: LabConfig):
    from diffusers import UNet2DConditionModel

    ch = tuple(cfg.unet_channels)
    n = len(ch)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1)
    up = ("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",)
    return UNet2DConditionModel(
        sample_size=cfg.resolution // cfg.vae_factor, in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        block_out_channels=ch, down_block_types=down, up_block_types=up, layers_per_block=cfg.unet_layers_per_block,
        cross_attention_dim=cfg.text_width, attention_head_dim=cfg.unet_head_dim, norm_num_groups=min(32, ch[0]),
    )


def make_schedulers():
    from diffusers import DDIMScheduler, DDPMScheduler

    kw = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
              clip_sample=False, prediction_type="epsilon")
    return DDPMScheduler(**kw), DDIMScheduler(**kw, set_alpha_to_one=False, steps_offset=1)


def make_pipeline(unet, vae, text_encoder, tokenizer, scheduler):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
