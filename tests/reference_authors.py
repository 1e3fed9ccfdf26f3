"""An independent re-implementation of the DenseCLIP authors' segmentation forward pass (test oracle).

Written for the parity tests of `denseclip.load_checkpoint` on the authors' released mmcv checkpoints
(raoyongming/DenseCLIP, segmentation/denseclip/*.py on mmseg 0.x). It follows *their* conventions, not
ours, so that the two code paths are genuinely independent:

- sequence-first (L, N, D) tensors in the transformers (nn.MultiheadAttention, batch_first=False);
- the ResNet attention pool through `F.multi_head_attention_forward` with separate q/k/v weights and a
  head count fixed at 32 (their AttentionPool2d is always built with 32 heads);
- the ViT forward of their CLIPVisionTransformer (class token gets class_embedding twice);
- the context decoder's einsum attention;
- mmseg's FPN (nearest top-down) and FPNHead (ConvModule + mmseg-style Upsample, bilinear sum);
- module/parameter names of their state dict: backbone, text_encoder, context_decoder, contexts, gamma,
  neck.lateral_convs.N.conv, neck.fpn_convs.N.conv, decode_head.scale_heads.N.M.conv/.bn,
  decode_head.conv_seg, identity_head.conv_seg (unused).

Nothing here imports `denseclip`. Only eval-mode inference is reproduced (no dropout / drop-path).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------
# tokenizer: [SOT] name [EOT] 0 ... (length `length`), CLIP's BPE
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _bpe():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def tokenize_names(names, length: int = 5) -> torch.Tensor:
    bpe = _bpe()
    rows = []
    for name in names:
        ids = [bpe.sot_token_id] + bpe.encode(name) + [bpe.eot_token_id]
        assert len(ids) <= length, f"{name!r} is longer than {length} tokens"
        rows.append(ids + [0] * (length - len(ids)))
    return torch.tensor(rows, dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# CLIP ResNet with the dense attention pool (their CLIPResNetWithAttention) / without (CLIPResNet)
# ---------------------------------------------------------------------------------------------


class AABottleneck(nn.Module):
    """CLIP's anti-aliased bottleneck: the stride is an AvgPool after conv2 (and before the 1x1 shortcut)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride > 1 or cin != cout:
            self.downsample = nn.Sequential(OrderedDict(
                [("-1", nn.AvgPool2d(stride)), ("0", nn.Conv2d(cin, cout, 1, bias=False)),
                 ("1", nn.BatchNorm2d(cout))]))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(self.avgpool(y)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(y + shortcut)


class DenseAttentionPool(nn.Module):
    """Attention pool over [mean; every position]; every token is a query -> (global, dense map)."""

    def __init__(self, grid: int, channels: int, heads: int, out_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, channels) / channels ** 0.5)
        self.k_proj = nn.Linear(channels, channels)
        self.q_proj = nn.Linear(channels, channels)
        self.v_proj = nn.Linear(channels, channels)
        self.c_proj = nn.Linear(channels, out_dim)
        self.heads = heads
        self.grid = grid
        self.channels = channels

    def forward(self, feat):
        b, c, h, w = feat.shape
        seq = feat.flatten(2).permute(2, 0, 1)  # (HW, B, C)
        seq = torch.cat([seq.mean(0, keepdim=True), seq], 0)  # (HW + 1, B, C)
        pe = self.positional_embedding
        grid_pe = pe[1:].reshape(1, self.grid, self.grid, c).permute(0, 3, 1, 2)
        grid_pe = F.interpolate(grid_pe, size=(h, w), mode="bilinear", align_corners=False)
        grid_pe = grid_pe.reshape(c, h * w).permute(1, 0)
        seq = seq + torch.cat([pe[:1], grid_pe], 0)[:, None, :]
        out, _ = F.multi_head_attention_forward(
            query=seq, key=seq, value=seq, embed_dim_to_check=c, num_heads=self.heads,
            in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=self.c_proj.weight, out_proj_bias=self.c_proj.bias, training=False,
            need_weights=False, use_separate_proj_weight=True,
            q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight)
        out = out.permute(1, 2, 0)  # (B, D, HW + 1)
        return out[:, :, 0], out[:, :, 1:].reshape(b, -1, h, w)


