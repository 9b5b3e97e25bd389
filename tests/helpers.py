"""Shared test helpers: tiny models of the real classes built from config (diffusers SDXL / SD3
pipelines, CLIP, BLIP, CLIP-FlanT5), Pick-a-Pic shards, test images, and the reference
re-derivations of upstream preprocessing (transformers 4.x processors, OpenAI CLIP, HPSv2)
that the reward tests compare against. Test files import from here, never from each other."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import torch
from PIL import Image

from capo.rewards import vqascore as V
from conftest import byte_chars

REWARD_PROMPTS = ["a red cube", "two blue spheres on the grass", "a cat", "a red cube"]  # a repeat on purpose

# ----------------------------------------------------------------------------- from test_diffusers_backends.py
def tiny_clip_tokenizer(max_length: int = 32):
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in byte_chars():
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz"] + [("▁" + c, -3.5) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def clip_text_config(tok, hidden: int = 16, projection: int = 8):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=tok.model_max_length, projection_dim=projection,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def tiny_vae(**kw):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
                         layers_per_block=1, norm_num_groups=4, sample_size=16, **kw)


def build_sdxl(out):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    tok = tiny_clip_tokenizer()
    te = CLIPTextModel(clip_text_config(tok))
    te2 = CLIPTextModelWithProjection(clip_text_config(tok, projection=8))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), cross_attention_dim=32, norm_num_groups=4, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=4, projection_class_embeddings_input_dim=6 * 4 + 8)
    # SDXL base ships an Euler scheduler config; the wrapper builds DDPM / DDIM from it.
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   timestep_spacing="leading", steps_offset=1, prediction_type="epsilon")
    pipe = StableDiffusionXLPipeline(vae=tiny_vae(scaling_factor=0.13025, force_upcast=True), text_encoder=te,
                                     text_encoder_2=te2, tokenizer=tok, tokenizer_2=tiny_clip_tokenizer(), unet=unet,
                                     scheduler=sched, force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(out)
    return out


def build_sd3(out):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(0)
    tok = tiny_clip_tokenizer()
    t5tok = tiny_t5_tokenizer()
    te = CLIPTextModelWithProjection(clip_text_config(tok, projection=8))
    te2 = CLIPTextModelWithProjection(clip_text_config(tok, projection=8))
    te3 = T5EncoderModel(T5Config(vocab_size=len(t5tok), d_model=32, d_ff=37, d_kv=8, num_layers=1, num_heads=4,
                                  relative_attention_num_buckets=8, decoder_start_token_id=0))
    tr = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=1,
                               attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                               caption_projection_dim=16, pooled_projection_dim=16, pos_embed_max_size=16)
    pipe = StableDiffusion3Pipeline(
        transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=te, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tiny_clip_tokenizer(),
        text_encoder_3=te3, tokenizer_3=t5tok)
    pipe.save_pretrained(out)
    return out

# ----------------------------------------------------------------------------- from test_reward_parity.py


MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _int_size(cfg):
    """4.x ``get_size_dict``: an int ``size`` is the shortest edge for CLIP
    (``default_to_square=False``), a square for BLIP; an int ``crop_size`` a square."""
    blip = cfg.get("image_processor_type", "").startswith("Blip")
    s = cfg["size"]
    if isinstance(s, int):
        s = {"height": s, "width": s} if blip else {"shortest_edge": s}
    c = cfg.get("crop_size") if cfg.get("do_center_crop", not blip) else None
    if isinstance(c, int):
        c = {"height": c, "width": c}
    return s, c


def hf4_pixels(image: np.ndarray, cfg: dict) -> np.ndarray:
    """transformers 4.x ``preprocess`` of one uint8 image -> float32 (3, h, w)."""
    from PIL import Image

    arr = np.array(Image.fromarray(image).convert("RGB"))  # convert_to_rgb, to_numpy_array (channels last)
    size, crop = _int_size(cfg)
    height, width = arr.shape[:2]
    if "shortest_edge" in size:  # get_resize_output_image_size(default_to_square=False)
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
        out = (new_long, new_short) if width <= height else (new_short, new_long)
    else:
        out = (size["height"], size["width"])
    # resize: to_pil_image (uint8: no rescale), PIL resize to (width, height), back to numpy
    arr = np.array(Image.fromarray(arr).resize((out[1], out[0]), resample=cfg.get("resample", 3)))
    if crop is not None:  # center_crop: top = (orig_height - crop_height) // 2
        top, left = (arr.shape[0] - crop["height"]) // 2, (arr.shape[1] - crop["width"]) // 2
        arr = arr[top:top + crop["height"], left:left + crop["width"]]
    x = (arr.astype(np.float64) * (1 / 255)).astype(np.float32)  # rescale
    mean, std = np.array(cfg["image_mean"], dtype=x.dtype), np.array(cfg["image_std"], dtype=x.dtype)
    x = (x - mean) / std  # normalize, channels last
    return x.transpose(2, 0, 1)


def hf4_batch(images, cfg) -> torch.Tensor:
    return torch.from_numpy(np.stack([hf4_pixels(np.asarray(im), cfg) for im in images]))


def clip_cfg(n_px: int) -> dict:
    """The 4.x config a tiny test CLIP's processor is saved with (shortest edge and crop n_px)."""
    return {"size": {"shortest_edge": n_px}, "crop_size": {"height": n_px, "width": n_px}, "do_center_crop": True,
            "resample": 3, "image_mean": list(MEAN), "image_std": list(STD)}


