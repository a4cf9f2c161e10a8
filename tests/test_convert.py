"""Tests of convert_videollama_to_mmemotion.py on tiny checkpoints written with the ORIGINAL key names and layouts.

The converted encoders are compared with reference forwards written here, in plain torch, straight from the
original-layout tensors (LAVIS' BERT Q-Former and EVA ViT, ImageBind's audio encoder with its key/value biases,
VideoLLaMA's branch wiring): independent of modeling_mmemotion.py and of the converter's own `--verify` reference.
"""

import contextlib
import io
import json
import math
import os
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModel,
    AutoTokenizer,
    Blip2QFormerConfig,
    Blip2QFormerModel,
    Blip2VisionConfig,
    Blip2VisionModel,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

import convert_videollama_to_mmemotion as converter


# Tiny widths, one set of numbers for the sources and the preset they are converted with.
VISION = {
    "hidden_size": 24,
    "intermediate_size": 40,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 16,
}
QFORMER = {
    "hidden_size": 16,
    "intermediate_size": 24,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "cross_attention_frequency": 2,
}
SMALL_QFORMER = {**QFORMER, "cross_attention_frequency": 1}
AUDIO = {
    "num_mel_bins": 26,
    "target_length": 36,
    "hidden_size": 12,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "output_size": 10,
}
NUM_QUERIES, NUM_VIDEO_QUERIES, NUM_AUDIO_QUERIES, FRAME_POSITIONS, CLIP_POSITIONS = 4, 3, 2, 6, 4
LLM_WIDTH, VOCAB = 20, 40
AUDIO_TOKENS = 1 + ((26 - 16) // 10 + 1) * ((36 - 16) // 10 + 1)  # CLS + ImageBind's overlapping 16x16 patches
PRESET = {
    "model_type": "mmemotion",
    "video_config": {
        "vision_config": VISION,
        "qformer_config": QFORMER,
        "num_query_tokens": NUM_QUERIES,
        "video_qformer_config": SMALL_QFORMER,
        "num_video_query_tokens": NUM_VIDEO_QUERIES,
        "max_frame_positions": FRAME_POSITIONS,
    },
    "audio_config": {
        **AUDIO,
        "audio_qformer_config": SMALL_QFORMER,
        "num_audio_query_tokens": NUM_AUDIO_QUERIES,
        "max_clip_positions": CLIP_POSITIONS,
    },
    "projection_size": 8,
    "attention_size": 4,
    "classifier_hidden_size": 8,
}
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}
GENERATOR = torch.Generator().manual_seed(0)


def rand(*shape) -> torch.Tensor:
    return 0.3 * torch.randn(*shape, generator=GENERATOR)


def linear(name, out_features, in_features, bias=True) -> dict:
    return {
        f"{name}.weight": rand(out_features, in_features),
        **({f"{name}.bias": rand(out_features)} if bias else {}),
    }


def layer_norm(name, width) -> dict:
    return {f"{name}.weight": 1 + rand(width), f"{name}.bias": rand(width)}


# ---------------------------------------------------------------------------------------------------------------------
# Original-layout checkpoints
# ---------------------------------------------------------------------------------------------------------------------


def lavis_qformer(prefix, config, encoder_width) -> dict:
    """A LAVIS `BertLMHeadModel` Q-Former state dict, text-side parts included (the converter drops them)."""
    width, ffn, bert = config["hidden_size"], config["intermediate_size"], f"{prefix}.bert"
    state = {
        **layer_norm(f"{bert}.embeddings.LayerNorm", width),
        f"{bert}.embeddings.word_embeddings.weight": rand(30, width),
        f"{bert}.embeddings.position_embeddings.weight": rand(16, width),
        f"{bert}.embeddings.position_ids": torch.arange(16)[None],
        **linear(f"{prefix}.cls.predictions.transform.dense", width, width),
    }
    for index in range(config["num_hidden_layers"]):
        layer = f"{bert}.encoder.layer.{index}"
        attentions = {"attention": width}
        if index % config["cross_attention_frequency"] == 0:
            attentions["crossattention"] = encoder_width
        for kind, key_width in attentions.items():
            state |= linear(f"{layer}.{kind}.self.query", width, width)
            state |= linear(f"{layer}.{kind}.self.key", width, key_width)
            state |= linear(f"{layer}.{kind}.self.value", width, key_width)
            state |= linear(f"{layer}.{kind}.output.dense", width, width) | layer_norm(
                f"{layer}.{kind}.output.LayerNorm", width
            )
        for suffix in ("", "_query"):  # LAVIS keeps a text-token feed-forward beside the queries' one
            state |= linear(f"{layer}.intermediate{suffix}.dense", ffn, width)
            state |= linear(f"{layer}.output{suffix}.dense", width, ffn) | layer_norm(
                f"{layer}.output{suffix}.LayerNorm", width
            )
    return state