class AuthorsCLIPResNet(nn.Module):
    """(C2, C3, C4, C5[, [global, dense]]) as their CLIPResNetWithAttention (attention=False: CLIPResNet)."""

    def __init__(self, layers, width: int = 64, output_dim: int = 1024, input_resolution: int = 512,
                 attention: bool = True, pool_heads: int = 32):
        super().__init__()
        half = width // 2
        self.conv1 = nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        cin = width
        for i, n in enumerate(layers):
            planes = width * 2 ** i
            blocks = [AABottleneck(cin, planes, 1 if i == 0 else 2)]
            cin = planes * 4
            blocks += [AABottleneck(cin, planes) for _ in range(1, n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.attention = attention
        if attention:  # their code: AttentionPool2d(input_resolution // 32, width * 32, 32, output_dim)
            self.attnpool = DenseAttentionPool(input_resolution // 32, width * 32, pool_heads, output_dim)

    def forward(self, x):
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = F.relu(bn(conv(x)))
        x = self.avgpool(x)
        outs = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            outs.append(x)
        if self.attention:
            outs.append(list(self.attnpool(x)))
        return tuple(outs)


# ---------------------------------------------------------------------------------------------
# CLIP transformer blocks (sequence-first), ViT with multi-scale necks, text encoder with contexts
# ---------------------------------------------------------------------------------------------


class FP32LayerNorm(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResBlock(nn.Module):
    def __init__(self, width: int, heads: int, attn_mask: torch.Tensor | None = None):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)  # sequence-first
        self.ln_1 = FP32LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            [("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()),
             ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = FP32LayerNorm(width)
        self.attn_mask = attn_mask  # plain attribute: not in the state dict, as theirs

    def forward(self, x):  # (L, N, D)
        y = self.ln_1(x)
        mask = None if self.attn_mask is None else self.attn_mask.to(x.dtype)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, attn_mask: torch.Tensor | None = None):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResBlock(width, heads, attn_mask) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class AuthorsCLIPViT(nn.Module):
    """Their CLIPVisionTransformer: 4 neck outputs (strides 4, 8, 16, 32) [+ [global, dense]]."""

    def __init__(self, input_resolution: int = 640, patch_size: int = 16, width: int = 768, layers: int = 12,
                 heads: int = 12, output_dim: int = 512, out_indices=(3, 5, 7, 11),
                 get_embeddings: bool = True):
        super().__init__()
        assert patch_size == 16, "the reference implements the patch-16 necks only"
        s = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(s * torch.randn(width))
        self.spatial_size = input_resolution // patch_size
        self.positional_embedding = nn.Parameter(s * torch.randn(self.spatial_size ** 2 + 1, width))
        self.ln_pre = FP32LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.out_indices = list(out_indices)
        self.get_embeddings = get_embeddings
        if get_embeddings:
            self.ln_post = FP32LayerNorm(width)
            self.proj = nn.Parameter(s * torch.randn(width, output_dim))
        self.fpn1 = nn.Sequential(nn.GroupNorm(1, width), nn.ConvTranspose2d(width, width, 2, stride=2),
                                  nn.BatchNorm2d(width), nn.GELU(),
                                  nn.ConvTranspose2d(width, width, 2, stride=2))
        self.fpn2 = nn.Sequential(nn.GroupNorm(1, width), nn.ConvTranspose2d(width, width, 2, stride=2))
        self.fpn3 = nn.GroupNorm(1, width)
        self.fpn4 = nn.Sequential(nn.GroupNorm(1, width), nn.MaxPool2d(2, stride=2))

    def forward(self, img):
        x = self.conv1(img)
        b, c, h, w = x.shape
        x = x.reshape(b, c, h * w).permute(0, 2, 1)
        cls_tok = self.class_embedding + torch.zeros(b, 1, c, dtype=x.dtype)
        x = torch.cat([cls_tok, x], dim=1)
        pe = self.positional_embedding
        cls_pe = pe[0] + self.class_embedding  # their forward: class_embedding enters a second time here
        g = self.spatial_size
        grid_pe = F.interpolate(pe[1:].reshape(1, g, g, c).permute(0, 3, 1, 2), size=(h, w), mode="bilinear",
                                align_corners=False)
        grid_pe = grid_pe.reshape(1, c, h * w).permute(0, 2, 1)
        x = x + torch.cat([cls_pe.reshape(1, 1, c), grid_pe], dim=1)
        x = self.ln_pre(x).permute(1, 0, 2)  # (L, B, C)
        maps = []
        for i, blk in enumerate(self.transformer.resblocks):
            x = blk(x)
            if i in self.out_indices:
                maps.append(x[1:].permute(1, 2, 0).reshape(b, c, h, w).contiguous())
        outs = [neck(m) for neck, m in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), maps)]
        if self.get_embeddings:
            x = self.ln_post(x.permute(1, 0, 2)) @ self.proj
            outs.append([x[:, 0], x[:, 1:].reshape(b, h, w, -1).permute(0, 3, 1, 2)])
        return tuple(outs)


class AuthorsTextContextEncoder(nn.Module):
    """Their CLIPTextContextEncoder: [SOT] ctx_1..ctx_M [class tokens] through CLIP's text transformer."""

    def __init__(self, context_length: int = 13, vocab_size: int = 49408, width: int = 512, heads: int = 8,
                 layers: int = 12, embed_dim: int = 1024):
        super().__init__()
        causal = torch.full((context_length, context_length), float("-inf")).triu(1)
        self.context_length = context_length
        self.embed_dim = embed_dim
        self.transformer = Transformer(width, layers, heads, attn_mask=causal)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        self.ln_final = FP32LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, embed_dim) * width ** -0.5)

    def forward(self, text, context):  # text (K, N1) ids, context (B, N2, C)
        emb = self.token_embedding(text)
        k, n1, c = emb.shape
        b, n2, _ = context.shape
        eos = (text.argmax(-1) + n2).reshape(1, k).expand(b, k).reshape(-1)
        emb = emb.reshape(1, k, n1, c).expand(b, k, n1, c)
        ctx = context.reshape(b, 1, n2, c).expand(b, k, n2, c)
        x = torch.cat([emb[:, :, :1], ctx, emb[:, :, 1:]], dim=2).reshape(b * k, n1 + n2, c)
        x = x + self.positional_embedding
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0]), eos] @ self.text_projection
        return x.reshape(b, k, self.embed_dim)