def openai_pixels(image: np.ndarray, n_px: int) -> torch.Tensor:
    """OpenAI CLIP's ``_transform(n_px)`` as upstream runs it (torchvision on a PIL image)."""
    from PIL import Image
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    t = Compose([Resize(n_px, interpolation=InterpolationMode.BICUBIC), CenterCrop(n_px),
                 lambda im: im.convert("RGB"), ToTensor(), Normalize(MEAN, STD)])
    return t(Image.fromarray(image))


def openai_batch(images, n_px) -> torch.Tensor:
    return torch.stack([openai_pixels(np.asarray(im), n_px) for im in images])


def hpsv2_pixels(image: np.ndarray, size: int = 224, antialias: bool = True) -> torch.Tensor:
    """HPSv2's validation transform: ToTensor -> ResizeMaxSize(size, BICUBIC, fill=0) on the float
    tensor -> Normalize (``ResizeMaxSize.forward`` spelled out with torchvision's functionals)."""
    import torchvision.transforms.functional as F
    from PIL import Image
    from torchvision.transforms import InterpolationMode

    img = F.to_tensor(Image.fromarray(image).convert("RGB"))
    height, width = img.shape[1:]
    scale = size / float(max(height, width))
    if scale != 1.0:
        new_size = tuple(round(dim * scale) for dim in (height, width))
        img = F.resize(img, list(new_size), InterpolationMode.BICUBIC, antialias=antialias)
        pad_h, pad_w = size - new_size[0], size - new_size[1]
        img = F.pad(img, padding=[pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return F.normalize(img, MEAN, STD)


def hpsv2_batch(images, size=224, antialias=True) -> torch.Tensor:
    return torch.stack([hpsv2_pixels(np.asarray(im), size, antialias) for im in images])

# ----------------------------------------------------------------------------- from test_real_rewards.py
def make_images(n=4, size=40, seed=0, width=None):
    rng = np.random.default_rng(seed)
    im = rng.integers(0, 256, size=(n, size, width or size, 3), dtype=np.uint8)
    im[3] = im[0]  # item 3 repeats item 0 (same image, same prompt)
    return im


def tiny_clip_dir(path, projection_dim=8, seed=0):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in byte_chars():
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=projection_dim)
    CLIPModel(cfg).save_pretrained(path)
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                            crop_size={"height": 32, "width": 32}), tokenizer=tok)
    proc.save_pretrained(path)
    return path


