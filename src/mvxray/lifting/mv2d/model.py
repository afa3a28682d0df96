"""The MV2D network: encoder → RoIAlign → dynamic queries → selected-RoI decoder → 3D head.

The decoder is a stack of ``torch.nn.TransformerDecoderLayer`` (self-attention among the
queries of a case, cross-attention to the RoI tokens each query selected); the shared 3D head
(:class:`mvxray.heads.Box3DHead`) predicts after every layer for deep supervision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import roi_align

from mvxray.heads import Box3DHead, Box3DHeadConfig, Box3DPrediction
from mvxray.lifting.mv2d.encoder import build_encoder, standardize
from mvxray.lifting.mv2d.inputs import MV2DInputs
from mvxray.lifting.mv2d.query import FrustumMemory, QueryGenerator
from mvxray.lifting.mv2d.select import select_rois


@dataclass(frozen=True)
class MV2DNetConfig:
    """Architecture of :class:`MV2DNet`.

    Attributes:
        encoder: ``"small"``, ``"resnet18"`` or ``"detector"`` (a 2D detector's backbone, given
            to :class:`MV2DNet` as ``encoder``; see :class:`~mvxray.lifting.mv2d.encoder.DetectorEncoder`).
        in_channels: image channels.
        channels: feature channels F.
        embed_dim: query / token width D.
        num_heads: attention heads.
        ff_dim: feed-forward width of the decoder layers.
        num_layers: decoder layers (6 in MV2D).
        dropout: decoder dropout.
        roi_size: RoIAlign output side (7 in MV2D).
        memory_tokens: tokens per RoI side in the memory (RoI features average-pooled).
        depth_bins: depths per token ray in the frustum encoding.
        pe_feats: sin/cos channels per coordinate of the query encoding.
        selection: relevant-feature selection, ``"all"`` or ``"top"``.
        num_classes: foreground classes.
        offset_scale_mm: centre-offset unit of the head, mm.
    """

    encoder: str = "small"
    in_channels: int = 1
    channels: int = 64
    embed_dim: int = 128
    num_heads: int = 4
    ff_dim: int = 256
    num_layers: int = 6
    dropout: float = 0.0
    roi_size: int = 7
    memory_tokens: int = 3
    depth_bins: int = 8
    pe_feats: int = 32
    selection: str = "all"
    num_classes: int = 1
    offset_scale_mm: float = 20.0


class MV2DNet(nn.Module):
    """MV2D for X-ray views.

    Example:
        >>> from mvxray.geometry import Rig
        >>> from mvxray.lifting.mv2d.inputs import MV2DInputs, rig_roi
        >>> rig = Rig.circular(2, 300.0, 600.0, 32, 32, 4.0, arc_deg=180.0)
        >>> roi, near, far = rig_roi(rig)
        >>> inp = MV2DInputs(torch.rand(1, 2, 1, 32, 32), rig.K[None].float(),
        ...     rig.T_cam_from_ct[None].float(), torch.tensor([[[10.0, 10, 14, 14], [12, 9, 16, 13]]]),
        ...     torch.tensor([[0, 1]]), torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool),
        ...     roi[None].float(), near[None].float(), far[None].float())
        >>> net = MV2DNet(MV2DNetConfig(channels=16, embed_dim=32, num_layers=2))
        >>> preds, aux = net(inp)
        >>> len(preds), tuple(preds[-1].boxes3d.shape), tuple(aux["allowed"].shape)
        (2, (1, 2, 6), (1, 2, 2))
    """

    def __init__(
        self, config: MV2DNetConfig | None = None, encoder: nn.Module | None = None
    ) -> None:
        super().__init__()
        c = self.config = config or MV2DNetConfig()
        if (c.encoder == "detector") != (encoder is not None):
            raise ValueError(
                f"MV2DNet: encoder {c.encoder!r} "
                + ("needs the detector's encoder (DetectorEncoder)" if encoder is None else "")
                + ("is built from its name; do not pass an encoder" if encoder is not None else "")
            )
        self.encoder = (
            encoder if encoder is not None else build_encoder(c.encoder, c.in_channels, c.channels)
        )
        self.queries = QueryGenerator(c.channels, c.roi_size, c.embed_dim, c.pe_feats)
        self.memory = FrustumMemory(c.channels, c.embed_dim, c.memory_tokens, c.depth_bins)
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(
                c.embed_dim, c.num_heads, c.ff_dim, c.dropout, batch_first=True
            )
            for _ in range(c.num_layers)
        )
        self.head = Box3DHead(Box3DHeadConfig(c.embed_dim, c.num_classes, 2, c.offset_scale_mm))

    def roi_features(self, inp: MV2DInputs) -> torch.Tensor:
        """Encode all views and RoIAlign every detection: ``(B, Q, F, r, r)``."""
        B, V = inp.images.shape[:2]
        feats = self.encoder(standardize(inp.images.flatten(0, 1)))
        Q = inp.rois.shape[1]
        batch_idx = (torch.arange(B, device=feats.device)[:, None] * V + inp.roi_view).reshape(-1)
        boxes = torch.cat([batch_idx[:, None].to(inp.rois), inp.rois.reshape(-1, 4)], 1)
        r = self.config.roi_size
        pooled = roi_align(
            feats, boxes, r, spatial_scale=1.0 / self.encoder.stride, sampling_ratio=2, aligned=True
        )
        return pooled.unflatten(0, (B, Q))

    def forward(self, inp: MV2DInputs) -> tuple[list[Box3DPrediction], dict[str, torch.Tensor]]:
        """Predictions after every decoder layer and auxiliary tensors.

        Returns:
            preds: ``num_layers`` :class:`Box3DPrediction` of ``(B, Q, ...)`` tensors.
            aux: ``ref_ct`` ``(B, Q, 3)``, ``allowed`` ``(B, Q, Q)`` selected RoIs,
                ``size_prior`` ``(B, Q, 3)``.
        """
        c = self.config
        roi_feats = self.roi_features(inp)
        q = self.queries(roi_feats, inp)
        memory = self.memory(roi_feats, inp)  # (B, Q·m², D)
        allowed = select_rois(inp, c.selection)
        tokens = c.memory_tokens**2
        blocked = ~allowed.repeat_interleave(tokens, dim=-1)  # (B, Q, Q·m²)
        mem_mask = blocked.repeat_interleave(c.num_heads, dim=0)
        pad = ~inp.valid
        pad[:, 0] = False  # a case without detections must not mask every key
        x = q["content"] + q["pos"]
        preds = []
        for layer in self.layers:
            x = layer(x, memory, memory_mask=mem_mask, tgt_key_padding_mask=pad)
            preds.append(self.head(x, q["ref_ct"], q["size_prior"]))
        return preds, {"ref_ct": q["ref_ct"], "allowed": allowed, "size_prior": q["size_prior"]}