# ---------------------------------------------------------------------------------------------
# context decoder (vision-to-language)
# ---------------------------------------------------------------------------------------------


class EinsumAttention(nn.Module):
    def __init__(self, dim: int, heads: int, proj_drop: float = 0.0):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, q, k, v):
        b, n, c = q.shape
        m = k.shape[1]
        hd = c // self.heads
        q = self.q_proj(q).reshape(b, n, self.heads, hd)
        k = self.k_proj(k).reshape(b, m, self.heads, hd)
        v = self.v_proj(v).reshape(b, m, self.heads, hd)
        attn = (torch.einsum("bnkc,bmkc->bknm", q, k) * self.scale).softmax(dim=-1)
        out = torch.einsum("bknm,bmkc->bnkc", attn, v).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


class DecoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float = 0.1):
        super().__init__()
        self.self_attn = EinsumAttention(d, heads, dropout)
        self.cross_attn = EinsumAttention(d, heads, dropout)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * d, d))

    def forward(self, x, mem):
        y = self.norm1(x)
        x = x + self.self_attn(y, y, y)
        x = x + self.cross_attn(self.norm2(x), mem, mem)
        return x + self.dropout(self.mlp(self.norm3(x)))


class AuthorsContextDecoder(nn.Module):
    def __init__(self, transformer_width: int = 256, transformer_heads: int = 4, transformer_layers: int = 3,
                 visual_dim: int = 1024, dropout: float = 0.1):
        super().__init__()
        w = transformer_width
        self.memory_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, w), nn.LayerNorm(w))
        self.text_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, w))
        self.decoder = nn.ModuleList([DecoderLayer(w, transformer_heads, dropout)
                                      for _ in range(transformer_layers)])
        self.out_proj = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, visual_dim))

    def forward(self, text, visual):
        mem = self.memory_proj(visual)
        x = self.text_proj(text)
        for layer in self.decoder:
            x = layer(x, mem)
        return self.out_proj(x)


# ---------------------------------------------------------------------------------------------
# mmseg FPN neck and FPNHead
# ---------------------------------------------------------------------------------------------


