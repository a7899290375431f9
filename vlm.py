"""The wiring of Figure 2: frozen vision encoder -> adapter -> LM decoder.

The paper's adapters:
- `PerceiverAdapter`: the baseline, an N-layer perceiver resampler and a linear map to the LM width.
- `VAdapter` (PaLM2-VAdapter): a fresh 1-layer perceiver resampler, a linear map (FC) to the tiny
  LM's width, a tiny PaLM decoder that was progressively aligned (stage 1: trained as the decoder of
  a small VLM), then a linear map to the large LM width. The tiny LM reads only the resampler
  latents; its hidden states are the visual tokens.
- `MLPAdapter` (Table 13, LLaVA-1.5 style): two linear layers with a GELU on every patch feature.

`VisionLanguageModel` puts the visual tokens inside the text, where the prompt says (the paper's
"Describe the following: <visual tokens> :"), and trains with next-token loss on the text the
loss mask selects. The vision encoder is always frozen; the LM is frozen in stage 2
(the large LM) and trained in stage 1 (the tiny LM learning to read visual features).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from palm_decoder import PaLMDecoder
from resampler import PerceiverResampler
from vit import num_parameters


class PerceiverAdapter(nn.Module):
    """Baseline adapter: resampler latents (B, num_latents, dim) -> linear -> (B, num_latents,
    lm_dim)."""

    def __init__(self, resampler: PerceiverResampler, lm_dim: int):
        super().__init__()
        self.resampler = resampler
        self.projection = nn.Linear(resampler.config.dim, lm_dim, bias=False)

    # (B, N, Dv) or (B, T, N, Dv); num_frames (B,) or None
    def forward(self, features, num_frames=None):
        return self.projection(self.resampler(features, num_frames))  # (B, num_latents, lm_dim)


class VAdapter(nn.Module):
    """PaLM2-VAdapter: resampler -> FC -> tiny LM (hidden states) -> FC to the large LM width. The
    two FC layers match widths, so the resampler may be as wide as the ViT and the tiny LM
    narrower."""

    def __init__(self, resampler: PerceiverResampler, tiny_lm: PaLMDecoder, lm_dim: int):
        super().__init__()
        self.resampler = resampler
        self.input_projection = nn.Linear(resampler.config.dim, tiny_lm.config.dim, bias=False)
        self.tiny_lm = tiny_lm
        self.projection = nn.Linear(tiny_lm.config.dim, lm_dim, bias=False)
        # The tiny LM reads embeddings, never token ids, and its LM head is dropped: its token
        # embedding and output head (one tensor when tied) take no part, so they are frozen and not
        # counted as trained (DDP would also reject trainable parameters that get no gradient).
        self.tiny_lm.token_embedding.requires_grad_(False)
        if self.tiny_lm.output_head is not None:
            self.tiny_lm.output_head.requires_grad_(False)

    # (B, N, Dv) or (B, T, N, Dv); num_frames (B,) or None
    def forward(self, features, num_frames=None):
        # (B, num_latents, tiny_dim)
        latents = self.input_projection(self.resampler(features, num_frames))
        hidden = self.tiny_lm(prefix=latents, return_hidden=True)  # (B, num_latents, tiny_dim)
        return self.projection(hidden)  # (B, num_latents, lm_dim)


class MLPAdapter(nn.Module):
    """The paper's Table 13 baseline, LLaVA-1.5's projector: Linear -> GELU -> Linear on every patch
    feature, one visual token per patch. A video's frames are averaged first: 8 frames of 64 patches
    would be 512 tokens, beyond the toy LM's max_seq_len, and LLaVA-1.5 reads images only."""

    def __init__(self, vision_dim: int, lm_dim: int):
        super().__init__()
        self.vision_dim = vision_dim
        self.hidden = nn.Linear(vision_dim, lm_dim)
        self.out = nn.Linear(lm_dim, lm_dim)

    def forward(self, features, num_frames=None):  # (B, N, Dv) or (B, T, N, Dv) -> (B, N, lm_dim)
        if features.dim() not in (3, 4) or features.shape[-1] != self.vision_dim:
            raise ValueError(
                f"the MLP adapter expects features (B, N, {self.vision_dim}) or (B, T, N, "
                f"{self.vision_dim}); "
                f"got shape {tuple(features.shape)}"
            )
        if features.dim() == 4 and num_frames is None:
            features = features.mean(dim=1)  # (B, N, Dv): the frame mean
        # the mean over each video's real frames (collate pads to the longest)
        elif features.dim() == 4:
            # (B, T)
            real = (
                torch.arange(features.shape[1], device=features.device)
                < num_frames.to(features.device)[:, None]
            )
            features = (features * real[..., None, None]).sum(dim=1) / num_frames.to(
                features.device
            )[:, None, None]
        return self.out(F.gelu(self.hidden(features)))


