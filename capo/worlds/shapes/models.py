"""Component builders for the shapes world's two base models.

Everything is built from a config and trained from scratch (no pretrained weights exist
for this world):

- a word-level tokenizer over the world's vocabulary (``build_tokenizer``),
- a tiny CLIP text encoder (``build_text_encoder``), trained jointly with the denoiser,
- a tiny ``AutoencoderKL``: 32x32x3 images <-> 8x8x4 latents (``build_vae``),
- the SDXL-like denoiser, a ``UNet2DConditionModel`` with SDXL's "text_time" added
  conditioning (pooled text embedding + constant size/crop ids) (``build_unet``),
- the SD3-like denoiser, an ``SD3Transformer2DModel`` (MM-DiT) whose pooled projection
  is the CLIP pooled output (``build_transformer``).

Each builder takes ``size``: ``"tiny"`` (unit tests: builds in well under a second) or
``"default"`` (the shipped world). The configs are module-level constants so that a run
manifest can record them and a reader can see them at a glance.
"""

from __future__ import annotations

from typing import Iterable

SIZES = ("tiny", "default")

# Special tokens; their ids are fixed (0..3) so the text encoder config can name them.
PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
MAX_LENGTH = 16  # tokens, including [BOS] and [EOS]; the longest world prompt is ~13 words

IMAGE_SIZE = 32
LATENT_CHANNELS = 4
LATENT_SIZE = 8  # VAE downsamples 4x (two downsampling stages)

# SDXL's added time ids (original size, crop top-left, target size); constant here.
SDXL_TIME_IDS = (IMAGE_SIZE, IMAGE_SIZE, 0, 0, IMAGE_SIZE, IMAGE_SIZE)

TEXT_ENCODER_CONFIGS = {
    "tiny": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 projection_dim=16),
    "default": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                    projection_dim=128),
}

VAE_CONFIGS = {
    "tiny": dict(block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=4),
    "default": dict(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16),
}

UNET_CONFIGS = {
    "tiny": dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, attention_head_dim=4,
                 transformer_layers_per_block=1, addition_time_embed_dim=2),
    "default": dict(block_out_channels=(64, 128), layers_per_block=1, norm_num_groups=32, attention_head_dim=32,
                    transformer_layers_per_block=1, addition_time_embed_dim=16),
}

TRANSFORMER_CONFIGS = {
    "tiny": dict(patch_size=1, num_layers=1, attention_head_dim=8, num_attention_heads=2),
    "default": dict(patch_size=1, num_layers=4, attention_head_dim=32, num_attention_heads=4),
}


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")


def build_tokenizer(vocab: Iterable[str], max_length: int = MAX_LENGTH):
    """Word-level ``PreTrainedTokenizerFast``: lower-cases, splits on whitespace and
    punctuation, wraps in [BOS] ... [EOS], pads/truncates to ``max_length``."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = sorted({w.lower() for w in vocab} - set(SPECIAL_TOKENS))
    table = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    table.update({w: i + len(SPECIAL_TOKENS) for i, w in enumerate(words)})
    tok = Tokenizer(WordLevel(vocab=table, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, BOS_ID), (EOS, EOS_ID)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
        model_max_length=max_length, padding_side="right", truncation_side="right")


def build_text_encoder(size: str = "default", vocab_size: int = 64):
    """Tiny ``CLIPTextModel`` (causal transformer; pooled output = final state at [EOS])."""
    from transformers import CLIPTextConfig, CLIPTextModel

    _check_size(size)
    cfg = CLIPTextConfig(vocab_size=vocab_size, max_position_embeddings=MAX_LENGTH,
                         pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
                         hidden_act="gelu", **TEXT_ENCODER_CONFIGS[size])
    return CLIPTextModel(cfg)


def text_dims(size: str) -> tuple[int, int]:
    """(hidden size, pooled size) of the text encoder of this size."""
    c = TEXT_ENCODER_CONFIGS[size]
    return c["hidden_size"], c["hidden_size"]


def build_vae(size: str = "default"):
    """``AutoencoderKL`` 32x32x3 <-> 8x8x4. ``scaling_factor`` starts at 1.0;
    ``pretrain.train_vae`` measures the latent std and sets it to 1/std."""
    from diffusers import AutoencoderKL

    _check_size(size)
    c = VAE_CONFIGS[size]
    n = len(c["block_out_channels"])
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, sample_size=IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        scaling_factor=1.0, **c)


def build_unet(size: str = "default", text_size: str | None = None):
    """SDXL-like ``UNet2DConditionModel`` on 8x8x4 latents: cross-attention to the CLIP
    hidden states, plus SDXL's "text_time" added embedding (pooled text + size ids)."""
    from diffusers import UNet2DConditionModel

    _check_size(size)
    hidden, pooled = text_dims(text_size or size)
    c = dict(UNET_CONFIGS[size])
    n = len(c["block_out_channels"])
    head_dim = c.pop("attention_head_dim")
    t_dim = c.pop("addition_time_embed_dim")
    heads = tuple(max(1, ch // head_dim) for ch in c["block_out_channels"])
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=hidden, attention_head_dim=heads,
        addition_embed_type="text_time", addition_time_embed_dim=t_dim,
        projection_class_embeddings_input_dim=pooled + len(SDXL_TIME_IDS) * t_dim,
        **c)


def build_transformer(size: str = "default", text_size: str | None = None):
    """SD3-like ``SD3Transformer2DModel`` on 8x8x4 latents; joint attention over image
    patches and CLIP hidden states, pooled projection = CLIP pooled output."""
    from diffusers import SD3Transformer2DModel

    _check_size(size)
    hidden, pooled = text_dims(text_size or size)
    c = TRANSFORMER_CONFIGS[size]
    inner = c["num_attention_heads"] * c["attention_head_dim"]
    return SD3Transformer2DModel(
        sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        joint_attention_dim=hidden, caption_projection_dim=inner, pooled_projection_dim=pooled,
        pos_embed_max_size=LATENT_SIZE // c["patch_size"], **c)


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())