class ConvModule(nn.Module):
    """mmcv ConvModule: conv [+ bn] [+ relu]; attribute names `conv`, `bn`."""

    def __init__(self, cin: int, cout: int, kernel: int, with_bn: bool = False, with_act: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=(kernel - 1) // 2, bias=not with_bn)
        if with_bn:
            self.bn = nn.BatchNorm2d(cout)
        self.with_bn = with_bn
        self.with_act = with_act

    def forward(self, x):
        x = self.conv(x)
        if self.with_bn:
            x = self.bn(x)
        return F.relu(x) if self.with_act else x


class MMSegFPN(nn.Module):
    def __init__(self, in_channels, out_channels: int = 256):
        super().__init__()
        self.lateral_convs = nn.ModuleList([ConvModule(c, out_channels, 1) for c in in_channels])
        self.fpn_convs = nn.ModuleList([ConvModule(out_channels, out_channels, 3) for _ in in_channels])

    def forward(self, inputs):
        lat = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
        return tuple(self.fpn_convs[i](lat[i]) for i in range(len(lat)))


class MMSegUpsample(nn.Module):
    """mmseg.ops.Upsample with scale_factor: the target size is computed as int(t * factor)."""

    def __init__(self, scale_factor: int = 2):
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x):
        size = [int(t * self.scale_factor) for t in x.shape[-2:]]
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class MMSegFPNHead(nn.Module):
    def __init__(self, in_channels, channels: int, num_classes: int, feature_strides=(4, 8, 16, 32)):
        super().__init__()
        self.feature_strides = list(feature_strides)
        self.scale_heads = nn.ModuleList()
        for i, stride in enumerate(self.feature_strides):
            n = max(1, int(math.log2(stride) - math.log2(self.feature_strides[0])))
            mods = []
            for k in range(n):
                cin = in_channels[i] if k == 0 else channels
                mods.append(ConvModule(cin, channels, 3, with_bn=True, with_act=True))
                if stride != self.feature_strides[0]:
                    mods.append(MMSegUpsample(2))
            self.scale_heads.append(nn.Sequential(*mods))
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, inputs):
        out = self.scale_heads[0](inputs[0])
        for i in range(1, len(self.feature_strides)):
            up = self.scale_heads[i](inputs[i])
            out = out + F.interpolate(up, size=out.shape[2:], mode="bilinear", align_corners=False)
        return self.conv_seg(out)  # Dropout2d is the identity in eval


class IdentityHeadStub(nn.Module):
    """mmseg's IdentityHead as it appears in the released state dicts: an unused 1x1 classifier."""

    def __init__(self):
        super().__init__()
        self.conv_seg = nn.Conv2d(1, 1, 1)


# ---------------------------------------------------------------------------------------------
# the segmentors
# ---------------------------------------------------------------------------------------------


class AuthorsDenseCLIP(nn.Module):
    """Their DenseCLIP segmentor (eval forward). With text_encoder=None: mmseg's EncoderDecoder baseline.

    forward(img) -> decode-head logits at stride 4; encode_decode(img) -> resized to the image size.
    """

    def __init__(self, backbone: nn.Module, class_names, neck_in_channels, neck_channels: int,
                 head_channels: int, text_encoder: nn.Module | None = None,
                 context_decoder: nn.Module | None = None, num_contexts: int = 8, token_width: int = 512,
                 text_dim: int = 1024, score_concat_index: int = 3, class_token_length: int = 5):
        super().__init__()
        self.backbone = backbone
        self.with_text = text_encoder is not None
        if self.with_text:
            self.text_encoder = text_encoder
            self.context_decoder = context_decoder
            self.score_concat_index = score_concat_index
            self.texts = tokenize_names(class_names, class_token_length)  # plain attribute: not saved
            self.contexts = nn.Parameter(torch.randn(1, num_contexts, token_width))
            self.gamma = nn.Parameter(torch.ones(text_dim) * 1e-4)
        self.neck = MMSegFPN(neck_in_channels, neck_channels)
        self.decode_head = MMSegFPNHead([neck_channels] * 4, head_channels, len(class_names))
        if self.with_text:
            self.identity_head = IdentityHeadStub()

    def after_extract_feat(self, x):
        feats = list(x[:4])
        global_feat, dense = x[4]
        b, c, h, w = dense.shape
        visual_context = torch.cat([global_feat.reshape(b, c, 1), dense.reshape(b, c, h * w)], dim=2)
        visual_context = visual_context.permute(0, 2, 1)
        text = self.text_encoder(self.texts, self.contexts).expand(b, -1, -1)
        text = text + self.gamma * self.context_decoder(text, visual_context)
        score_map = torch.einsum("bchw,bkc->bkhw", F.normalize(dense, dim=1, p=2),
                                 F.normalize(text, dim=2, p=2))
        i = self.score_concat_index
        feats[i] = torch.cat([feats[i], score_map], dim=1)
        return text, feats, score_map

    def forward_with_score_map(self, img):
        """(decode-head logits at stride 4, score map or None)."""
        x = self.backbone(img)
        if self.with_text:
            _, feats, score_map = self.after_extract_feat(x)
        else:
            feats, score_map = list(x[:4]), None
        return self.decode_head(list(self.neck(feats))), score_map

    def forward(self, img):
        return self.forward_with_score_map(img)[0]

    @staticmethod
    def resize_to(logits, img):
        """mmseg's `resize(out, size=img.shape[2:], mode='bilinear', align_corners=False)`."""
        return F.interpolate(logits, size=img.shape[2:], mode="bilinear", align_corners=False)

    def encode_decode(self, img):
        return self.resize_to(self.forward(img), img)