def eva_vit() -> dict:
    """LAVIS `eva_vit_g.pth` layout: one block more than BLIP-2 uses, EVA-CLIP's final norm and head."""
    width, ffn = VISION["hidden_size"], VISION["intermediate_size"]
    num_positions = (VISION["image_size"] // VISION["patch_size"]) ** 2 + 1
    state = {
        "cls_token": rand(1, 1, width),
        "pos_embed": rand(1, num_positions, width),
        "patch_embed.proj.weight": rand(width, 3, VISION["patch_size"], VISION["patch_size"]) / 10,
        "patch_embed.proj.bias": rand(width),
        **layer_norm("norm", width),
        **linear("head", 8, width),
    }
    for index in range(VISION["num_hidden_layers"] + 1):
        block = f"blocks.{index}"
        state |= layer_norm(f"{block}.norm1", width) | layer_norm(f"{block}.norm2", width)
        state |= {
            f"{block}.attn.qkv.weight": rand(3 * width, width),
            f"{block}.attn.q_bias": rand(width),
            f"{block}.attn.v_bias": rand(width),
        }
        state |= linear(f"{block}.attn.proj", width, width)
        state |= linear(f"{block}.mlp.fc1", ffn, width) | linear(f"{block}.mlp.fc2", width, ffn)
    return state


def training_checkpoint(model_state: dict) -> dict:
    """A LAVIS / VideoLLaMA training checkpoint: the state dict under `model`, plus optimizer state and bookkeeping."""
    first = next(iter(model_state.values()))
    optimizer = {
        "state": {
            0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros_like(first), "exp_avg_sq": torch.zeros_like(first)}
        }
    }
    optimizer["param_groups"] = [{"lr": 1e-4, "weight_decay": 0.05, "params": [0]}]
    return {
        "model": model_state,
        "optimizer": optimizer,
        "scaler": {"scale": 1024.0},
        "epoch": 3,
        "config": {"run": {"seed": 42}},
    }


def blip2_lavis() -> dict:
    return {
        "query_tokens": rand(1, NUM_QUERIES, QFORMER["hidden_size"]),
        **layer_norm("ln_vision", VISION["hidden_size"]),
        **lavis_qformer("Qformer", QFORMER, VISION["hidden_size"]),
        **linear("t5_proj", 8, QFORMER["hidden_size"]),
    }


def video_llama() -> dict:
    return {
        **lavis_qformer("video_Qformer", SMALL_QFORMER, QFORMER["hidden_size"]),
        "video_query_tokens": rand(1, NUM_VIDEO_QUERIES, SMALL_QFORMER["hidden_size"]),
        "video_frame_position_embedding.weight": rand(FRAME_POSITIONS, QFORMER["hidden_size"]),
        **linear("llama_proj", LLM_WIDTH, SMALL_QFORMER["hidden_size"]),
    }


def audio_llama() -> dict:
    return {
        **lavis_qformer("audio_Qformer", SMALL_QFORMER, AUDIO["output_size"]),
        "audio_query_tokens": rand(1, NUM_AUDIO_QUERIES, SMALL_QFORMER["hidden_size"]),
        "audio_position_embedding.weight": rand(CLIP_POSITIONS, AUDIO["output_size"]),
        **linear("audio_llama_proj", LLM_WIDTH, SMALL_QFORMER["hidden_size"]),
    }


