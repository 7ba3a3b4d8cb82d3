"""White-box first-step screen (Wen et al., ICLR 2024, "Detecting, Explaining, and Mitigating Memorization in
Diffusion Models").

For a prompt ``c`` the score is the magnitude of the text-conditional noise prediction,

    d(c) = mean over seeds and over the first ``whitebox_steps`` sampling steps of
           || eps(x_t, e_c) - eps(x_t, e_empty) ||_2          (L2 norm over the whole latent)

where ``x_T`` is the pipeline's own initial latent for that seed (``randn * init_noise_sigma`` from a CPU
``torch.Generator``) and later ``x_t`` follow the classifier-free-guided trajectory. Memorized prompts give
unusually large magnitudes already at the first step; Wen et al. report strong detection with 1-4 seeds and
Jeon et al. (2025) re-measured AUC 0.976 with one seed at step 1 on SD 1.4. The flag threshold is calibrated at
a target false-positive rate on non-risky captions of the same dataset (or set explicitly).

Cost: 2 UNet evaluations per seed per step (conditional + unconditional), counted exactly.

Supported: pipelines with ``unet``, ``tokenizer``, ``text_encoder`` and ``scheduler`` and a plain text
conditioning (Stable Diffusion 1.x/2.x style). Pipelines with a second text encoder or extra conditioning
(SDXL, ...) are not scored here (:meth:`WhiteBox.unsupported` names why); with ``probe.screen=auto`` the runner
falls back to the generation-based screen, logs the reason and records it in ``provenance.json``
(``screen_note``); ``probe.screen=whitebox`` refuses such a model with that reason.
"""

from __future__ import annotations

import copy
import logging
from typing import Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)


def select_whitebox(generator, screen: str) -> tuple[Optional["WhiteBox"], str]:
    """(the generator's white-box scorer or None, a note saying why none) for ``probe.screen``; ``whitebox``
    with an unsupported model raises ``ValueError`` naming the reason."""
    if screen not in ("auto", "whitebox"):
        return None, ""
    wb = generator.whitebox()
    if wb is not None:
        return wb, ""
    pipe = getattr(generator, "pipe", None)
    why = WhiteBox.unsupported(pipe) if pipe is not None else f"the {generator.name} generator has no UNet"
    if screen == "whitebox":
        raise ValueError(f"screen=whitebox cannot score this model: {why}")
    note = f"white-box screen not available ({why}): generation screen used"
    (log.warning if pipe is not None else log.info)("probe: %s", note)
    return None, note