class VisionLanguageModel(nn.Module):
    """vision (frozen) -> adapter (trained) -> lm (frozen unless train_lm, as in stage 1).

    train_vision is for stage 0 only: pretraining the ViT by captioning, CoCa's captioning loss."""

    def __init__(
        self,
        vision: nn.Module,
        adapter: nn.Module,
        lm: PaLMDecoder,
        train_lm: bool = False,
        train_vision: bool = False,
    ):
        super().__init__()
        self.vision, self.adapter, self.lm = vision, adapter, lm
        self.train_lm, self.train_vision = train_lm, train_vision
        # Freeze everything, then unfreeze by name: the stage boundary is one visible place.
        frozen_in_adapter = {name for name, p in adapter.named_parameters() if not p.requires_grad}
        self.requires_grad_(False)
        for name, p in self.adapter.named_parameters():
            p.requires_grad_(name not in frozen_in_adapter)
        if train_lm:
            self.lm.requires_grad_(True)
        if train_vision:
            self.vision.requires_grad_(True)
        self.train(False)

    def train(self, mode: bool = True):
        """Frozen modules stay in eval mode whatever the trainer asks."""
        super().train(mode)
        self.vision.train(mode and self.train_vision)
        self.lm.train(mode and self.train_lm)
        return self

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(name, p) for name, p in self.named_parameters() if p.requires_grad]

    def num_trainable_parameters(self) -> int:
        return num_parameters(self, trainable_only=True)

    def encode_images(self, pixels):
        """(B, 3, H, W) or (B, T, 3, H, W) -> patch features. A frozen encoder is upstream of
        everything trained, so it needs no autograd graph at all."""
        with torch.set_grad_enabled(self.train_vision and torch.is_grad_enabled()):
            return self.vision(pixels)

    def visual_tokens(self, pixels=None, features=None, num_frames=None):
        """Visual tokens (B, num_latents, lm_dim) from pixels or from cached patch features;
        num_frames (B,): the real frames of each video of a batch padded to its longest
        (collate)."""
        if features is None:
            if pixels is None:
                raise ValueError("visual_tokens needs pixels or precomputed features")
            features = self.encode_images(pixels)
        return self.adapter(features) if num_frames is None else self.adapter(features, num_frames)

    def forward(
        self,
        input_ids,
        loss_mask=None,
        pixels=None,
        features=None,
        reduction="mean",
        visual_start=None,
        num_frames=None,
        return_logits=True,
        num_targets=None,
    ):
        """input_ids (B, L), loss_mask (B, L) -> (logits (B, L, V), loss on the selected tokens).
        The visual tokens go before text position visual_start[b] ((B,) or int; None: before the
        text). return_logits=False: logits is None, the LM's output layer runs at the targets
        only (PaLMDecoder.forward)."""
        prefix = self.visual_tokens(pixels, features, num_frames)
        return self.lm(
            input_ids,
            prefix=prefix,
            loss_mask=loss_mask,
            visual_start=visual_start,
            reduction=reduction,
            return_logits=return_logits,
            num_targets=num_targets,
        )


def caption_loss(model, batch: dict, feature_cache=None):
    """The trainer's loss for every stage with images: (sum of token losses, number of target
    tokens); trainer.forward_backward explains how the sums are normalised.

    With a feature cache (support/feature_cache.py) the frozen encoder runs once per image over
    the run, and a batch whose features were all cached when it was fetched comes without pixels
    (data.VisionTextDataset.__getitems__). `model` may be wrapped (DDP, torch.compile): the
    forward goes through the wrapper."""
    features = None
    if feature_cache is not None and "cached_features" in batch:
        features = feature_cache.fetched(
            batch["image_ids"],
            batch["cached_features"],
            batch.get("num_frames"),
            batch["input_ids"].device,
        )
    elif feature_cache is not None:
        encoder = getattr(model, "module", model).encode_images  # DDP keeps the model in .module
        features = feature_cache.get_or_compute(
            batch["image_ids"], batch["pixels"], encoder, batch.get("num_frames")
        )
    _, loss_sum = model(
        batch["input_ids"],
        batch["loss_mask"],
        pixels=None if features is not None else batch["pixels"],
        features=features,
        reduction="sum",
        visual_start=batch.get("visual_start"),
        num_frames=batch.get("num_frames"),
        return_logits=False,
        num_targets=batch.get("num_targets"),  # counted on the host by data.collate
    )
    return loss_sum, batch["loss_mask"].sum()