def imagebind() -> dict:
    """`imagebind_huge.pth` layout: the audio modality in full, and a few tensors of the others."""
    width, stem = AUDIO["hidden_size"], "modality_preprocessors.audio"
    state = {
        f"{stem}.rgbt_stem.proj.weight": rand(width, 1, 16, 16) / 4,
        **layer_norm(f"{stem}.rgbt_stem.norm_layer", width),
        f"{stem}.cls_token": rand(1, 1, width),
        f"{stem}.pos_embedding_helper.pos_embed": rand(1, AUDIO_TOKENS, width),
        **layer_norm("modality_heads.audio.0", width),
        "modality_heads.audio.2.weight": rand(AUDIO["output_size"], width),
        "modality_postprocessors.audio.1.log_logit_scale": torch.tensor(math.log(20.0)),
        "modality_preprocessors.vision.rgbt_stem.proj.1.weight": rand(width, 3, 2, 14, 14),
        **linear("modality_trunks.vision.blocks.0.attn.out_proj", width, width),
        "modality_heads.text.proj.0.weight": rand(AUDIO["output_size"], width),
    }
    for index in range(AUDIO["num_hidden_layers"]):
        block = f"modality_trunks.audio.blocks.{index}"
        state |= layer_norm(f"{block}.norm_1", width) | layer_norm(f"{block}.norm_2", width)
        state |= {
            f"{block}.attn.in_proj_weight": rand(3 * width, width),
            f"{block}.attn.in_proj_bias": rand(3 * width),
        }
        state |= {f"{block}.attn.bias_k": rand(1, 1, width), f"{block}.attn.bias_v": rand(1, 1, width)}
        state |= linear(f"{block}.attn.out_proj", width, width)
        state |= linear(f"{block}.mlp.fc1", 4 * width, width) | linear(f"{block}.mlp.fc2", width, 4 * width)
    return state


def write_llama_folder(path) -> dict:
    """A transformers LLaMA folder: config, safetensors weights and a tokenizer."""
    LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=LLM_WIDTH,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    ).save_pretrained(path)
    state = {
        "model.embed_tokens.weight": rand(VOCAB, LLM_WIDTH),
        **linear("model.layers.0.self_attn.q_proj", LLM_WIDTH, LLM_WIDTH, bias=False),
        "model.norm.weight": 1 + rand(LLM_WIDTH),
        "lm_head.weight": rand(VOCAB, LLM_WIDTH),
    }
    save_file(state, os.path.join(path, "model.safetensors"))
    vocab = {
        token: index
        for index, token in enumerate(["<unk>", "<s>", "</s>", "oh", "my", "god", "you", "got", "the", "job"])
    }
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>"
    ).save_pretrained(path)
    return state


def write_hf_blip2_folder(path) -> dict:
    """`Salesforce/blip2-flan-t5-xxl` layout: two safetensors shards and their index, FlanT5 tensors included."""
    vision = Blip2VisionModel(Blip2VisionConfig(**VISION))
    qformer = Blip2QFormerModel(Blip2QFormerConfig(**QFORMER, encoder_hidden_size=VISION["hidden_size"]))
    state = {f"vision_model.{name}": rand(*tensor.shape) for name, tensor in vision.state_dict().items()}
    state |= {f"qformer.{name}": rand(*tensor.shape) for name, tensor in qformer.state_dict().items()}
    state |= {
        "query_tokens": rand(1, NUM_QUERIES, QFORMER["hidden_size"]),
        **linear("language_projection", 8, QFORMER["hidden_size"]),
    }
    state |= {
        "language_model.shared.weight": rand(VOCAB, 8),
        "language_model.encoder.final_layer_norm.weight": rand(8),
    }
    os.makedirs(path)
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, shard_names in shards.items():
        save_file({name: state[name].contiguous() for name in shard_names}, os.path.join(path, shard))
    weight_map = {name: shard for shard, shard_names in shards.items() for name in shard_names}
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as file:
        json.dump({"metadata": {}, "weight_map": weight_map}, file)
    return state


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """Every original file, written once: {name: (path, the model state dict it holds)}."""
    root = tmp_path_factory.mktemp("originals")
    files = {
        "eva_vit": ("eva_vit_g.pth", eva_vit(), False),
        "blip2": ("blip2_pretrained_flant5xxl.pth", blip2_lavis(), True),
        "vl": ("VL_LLaMA_2_7B_Finetuned.pth", video_llama(), True),
        "al": ("AL_LLaMA_2_7B_Finetuned.pth", audio_llama(), True),
        "imagebind": ("imagebind_huge.pth", imagebind(), False),
    }
    written = {}
    for name, (file_name, state, is_training_checkpoint) in files.items():
        written[name] = (str(root / file_name), state)
        torch.save(training_checkpoint(state) if is_training_checkpoint else state, written[name][0])
    written["llama"] = (str(root / "llama"), write_llama_folder(root / "llama"))
    written["hf_blip2"] = (str(root / "blip2-flan-t5-xxl"), write_hf_blip2_folder(root / "blip2-flan-t5-xxl"))
    with open(root / "preset.json", "w") as file:
        json.dump(PRESET, file)
    written["preset"] = (str(root / "preset.json"), PRESET)
    return written


