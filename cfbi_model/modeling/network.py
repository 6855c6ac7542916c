"""CFBI+ (paper Fig. 5): DeepLabV3+ features, FPN embeddings, multi-scale foreground-background matching,
instance-level attention and the collaborative ensembler.

    model = CFBIPlus("resnet101")                      # the released network (state dict as the spec)
    cur = model.extract_features(images)               # FrameFeatures at 4x / 8x / 16x
    logits = model.segment(cur, refs, ref_labels, prev, prev_labels, num_labels)   # list of [L, h4, w4]

`forward` is the training forward: a clip batch's current frames from images (the trainer adds the loss).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig, get_config
from .attention import atrous_subsampled, attention_vectors
from .backbone import FeatureExtractor
from .ensembler import CollaborativeEnsembler
from .fpn import FPN
from .matching import ensembler_input, one_hot_labels, resize_labels

__all__ = ["CFBIPlus", "FrameFeatures"]


class FrameFeatures(NamedTuple):
    """Per-frame features: FPN embeddings [B, E, h_s, w_s] at 4x / 8x / 16x and backbone layer1 [B, C1, h, w]."""

    embeddings: tuple[Tensor, Tensor, Tensor]
    low_level: Tensor


class CFBIPlus(nn.Module):
    """The CFBI+ network. State-dict names and shapes of the "resnet101" configuration equal the released
    checkpoints' (`bg_bias`, `fg_bias`, `feature_extracter.*`, `fpn.*`, `dynamic_seghead.*`)."""

    def __init__(self, config: ModelConfig | str = "resnet101") -> None:
        super().__init__()
        if isinstance(config, str):
            config = get_config(config)
        self.config = config
        # Per-scale distance biases (index 0, 1, 2 = 4x, 8x, 16x); label 0 uses bg_bias, objects fg_bias.
        self.bg_bias = nn.Parameter(torch.zeros(3, 1, 1, 1))
        self.fg_bias = nn.Parameter(torch.zeros(3, 1, 1, 1))
        backbone = config.backbone
        self.feature_extracter = FeatureExtractor(backbone)
        self.fpn = FPN(
            backbone.decoder_dim, backbone.mid_level_dim, backbone.aspp_dim, config.embedding_dim, config.fpn_gn_groups
        )
        in_4x, in_8x, in_16x = config.ensembler_in_dims()
        self.dynamic_seghead = CollaborativeEnsembler(
            in_4x, in_8x, in_16x, config.attention_dim, backbone.low_level_dim, config.head
        )

    # ------------------------------------------------------------------ features
    def extract_features(self, images: Tensor) -> FrameFeatures:
        """images [B, 3, H, W] (BGR, ImageNet-normalised; H, W = 16k + 1 keeps the scales aligned)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
        deeplab = self.feature_extracter(images)
        embeddings = self.fpn(deeplab.decoder, deeplab.mid_level, deeplab.aspp)
        return FrameFeatures(embeddings, deeplab.low_level)

    @staticmethod
    def scale_labels(labels: Tensor, features: FrameFeatures) -> list[Tensor]:
        """Nearest-resize integer labels [..., H, W] (frame resolution) to the 4x / 8x / 16x grids."""
        return [resize_labels(labels, emb.shape[-2:]) for emb in features.embeddings]

    def matching_embeddings(self, features: FrameFeatures) -> list[Tensor]:
        """What a reference frame must keep: the full 4x embedding (the attention pools it) and the matching
        channels of the 8x and 16x ones."""
        e4, e8, e16 = features.embeddings
        dims = self.config.matching_dims
        return [e4, e8[:, : dims[1]], e16[:, : dims[2]]]

    # ------------------------------------------------------------------ head
    def segment(
        self,
        current: FrameFeatures,
        references: Sequence[Tensor],
        reference_labels: Sequence[Tensor],
        previous: Sequence[Tensor],
        previous_labels: Sequence[Tensor],
        num_labels: int | Sequence[int],
        *,
        global_atrous: int | None = None,
        min_matching_pixels: int = 0,
        atrous_attention: bool | None = None,
    ) -> list[Tensor]:
        """Logits at 4x for the current frame, one tensor [L_b, h, w] per sample.

        Args:
            current: the current frame's features (batch B).
            references: per scale, [B, T, C_s, h_s, w_s] reference embeddings (C_s = E at 4x, at least the
                matching channels at 8x / 16x; see `matching_embeddings`).
            reference_labels: per scale, [B, T, h_s, w_s] integer labels (values outside [0, L) are ignored).
            previous: per scale, [B, E, h_s, w_s] previous-frame embeddings.
            previous_labels: per scale, [B, h_s, w_s] integer previous-frame labels.
            num_labels: L (objects + 1) for every sample, or one per sample.
            global_atrous: atrous rate of the 4x global matching (default: the configuration's).
            min_matching_pixels: labels with at most this many pixels times atrous**2 in a reference frame keep
                all their pixels in the atrous global matching (the authors' DAVIS evaluation uses 100).
            atrous_attention: pool the 4x reference attention over the atrous-subsampled labels. None: the
                authors' behaviour when config.atrous_attention_quirk (in training mode, or when
                min_matching_pixels > 0), else off.
        """
        cfg = self.config
        batch = current.embeddings[0].shape[0]
        # A SymInt (a traced size, as cfbi_model.inference.export passes it) counts as an int.
        single = isinstance(num_labels, (int, torch.SymInt))
        labels_per_sample = [num_labels] * batch if single else list(num_labels)
        if len(labels_per_sample) != batch:
            raise ValueError(f"num_labels has {len(labels_per_sample)} entries for a batch of {batch}")
        if any(not isinstance(n, (int, torch.SymInt)) or n < 1 for n in labels_per_sample):
            raise ValueError(f"num_labels must be positive ints, got {num_labels}")
        for name, seq in (
            ("references", references),
            ("reference_labels", reference_labels),
            ("previous", previous),
            ("previous_labels", previous_labels),
        ):
            if len(seq) != 3:
                raise ValueError(f"{name} must hold one tensor per scale (4x, 8x, 16x), got {len(seq)}")
        if references[0].shape[2] != cfg.embedding_dim:
            raise ValueError(
                f"the 4x reference embeddings need all {cfg.embedding_dim} channels (attention), "
                f"got {references[0].shape[2]}"
            )
        for s in range(3):
            h, w = current.embeddings[s].shape[-2:]
            for name, tensor in (
                ("references", references[s]),
                ("reference_labels", reference_labels[s]),
                ("previous", previous[s]),
                ("previous_labels", previous_labels[s]),
            ):
                if tuple(tensor.shape[-2:]) != (h, w):
                    raise ValueError(
                        f"{name}[{s}] has spatial size {tuple(tensor.shape[-2:])}, the current "
                        f"frame's scale-{s} grid is {(h, w)}"
                    )
        atrous0 = cfg.global_atrous[0] if global_atrous is None else int(global_atrous)
        if atrous_attention is None:
            atrous_attention = cfg.atrous_attention_quirk and (self.training or min_matching_pixels > 0)

        outputs = []
        for n, count in enumerate(labels_per_sample):
            inputs = []
            for s in range(3):
                inputs.append(
                    ensembler_input(
                        current.embeddings[s][n],
                        references[s][n],
                        reference_labels[s][n],
                        previous[s][n],
                        previous_labels[s][n],
                        count,
                        self.fg_bias[s],
                        self.bg_bias[s],
                        matching_dim=cfg.matching_dims[s],
                        windows=cfg.local_window_order(s),
                        local_atrous=cfg.local_atrous[s],
                        global_atrous=atrous0 if s == 0 else cfg.global_atrous[s],
                        min_matching_pixels=min_matching_pixels,
                    )
                )
            ref_embeddings = references[0][n]
            ref_masks = one_hot_labels(reference_labels[0][n], count, ref_embeddings.dtype)
            if atrous_attention:
                ref_masks = atrous_subsampled(ref_masks, atrous0, min_matching_pixels)
            prev_masks = one_hot_labels(previous_labels[0][n], count, ref_embeddings.dtype)
            head = attention_vectors(ref_embeddings, ref_masks, previous[0][n], prev_masks, cfg.epsilon)
            outputs.append(self.dynamic_seghead(inputs, head, current.low_level[n : n + 1]))
        return outputs

    # ------------------------------------------------------------------ training entry point
    def forward(
        self,
        reference_images: Tensor,
        reference_labels: Tensor,
        previous_images: Tensor,
        previous_labels: Tensor,
        current_images: Tensor,
        num_labels: int | Sequence[int],
        *,
        current_labels: Tensor | None = None,
        output_size: Sequence[int] | None = None,
        min_matching_pixels: int = 0,
    ) -> list[Tensor] | list[list[Tensor]]:
        """The training forward: logits of a clip batch's current frames from images, with one backbone pass
        over all frames (the trainer's SequentialTrainer adds the loss; inference runs `extract_features` and
        `segment` frame by frame instead).

        Args:
            reference_images: [B, 3, H, W] or [B, T, 3, H, W]; reference_labels: [B, H, W] or [B, T, H, W].
            previous_images: [B, 3, H, W]; previous_labels: [B, H, W].
            current_images: [B, 3, H, W], one current frame, or [B, N, 3, H, W], a sequence: frame t + 1 is
                matched against frame t, whose labels are current_labels[:, t] when given (teacher forcing),
                else the model's own detached argmax prediction (sequential training).
            num_labels: L (objects + 1), for all samples or one per sample.
            current_labels: [B, N, H, W] ground truth of a sequence's current frames (see current_images).
            output_size: upsample the logits bilinearly (align_corners=True) to this size; default: 4x grid.
                The model's own predictions are the argmax of the returned logits.
            min_matching_pixels: see `segment`.

        Returns:
            one [L_b, h, w] logit tensor per sample; for a sequence, such a list per current frame.
        """
        single = current_images.dim() == 4
        if single:
            current_images = current_images.unsqueeze(1)
        if reference_images.dim() == 4:
            reference_images, reference_labels = reference_images.unsqueeze(1), reference_labels.unsqueeze(1)
        batch, frames = reference_images.shape[:2]
        num_current = current_images.shape[1]
        images = torch.cat([reference_images.flatten(0, 1), previous_images, current_images.flatten(0, 1)])
        features = self.extract_features(images)  # one backbone pass over all frames
        ref_end, prev_end = batch * frames, batch * frames + batch
        references = [e[:ref_end].reshape(batch, frames, *e.shape[1:]) for e in self.matching_embeddings(features)]
        ref_labels = self.scale_labels(reference_labels, features)
        previous = [e[ref_end:prev_end] for e in features.embeddings]
        prev_labels = self.scale_labels(previous_labels, features)
        labels_per_sample = [num_labels] * batch if isinstance(num_labels, int) else list(num_labels)
        sequence = []
        for t in range(num_current):
            # the current frames are batch-major (b, t) after the flatten
            index = torch.arange(batch, device=images.device) * num_current + t + prev_end
            current = FrameFeatures(tuple(e[index] for e in features.embeddings), features.low_level[index])
            logits = self.segment(
                current,
                references,
                ref_labels,
                previous,
                prev_labels,
                labels_per_sample,
                min_matching_pixels=min_matching_pixels,
            )
            if output_size is not None:
                size = (int(output_size[0]), int(output_size[1]))
                logits = [
                    F.interpolate(x.unsqueeze(0), size=size, mode="bilinear", align_corners=True)[0] for x in logits
                ]
            sequence.append(logits)
            if t + 1 < num_current:
                previous = [e[index] for e in features.embeddings]
                if current_labels is not None:
                    labels = current_labels[:, t]
                else:
                    labels = torch.stack([x.detach().argmax(0) for x in logits])
                prev_labels = self.scale_labels(labels, features)
        return sequence[0] if single else sequence