class WhiteBox:
    def __init__(self, unet, tokenizer, text_encoder, scheduler, height: int, width: int, device: str,
                 dtype, guidance_scale: float, steps: int, counter=None, vae_scale_factor: int = 8):
        self.unet, self.tokenizer, self.text_encoder = unet, tokenizer, text_encoder
        self.scheduler = scheduler
        self.height, self.width = height, width
        self.device, self.dtype = device, dtype
        self.guidance_scale = float(guidance_scale)
        self.steps = int(steps)
        self.vae_scale_factor = int(vae_scale_factor)
        self.counter = counter  # an object whose ``unet_evals`` a UNet hook increments (the generator)
        self._empty = None

    @staticmethod
    def unsupported(pipe) -> Optional[str]:
        """Why the white-box screen cannot score ``pipe`` (None when it can: SD 1.x / 2.x style pipelines).

        SDXL (a second text encoder and the UNet's added ``text_time`` conditioning), unCLIP / image-variation
        (class embeddings), Kandinsky, DeepFloyd IF and pipelines without a UNet are not scored: the probe falls
        back to the generation screen (``probe.screen=auto``) and says so in ``provenance.json``."""
        comps = getattr(pipe, "components", {}) or {}
        missing = [k for k in ("unet", "tokenizer", "text_encoder", "scheduler") if comps.get(k) is None]
        if missing:
            return f"{type(pipe).__name__} has no {', '.join(missing)}"
        if comps.get("text_encoder_2") is not None:
            return f"{type(pipe).__name__} has a second text encoder (SDXL-style conditioning)"
        cfg = pipe.unet.config
        extra = getattr(cfg, "addition_embed_type", None) or getattr(cfg, "class_embed_type", None)
        if extra:
            return f"{type(pipe).__name__}'s UNet takes added conditioning ({extra})"
        return None

    @classmethod
    def from_pipeline(cls, pipe, cfg, device: str, counter=None) -> Optional["WhiteBox"]:
        if cls.unsupported(pipe) is not None:
            return None
        unet = pipe.unet
        vsf = getattr(pipe, "vae_scale_factor", 8)
        default = int(unet.config.sample_size) * int(vsf)
        return cls(unet, pipe.tokenizer, pipe.text_encoder, pipe.scheduler,
                   int(cfg.height or default), int(cfg.width or default), device, unet.dtype,
                   cfg.guidance_scale, cfg.steps, counter, int(vsf))

    # --- pieces (public so tests can check them against a direct computation) ---------------------------
    def encode(self, prompts: Sequence[str]):
        import torch

        tok = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        ids = tok.input_ids.to(self.device)
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tok.attention_mask.to(self.device)
        with torch.inference_mode():
            emb = self.text_encoder(ids, attention_mask=mask)[0]
        return emb.to(self.dtype)

    def initial_latents(self, seed: int, scheduler):
        from diffusers.utils.torch_utils import randn_tensor
        import torch

        shape = (1, int(self.unet.config.in_channels), self.height // self._vsf(), self.width // self._vsf())
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        lat = randn_tensor(shape, generator=g, device=torch.device(self.device), dtype=self.dtype)
        return lat * scheduler.init_noise_sigma

    def _vsf(self) -> int:
        return self.vae_scale_factor

    def new_scheduler(self):
        sched = copy.deepcopy(self.scheduler)
        sched.set_timesteps(self.steps, device=self.device)
        return sched

    # --- score ------------------------------------------------------------------------------------------
    def scores(self, prompts: Sequence[str], seeds: Sequence[int], n_steps: int = 1,
               batch_size: int = 8, progress=None) -> tuple[np.ndarray, int]:
        """[len(prompts)] scores (mean over seeds and the first ``n_steps`` steps) and the UNet evaluations
        spent. Latents for (prompt, seed) depend only on the seed, so every prompt sees the same noise.

        ``progress``: a tqdm bar counting prompts; after every batch it is advanced by the prompts whose seeds
        are all scored, and its postfix shows the UNet evaluations spent (a calibration on CPU scores hundreds of
        (prompt, seed) pairs: minutes).

        Example:
            ```python
            from tqdm.auto import tqdm
            with tqdm(total=len(captions), desc="probe: calibrate", unit="caption") as bar:
                scores, evals = wb.scores(captions, seeds=[0, 1, 2, 3], progress=bar)
            ```
        """
        import torch

        pairs = [(i, s) for i in range(len(prompts)) for s in seeds]
        total = np.zeros(len(prompts), dtype=np.float64)
        evals = 0
        if self._empty is None:
            self._empty = self.encode([""])
        cond_all = self.encode(list(prompts)) if prompts else None
        per_chunk = max(1, batch_size)
        reported = 0
        for start in range(0, len(pairs), per_chunk):
            chunk = pairs[start:start + per_chunk]
            sched = self.new_scheduler()
            x = torch.cat([self.initial_latents(s, sched) for _, s in chunk])
            cond = cond_all[[i for i, _ in chunk]]
            uncond = self._empty.expand(len(chunk), -1, -1)
            emb = torch.cat([uncond, cond])
            acc = torch.zeros(len(chunk), dtype=torch.float64)
            with torch.inference_mode():
                for k in range(min(n_steps, len(sched.timesteps))):
                    t = sched.timesteps[k]
                    inp = sched.scale_model_input(torch.cat([x, x]), t)
                    eps = self.unet(inp, t, encoder_hidden_states=emb).sample
                    evals += int(inp.shape[0])
                    eps_u, eps_c = eps.chunk(2)
                    diff = (eps_c.float() - eps_u.float()).flatten(1).norm(dim=1)
                    acc += diff.double().cpu()
                    if k + 1 < n_steps:
                        guided = eps_u + self.guidance_scale * (eps_c - eps_u)
                        x = sched.step(guided, t, x).prev_sample
            steps_done = min(n_steps, len(sched.timesteps))
            for (i, _), v in zip(chunk, (acc / max(1, steps_done)).tolist()):
                total[i] += v
            if progress is not None:
                done = (start + len(chunk)) // max(1, len(seeds))  # prompts with every seed scored
                progress.set_postfix(unet_evals=evals, refresh=False)
                progress.update(done - reported)
                reported = done
        return total / max(1, len(seeds)), evals