def run_converter(originals, output_dir, *extra, video="lavis", **paths) -> str:
    """Run the converter's `main` on the originals (overridden by `paths`); returns what it printed."""
    path = {name: paths.get(name, originals[name][0]) for name in originals}
    video_flags = (
        ["--eva_vit_checkpoint", path["eva_vit"], "--blip2_checkpoint", path["blip2"]]
        if video == "lavis"
        else ["--blip2_model_dir", path["hf_blip2"]]
    )
    argv = [
        "--output_dir", str(output_dir), *video_flags, "--vl_checkpoint", path["vl"],
        "--al_checkpoint", path["al"], "--imagebind_checkpoint", path["imagebind"],
        "--llama_model_dir", path["llama"], *extra,
    ]  # fmt: skip
    if "--head_from" not in extra:
        argv += ["--config", path["preset"]]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        converter.main(argv)
    return stdout.getvalue()


@pytest.fixture(scope="module")
def converted(originals, tmp_path_factory):
    """The LAVIS-layout conversion of all three branches (with --verify), reloaded as remote code."""
    output_dir = tmp_path_factory.mktemp("converted")
    printed = run_converter(originals, output_dir, "--verify")
    model = AutoModel.from_pretrained(output_dir, trust_remote_code=True).eval()
    return output_dir, printed, model


# ---------------------------------------------------------------------------------------------------------------------
# Reference forwards from the original tensors
# ---------------------------------------------------------------------------------------------------------------------


def ln(hidden, state, name, eps):
    mean = hidden.mean(-1, keepdim=True)
    variance = (hidden - mean).pow(2).mean(-1, keepdim=True)
    return (hidden - mean) / torch.sqrt(variance + eps) * state[f"{name}.weight"] + state[f"{name}.bias"]


def dense(hidden, state, name):
    output = hidden @ state[f"{name}.weight"].T
    return output + state[f"{name}.bias"] if f"{name}.bias" in state else output


def gelu(hidden):
    return 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))


def multi_head(query, key, value, num_heads):
    """Scaled dot-product attention over (batch, length, width) projections split into `num_heads` heads."""
    batch, length, width = query.shape
    head_width = width // num_heads
    query, key, value = (t.reshape(batch, -1, num_heads, head_width).permute(0, 2, 1, 3) for t in (query, key, value))
    weights = torch.softmax(query @ key.transpose(-1, -2) / math.sqrt(head_width), dim=-1)
    return (weights @ value).permute(0, 2, 1, 3).reshape(batch, length, width)


def bert_qformer(state, prefix, queries, encoder_states, config):
    """LAVIS `BertModel` run on query embeddings: LayerNorm of the queries, then post-LN layers of self-attention,
    cross-attention to the encoder states (every `cross_attention_frequency` layers) and the queries' feed-forward."""
    bert, eps = f"{prefix}.bert", 1e-12

    def attend(layer, kind, hidden, context):
        name = f"{layer}.{kind}"
        query, key, value = (
            dense(source, state, f"{name}.self.{part}")
            for source, part in ((hidden, "query"), (context, "key"), (context, "value"))
        )
        context_layer = multi_head(query, key, value, config["num_attention_heads"])
        return ln(dense(context_layer, state, f"{name}.output.dense") + hidden, state, f"{name}.output.LayerNorm", eps)

    hidden = ln(queries, state, f"{bert}.embeddings.LayerNorm", eps)
    for index in range(config["num_hidden_layers"]):
        layer = f"{bert}.encoder.layer.{index}"
        hidden = attend(layer, "attention", hidden, hidden)
        if index % config["cross_attention_frequency"] == 0:
            hidden = attend(layer, "crossattention", hidden, encoder_states)
        feed_forward = dense(
            gelu(dense(hidden, state, f"{layer}.intermediate_query.dense")), state, f"{layer}.output_query.dense"
        )
        hidden = ln(feed_forward + hidden, state, f"{layer}.output_query.LayerNorm", eps)
    return hidden