def authors_resnet_denseclip(class_names, layers=(1, 2, 1, 1), width: int = 64, embed_dim: int = 64,
                             input_resolution: int = 128, text_width: int = 64, text_heads: int = 1,
                             text_layers: int = 2, num_contexts: int = 8, class_token_length: int = 5,
                             decoder_width: int = 64, decoder_heads: int = 1, decoder_layers: int = 3,
                             neck_channels: int = 32, head_channels: int = 16, with_text: bool = True,
                             attention: bool = True) -> AuthorsDenseCLIP:
    """A (small) denseclip_fpn_res*.py model; with_text=False: the fpn_clipres*.py baseline."""
    backbone = AuthorsCLIPResNet(list(layers), width, embed_dim, input_resolution,
                                 attention=attention or with_text)
    stages = [width * 4 * 2 ** i for i in range(4)]
    if not with_text:
        return AuthorsDenseCLIP(backbone, class_names, stages, neck_channels, head_channels)
    stages[3] += len(class_names)
    text = AuthorsTextContextEncoder(num_contexts + class_token_length, 49408, text_width, text_heads,
                                     text_layers, embed_dim)
    dec = AuthorsContextDecoder(decoder_width, decoder_heads, decoder_layers, embed_dim)
    return AuthorsDenseCLIP(backbone, class_names, stages, neck_channels, head_channels, text, dec,
                            num_contexts, text_width, embed_dim, 3, class_token_length)


def authors_vit_denseclip(class_names, width: int = 64, layers: int = 4, heads: int = 1, embed_dim: int = 64,
                          input_resolution: int = 128, out_indices=(0, 1, 2, 3), text_width: int = 64,
                          text_heads: int = 1, text_layers: int = 2, num_contexts: int = 8,
                          class_token_length: int = 5, decoder_width: int = 64, decoder_heads: int = 1,
                          decoder_layers: int = 3, neck_channels: int = 32, head_channels: int = 16,
                          with_text: bool = True) -> AuthorsDenseCLIP:
    """A (small) denseclip_fpn_vit-b_640x640_80k.py model; with_text=False: fpn_clipvit-b (no embeddings)."""
    backbone = AuthorsCLIPViT(input_resolution, 16, width, layers, heads, embed_dim, out_indices,
                              get_embeddings=with_text)
    stages = [width] * 4
    if not with_text:
        return AuthorsDenseCLIP(backbone, class_names, stages, neck_channels, head_channels)
    stages[2] += len(class_names)
    text = AuthorsTextContextEncoder(num_contexts + class_token_length, 49408, text_width, text_heads,
                                     text_layers, embed_dim)
    dec = AuthorsContextDecoder(decoder_width, decoder_heads, decoder_layers, embed_dim)
    return AuthorsDenseCLIP(backbone, class_names, stages, neck_channels, head_channels, text, dec,
                            num_contexts, text_width, embed_dim, 2, class_token_length)


def authors_slide_inference(model: AuthorsDenseCLIP, img: torch.Tensor, crop: int,
                            stride: int) -> torch.Tensor:
    """mmseg 0.x / their slide_inference (square crop and stride): summed crop logits / overlap count."""
    b, _, h_img, w_img = img.shape
    h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
    w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
    preds = None
    count = img.new_zeros((b, 1, h_img, w_img))
    for hi in range(h_grids):
        for wi in range(w_grids):
            y2, x2 = min(hi * stride + crop, h_img), min(wi * stride + crop, w_img)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            logit = model.encode_decode(img[:, :, y1:y2, x1:x2])
            if preds is None:
                preds = img.new_zeros((b, logit.shape[1], h_img, w_img))
            preds += F.pad(logit, (x1, w_img - x2, y1, h_img - y2))
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count