def tiny_blip_dir(path, seed=0):
    from transformers import BertTokenizer, BlipConfig, BlipForQuestionAnswering, BlipImageProcessor, BlipProcessor

    words = ("does this figure show please answer yes or no a red cube two blue spheres on the grass cat "
             '" ? .').split()
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + words)}
    tok = BertTokenizer(vocab=vocab)
    torch.manual_seed(seed)
    cfg = BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=64, encoder_hidden_size=32,
                         bos_token_id=vocab["[DEC]"], sep_token_id=vocab["[SEP]"], pad_token_id=vocab["[PAD]"],
                         initializer_range=0.1),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=8, initializer_range=0.1))  # BLIP's 1e-10 blanks the pixels
    BlipForQuestionAnswering(cfg).save_pretrained(path)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(path)
    return path


def check_common(reward, images, prompts=None):
    """Finite, (B,), float64; one at a time == batched; a repeated item scores the same."""
    prompts = REWARD_PROMPTS if prompts is None else prompts
    s = reward(images, prompts)
    assert s.shape == (len(images),) and s.dtype == np.float64 and np.isfinite(s).all()
    bs = reward.batch_size
    reward.batch_size = 1
    try:
        one = reward(images, prompts)
    finally:
        reward.batch_size = bs
    np.testing.assert_allclose(one, s, rtol=1e-5, atol=1e-5)  # float32 rounding of different batch shapes
    np.testing.assert_allclose(s[3], s[0], rtol=1e-5, atol=1e-5)
    assert len(np.unique(np.round(s[:3], 6))) > 1  # not a constant
    return s

# ----------------------------------------------------------------------------- from test_mps.py


CROSS = {"layer_num": 2, "dim_head": 4, "heads": 3, "ff_mult": 2}

# ----------------------------------------------------------------------------- from test_vqascore_t5.py


WORDS = ("a chat between curious user and an artificial intelligence assistant . the gives helpful , detailed "
         "polite answers to user's questions USER : ASSISTANT does this figure show \" red cube ? please answer "
         "yes or no two blue spheres on grass cat Yes").split()


def tiny_clip_t5_dir(path, seed=0, vocab_extra=0, with_tower=True):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPImageProcessor, CLIPVisionConfig, PreTrainedTokenizerFast, T5Config

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>"] + sorted(set(WORDS)))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tok.save_pretrained(path)
    vc = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                          image_size=32, patch_size=8)
    cfg = T5Config(vocab_size=len(vocab) + vocab_extra, d_model=24, d_kv=8, d_ff=32, num_layers=1,
                   num_decoder_layers=1, num_heads=3, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                   mm_vision_tower="openai/clip-vit-large-patch14-336", mm_hidden_size=16,
                   mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2, mm_vision_select_feature="patch",
                   vision_config=vc.to_dict())
    torch.manual_seed(seed)
    model = V.model_class()(cfg)
    sd = {k: v for k, v in model.state_dict().items() if with_tower or not k.startswith("vision_tower.")}
    model.save_pretrained(path, state_dict=sd)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path

# ----------------------------------------------------------------------------- from test_pickapic.py
def jpeg_bytes(color, size=(48, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_shard(path):
    """A Pick-a-Pic v2 parquet shard: 3 labelled pairs (both label orders) and a tie."""
    rows = [  # caption, jpg_0, jpg_1, label_0, label_1, ranking_id (+ columns capo does not read)
        ("a red circle", jpeg_bytes((250, 0, 0)), jpeg_bytes((0, 0, 250)), 1.0, 0.0, 11),  # jpg_0 preferred
        ("a blue square", jpeg_bytes((250, 0, 0)), jpeg_bytes((0, 0, 250)), 0.0, 1.0, 12),  # jpg_1 preferred
        ("a green triangle", jpeg_bytes((0, 250, 0)), jpeg_bytes((0, 0, 250)), 0.5, 0.5, 13),  # tie: dropped
        ("a red circle", jpeg_bytes((0, 250, 0)), jpeg_bytes((250, 0, 0)), 1.0, 0.0, 14),  # a repeated caption is its own pair
    ]
    df = pd.DataFrame(rows, columns=["caption", "jpg_0", "jpg_1", "label_0", "label_1", "ranking_id"])
    df["has_label"], df["user_id"] = True, 7
    df.to_parquet(path)
    return path