def eva_vit_forward(state, frames):
    """LAVIS EVA ViT `forward_features` with BLIP-2's depth: pre-norm blocks whose qkv bias is (q_bias, 0, v_bias)."""
    patches = F.conv2d(
        frames, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=VISION["patch_size"]
    )
    hidden = (
        torch.cat([state["cls_token"].expand(len(frames), 1, -1), patches.flatten(2).transpose(1, 2)], dim=1)
        + state["pos_embed"]
    )
    for index in range(VISION["num_hidden_layers"]):
        block = f"blocks.{index}"
        qkv_bias = torch.cat(
            [state[f"{block}.attn.q_bias"], torch.zeros(VISION["hidden_size"]), state[f"{block}.attn.v_bias"]]
        )
        qkv = ln(hidden, state, f"{block}.norm1", 1e-6) @ state[f"{block}.attn.qkv.weight"].T + qkv_bias
        attended = multi_head(*qkv.chunk(3, dim=-1), VISION["num_attention_heads"])
        hidden = hidden + dense(attended, state, f"{block}.attn.proj")
        hidden = hidden + dense(
            gelu(dense(ln(hidden, state, f"{block}.norm2", 1e-6), state, f"{block}.mlp.fc1")),
            state,
            f"{block}.mlp.fc2",
        )
    return hidden


def imagebind_audio_forward(state, clips):
    """ImageBind's audio encoder (batch-first re-statement; the learned key/value biases join the keys and values as
    one extra position), its head on the CLS token and the L2 normalisation VideoLLaMA keeps."""
    stem, batch = "modality_preprocessors.audio", len(clips)
    patches = F.conv2d(clips, state[f"{stem}.rgbt_stem.proj.weight"], stride=10).flatten(2).transpose(1, 2)
    patches = ln(patches, state, f"{stem}.rgbt_stem.norm_layer", 1e-5)
    hidden = (
        torch.cat([state[f"{stem}.cls_token"].expand(batch, 1, -1), patches], dim=1)
        + state[f"{stem}.pos_embedding_helper.pos_embed"]
    )
    for index in range(AUDIO["num_hidden_layers"]):
        block = f"modality_trunks.audio.blocks.{index}"
        qkv = (
            ln(hidden, state, f"{block}.norm_1", 1e-6) @ state[f"{block}.attn.in_proj_weight"].T
            + state[f"{block}.attn.in_proj_bias"]
        )
        query, key, value = qkv.chunk(3, dim=-1)
        key = torch.cat([key, state[f"{block}.attn.bias_k"].expand(batch, 1, -1)], dim=1)
        value = torch.cat([value, state[f"{block}.attn.bias_v"].expand(batch, 1, -1)], dim=1)
        hidden = hidden + dense(
            multi_head(query, key, value, AUDIO["num_attention_heads"]), state, f"{block}.attn.out_proj"
        )
        hidden = hidden + dense(
            gelu(dense(ln(hidden, state, f"{block}.norm_2", 1e-6), state, f"{block}.mlp.fc1")),
            state,
            f"{block}.mlp.fc2",
        )
    embedding = ln(hidden[:, 0], state, "modality_heads.audio.0", 1e-6) @ state["modality_heads.audio.2.weight"].T
    return embedding / embedding.norm(dim=-1, keepdim=True)


def audio_branch_reference(originals, audio):
    """VideoLLaMA's `encode_audioQformer`: ImageBind per clip, + clip positions, audio Q-Former, `audio_llama_proj`."""
    imagebind_state, al_state = originals["imagebind"][1], originals["al"][1]
    batch, num_clips = audio.shape[:2]
    clip_embeds = imagebind_audio_forward(imagebind_state, audio.flatten(0, 1)).reshape(batch, num_clips, -1)
    clip_embeds = clip_embeds + al_state["audio_position_embedding.weight"][:num_clips]
    queries = al_state["audio_query_tokens"].expand(batch, -1, -1)
    return dense(
        bert_qformer(al_state, "audio_Qformer", queries, clip_embeds, SMALL_QFORMER), al_state, "audio_llama_proj"
    )


def video_qformer_reference(vl_state, frame_features):
    """VideoLLaMA's video stage on (B, T, queries, width) BLIP-2 frame features: + frame positions, video Q-Former over
    the T * queries tokens, `llama_proj`."""
    batch, num_frames = frame_features.shape[:2]
    frame_features = frame_features + vl_state["video_frame_position_embedding.weight"][:num_frames, None]
    queries = vl_state["video_query_tokens"].expand(batch, -1, -1)
    tokens = bert_qformer(vl_state, "video_Qformer", queries, frame_features.flatten(1, 2), SMALL_QFORMER)
    return dense(tokens, vl_state, "llama_proj")


def frames_and_audio():
    generator = torch.Generator().manual_seed(1)
    frames = torch.randn(2, 3, 3, VISION["image_size"], VISION["image_size"], generator=generator)
    audio = torch.randn(2, 3, 1, AUDIO["num_mel_bins"], AUDIO["target_length"], generator=generator)
    return frames, audio


# ---------------------------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_audio_branch_matches_imagebind_and_audio_qformer_reference(converted, originals):
    _, audio = frames_and_audio()
    model = converted[2]
    torch.testing.assert_close(
        model.mmemotion.audio_encoder(audio), audio_branch_reference(originals, audio), **TOLERANCE
    )


@torch.no_grad()
def test_video_branch_matches_eva_blip2_and_video_qformer_reference(converted, originals):
    frames, _ = frames_and_audio()
    model = converted[2]
    eva_state, blip2_state, vl_state = originals["eva_vit"][1], originals["blip2"][1], originals["vl"][1]
    image_embeds = ln(eva_vit_forward(eva_state, frames.flatten(0, 1)), blip2_state, "ln_vision", 1e-5)
    queries = blip2_state["query_tokens"].expand(len(image_embeds), -1, -1)
    frame_features = bert_qformer(blip2_state, "Qformer", queries, image_embeds, QFORMER).unflatten(
        0, frames.shape[:2]
    )
    video_encoder = model.mmemotion.video_encoder
    # The BLIP-2 stage alone, then the whole branch: the video Q-Former part is checked on its own input too.
    torch.testing.assert_close(
        video_encoder.encode_frames(frames.flatten(0, 1)).unflatten(0, frames.shape[:2]), frame_features, **TOLERANCE
    )
    torch.testing.assert_close(video_encoder(frames), video_qformer_reference(vl_state, frame_features), **TOLERANCE)


def test_config_sizes_text_embeddings_and_processor(converted, originals):
    output_dir, _, model = converted
    config = model.config
    assert type(model).__name__ == "MMEmotionForEmotionClassification"
    assert config.video_config.llm_hidden_size == config.audio_config.llm_hidden_size == LLM_WIDTH
    assert config.text_config.hidden_size == LLM_WIDTH and config.text_config.vocab_size == VOCAB
    torch.testing.assert_close(
        model.get_input_embeddings().weight, originals["llama"][1]["model.embed_tokens.weight"], rtol=0, atol=0
    )
    assert os.path.isfile(output_dir / "processor_config.json")
    assert AutoTokenizer.from_pretrained(output_dir)("oh my god").input_ids == [3, 4, 5]


def test_summary_accounts_for_every_source_tensor(converted, originals):
    _, printed, _ = converted
    rows = {
        line.split()[-1]: line
        for line in printed.splitlines()
        if line.split() and line.split()[-1] in {path for path, _ in originals.values()}
    }
    al_state = originals["al"][1]
    text_side = [
        name
        for name in al_state
        if re.search(r"\.cls\.|_embeddings\.|position_ids|layer\.\d+\.(intermediate|output)\.", name)
    ]
    mapped, dropped = rows[originals["al"][0]].split()[-3:-1]
    assert (int(mapped), int(dropped)) == (len(al_state) - len(text_side), len(text_side))
    assert "entries beside `model`: optimizer (3 tensors), scaler, epoch, config" in printed
    assert "EVA-CLIP blocks past the first 2" in printed and "ImageBind's other modalities" in printed
    assert "peak memory (ru_maxrss):" in printed and "fresh head:" in printed
    for branch in ("video", "audio", "text"):
        assert f"verify {branch}: " in printed and "MISMATCH" not in printed


@torch.no_grad()
def test_hf_blip2_layout_loads_tensors_unchanged_and_matches_blip2(originals, tmp_path):
    printed = run_converter(originals, tmp_path, "--modalities", "video", "--verify", video="hf")
    assert "FlanT5-XXL" in printed and "verify video: " in printed
    model = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    hf_state = originals["hf_blip2"][1]
    converted = load_file(os.path.join(tmp_path, "model.safetensors"))
    for name in [name for name in hf_state if not name.startswith("language_")]:
        torch.testing.assert_close(converted[f"mmemotion.video_encoder.{name}"], hf_state[name], rtol=0, atol=0)
    # transformers' BLIP-2 modules loaded straight from the published layout, independently of the converter.
    vision = Blip2VisionModel(Blip2VisionConfig(**VISION)).eval()
    qformer = Blip2QFormerModel(Blip2QFormerConfig(**QFORMER, encoder_hidden_size=VISION["hidden_size"])).eval()
    vision.load_state_dict(
        {name.removeprefix("vision_model."): t for name, t in hf_state.items() if name.startswith("vision_model.")}
    )
    qformer.load_state_dict(
        {name.removeprefix("qformer."): t for name, t in hf_state.items() if name.startswith("qformer.")}
    )
    frames, _ = frames_and_audio()
    frames = frames.flatten(0, 1)
    queries = hf_state["query_tokens"].expand(len(frames), -1, -1)
    expected = qformer(
        query_embeds=queries, encoder_hidden_states=vision(pixel_values=frames).last_hidden_state
    ).last_hidden_state
    torch.testing.assert_close(model.mmemotion.video_encoder.encode_frames(frames), expected, **TOLERANCE)
    # and the rest of the video branch against the reference on those features
    frame_features = expected.unflatten(0, (2, 3))
    actual = model.mmemotion.video_encoder(frames.unflatten(0, (2, 3)))
    torch.testing.assert_close(actual, video_qformer_reference(originals["vl"][1], frame_features), **TOLERANCE)


def test_head_from_keeps_the_pooling_and_classifier(originals, converted, tmp_path):
    head_dir = converted[0]
    run_converter(originals, tmp_path, "--head_from", str(head_dir), "--modalities", "text", "video", "audio")
    head = {name: tensor for name, tensor in load_file_dir(head_dir).items() if converter.HEAD_KEYS.fullmatch(name)}
    reconverted = load_file_dir(tmp_path)
    assert len(head) > 0
    for name, tensor in head.items():
        torch.testing.assert_close(reconverted[name], tensor, rtol=0, atol=0)


def load_file_dir(path) -> dict:
    return {
        name: tensor
        for file in sorted(os.listdir(path))
        if file.endswith(".safetensors")
        for name, tensor in load_file(os.path.join(path, file)).items()
    }


def write_variant(originals, tmp_path, name, edit) -> str:
    """A copy of one original training checkpoint with `edit` applied to its state dict."""
    path = originals[name][0]
    checkpoint = torch.load(path, weights_only=True)
    edit(checkpoint["model"])
    variant = str(tmp_path / os.path.basename(path))
    torch.save(checkpoint, variant)
    return variant


def test_unmapped_source_keys_fail_naming_them(originals, tmp_path):
    unknown = ["video_Qformer.bert.encoder.layer.0.attention.self.distance_embedding.weight", "video_temperature"]
    vl = write_variant(
        originals, tmp_path, "vl", lambda state: state.update({name: torch.zeros(2) for name in unknown})
    )
    with pytest.raises(converter.ConversionError) as error:
        run_converter(originals, tmp_path / "out", "--modalities", "video", video="hf", vl=vl)
    assert "source keys no rule maps or drops" in str(error.value)
    for name in unknown:
        assert name in str(error.value)
    assert not os.path.exists(tmp_path / "out")


def test_missing_keys_fail_naming_them(originals, tmp_path):
    removed = "audio_Qformer.bert.encoder.layer.1.output_query.dense.bias"
    al = write_variant(originals, tmp_path, "al", lambda state: state.pop(removed))
    with pytest.raises(converter.ConversionError) as error:
        run_converter(originals, tmp_path / "out", "--modalities", "audio", al=al)
    assert "MMEmotion keys no source provides" in str(error.value)
    assert "mmemotion.audio_encoder.audio_qformer.encoder.layer.1.output_query.dense.bias" in str(error.value)


def test_misshapen_tensors_fail_naming_them(originals, tmp_path):
    vl = write_variant(
        originals, tmp_path, "vl", lambda state: state.update({"video_query_tokens": torch.zeros(1, 5, 16)})
    )
    with pytest.raises(converter.ConversionError, match=r"video_encoder\.video_query_tokens: \(1, 5, 16\)"):
        run_converter(originals, tmp_path / "out", "--modalities", "video", video="hf", vl=vl)
