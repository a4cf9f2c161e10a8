# Copyright 2026 The mmemotion authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
"""Convert the original VideoLLaMA (v1) weights into an MMEmotion folder.

The sources are the files VideoLLaMA itself loads: the BLIP-2 FlanT5-XXL vision model and Q-Former (a transformers
`Salesforce/blip2-flan-t5-xxl` folder, or LAVIS' `eva_vit_g.pth` + `blip2_pretrained_flant5xxl.pth`), VideoLLaMA's
`VL_LLaMA_2_*B_Finetuned.pth` (video Q-Former) and `AL_LLaMA_2_*B_Finetuned.pth` (audio Q-Former), ImageBind's
`imagebind_huge.pth` (its audio encoder) and a transformers-format LLaMA-2 folder (token embeddings and tokenizer).

Every source tensor is renamed to an MMEmotion parameter or dropped for a stated reason; an unknown or missing key, or
a shape that does not fit, fails the conversion with the keys named. Tensors are streamed (`safe_open`, memory-mapped
`torch.load(weights_only=True)`) into a model built on the meta device, so no second copy of the weights is held.

Example (VideoLLaMA-2 13B; see docs/converting-videollama.md):

```bash
python convert_videollama_to_mmemotion.py \
    --blip2_model_dir blip2-flan-t5-xxl \
    --vl_checkpoint VL_LLaMA_2_13B_Finetuned.pth \
    --al_checkpoint AL_LLaMA_2_13B_Finetuned.pth \
    --imagebind_checkpoint imagebind_huge.pth \
    --llama_model_dir Llama-2-13b-hf \
    --config presets/exp3.json \
    --output_dir mmemotion-videollama2-13b \
    --verify
```
"""

import argparse
import glob
import json
import os
import re
import resource
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from transformers import AutoConfig, AutoModel, AutoTokenizer, Blip2QFormerModel, Blip2VisionModel

from configuration_mmemotion import MODALITIES, MMEmotionConfig
from modeling_mmemotion import MMEmotionForEmotionClassification
from processing_mmemotion import MMEmotionProcessor


VIDEO = "mmemotion.video_encoder"
AUDIO = "mmemotion.audio_encoder"
IMAGEBIND = f"{AUDIO}.audio_model"
# The fusion head: taken from `--head_from`, or freshly initialised.
HEAD_KEYS = re.compile(r"classifier\..+|mmemotion\.(?:poolers\..+|missing_modality_embeds)")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MAX_LISTED_KEYS = 40


class ConversionError(ValueError):
    """The sources do not convert: unknown, missing or misshapen keys, or inconsistent checkpoints."""


@dataclass(frozen=True)
class Drop:
    """A source tensor deliberately left out of the MMEmotion model, and why."""

    reason: str


# A regex over a whole source key, and the MMEmotion key it becomes (a `re` template) or why it is dropped.
Rule = tuple[str, "str | Drop"]


# ---------------------------------------------------------------------------------------------------------------------
# Key mapping tables
# ---------------------------------------------------------------------------------------------------------------------


def qformer_rules(source: str, target: str) -> list[Rule]:
    """LAVIS/BERT Q-Former names -> transformers `Blip2QFormerModel` names, as transformers' BLIP-2 conversion does.

    Only the query path is kept: LAVIS layers also hold a feed-forward for text tokens (`intermediate`, `output`)
    beside the one the queries use (`intermediate_query`, `output_query`), and BERT's text embeddings and MLM head.
    """
    bert, layer = rf"{source}\.bert", rf"{source}\.bert\.encoder\.layer\.(\d+)"
    weight_or_bias = r"(?:weight|bias)"
    return [
        (rf"{bert}\.embeddings\.LayerNorm\.(weight|bias)", rf"{target}.layernorm.\1"),
        (
            rf"{layer}\.(attention|crossattention)\.self\.((?:query|key|value)\.{weight_or_bias})",
            rf"{target}.encoder.layer.\1.\2.attention.\3",
        ),
        (
            rf"{layer}\.((?:attention|crossattention)\.output|output_query)\.((?:dense|LayerNorm)\.{weight_or_bias})",
            rf"{target}.encoder.layer.\1.\2.\3",
        ),
        (
            rf"{layer}\.intermediate_query\.dense\.(weight|bias)",
            rf"{target}.encoder.layer.\1.intermediate_query.dense.\2",
        ),
        (rf"{source}\.cls\..+", Drop("BERT masked-LM head (text side)")),
        (
            rf"{bert}\.embeddings\.(?:word_embeddings|position_embeddings)\.weight",
            Drop("BERT text embeddings: the queries carry no tokens or positions"),
        ),
        (rf"{bert}\.embeddings\.position_ids", Drop("BERT position-id buffer")),
        (
            rf"{layer}\.(?:intermediate|output)\.(?:dense|LayerNorm)\.{weight_or_bias}",
            Drop("text-token feed-forward: the queries use intermediate_query / output_query"),
        ),
    ]


def hf_blip2_rules() -> list[Rule]:
    """`Salesforce/blip2-flan-t5-xxl` (transformers layout): the vision model and Q-Former keep their names."""
    return [
        (r"query_tokens", f"{VIDEO}.query_tokens"),
        (r"(vision_model|qformer)\.(.+)", rf"{VIDEO}.\1.\2"),
        (r"language_model\..+", Drop("FlanT5-XXL: VideoLLaMA's language model is LLaMA")),
        (r"language_projection\.(?:weight|bias)", Drop("FlanT5 input projection: VideoLLaMA has its own llama_proj")),
    ]


def eva_vit_rules(num_layers: int) -> list[Rule]:
    """LAVIS EVA ViT-g (`eva_vit_g.pth`, with or without the `visual_encoder.` prefix) -> `Blip2VisionModel`.

    As transformers' BLIP-2 conversion; `q_bias` / `v_bias` are renamed here and fused into `qkv.bias` by
    `fuse_eva_qv_biases`. BLIP-2 builds only the first `num_layers` blocks (the penultimate layer's features).
    """
    prefix = r"(?:visual_encoder\.)?"
    kept = "|".join(map(str, range(num_layers)))
    block = rf"{prefix}blocks\.({kept})"
    layer = rf"{VIDEO}.vision_model.encoder.layers.\1"
    return [
        (rf"{prefix}cls_token", f"{VIDEO}.vision_model.embeddings.class_embedding"),
        (rf"{prefix}pos_embed", f"{VIDEO}.vision_model.embeddings.position_embedding"),
        (rf"{prefix}patch_embed\.proj\.(weight|bias)", rf"{VIDEO}.vision_model.embeddings.patch_embedding.\1"),
        (rf"{block}\.norm([12])\.(weight|bias)", rf"{layer}.layer_norm\2.\3"),
        (rf"{block}\.attn\.(qkv\.weight|q_bias|v_bias)", rf"{layer}.self_attn.\2"),
        (rf"{block}\.attn\.proj\.(weight|bias)", rf"{layer}.self_attn.projection.\2"),
        (rf"{block}\.mlp\.(fc[12]\.(?:weight|bias))", rf"{layer}.mlp.\2"),
        (
            rf"{prefix}blocks\.(?!(?:{kept})\.)\d+\..+",
            Drop(f"EVA-CLIP blocks past the first {num_layers}: BLIP-2 uses the penultimate layer's features"),
        ),
        (
            rf"{prefix}(?:norm|fc_norm|head)\.(?:weight|bias)",
            Drop("EVA-CLIP's final norm and CLIP head: BLIP-2 applies its own `ln_vision` to the block outputs"),
        ),
    ]


def lavis_blip2_rules() -> list[Rule]:
    """LAVIS `blip2_pretrained_flant5xxl.pth`: Q-Former, its query tokens and `ln_vision` (the ViT's final norm)."""
    return [
        (r"query_tokens", f"{VIDEO}.query_tokens"),
        (r"ln_vision\.(weight|bias)", rf"{VIDEO}.vision_model.post_layernorm.\1"),
        *qformer_rules("Qformer", f"{VIDEO}.qformer"),
        (r"t5_proj\.(?:weight|bias)", Drop("FlanT5 input projection: VideoLLaMA has its own llama_proj")),
    ]


# LAVIS saves the trainable parameters and every buffer of the model: a VideoLLaMA checkpoint can hold the buffers of
# its frozen modules (BERT position ids, LLaMA rotary frequencies, ImageBind's logit scales and text mask). A frozen
# module's weights in there would still fail: they come from the module's own original file.
FROZEN_VIDEOLLAMA_BUFFERS: Rule = (
    r"(?:visual_encoder|ln_vision|Qformer|llama_model|audio_encoder)\..*(?:position_ids|inv_freq|log_logit_scale|mask)",
    Drop("buffers of VideoLLaMA's frozen modules"),
)


def video_llama_rules() -> list[Rule]:
    """VideoLLaMA's `VL_LLaMA_2_*B_Finetuned.pth`: the video Q-Former, its queries, frame positions, `llama_proj`."""
    return [
        (r"video_query_tokens", f"{VIDEO}.video_query_tokens"),
        (r"video_frame_position_embedding\.weight", f"{VIDEO}.frame_position_embedding.weight"),
        (r"llama_proj\.(weight|bias)", rf"{VIDEO}.llama_proj.\1"),
        *qformer_rules("video_Qformer", f"{VIDEO}.video_qformer"),
        FROZEN_VIDEOLLAMA_BUFFERS,
    ]


def audio_llama_rules() -> list[Rule]:
    """VideoLLaMA's `AL_LLaMA_2_*B_Finetuned.pth`: the audio Q-Former, its queries, clip positions, projection."""
    return [
        (r"audio_query_tokens", f"{AUDIO}.audio_query_tokens"),
        (r"audio_position_embedding\.weight", f"{AUDIO}.audio_position_embedding.weight"),
        (r"audio_llama_proj\.(weight|bias)", rf"{AUDIO}.audio_llama_proj.\1"),
        *qformer_rules("audio_Qformer", f"{AUDIO}.audio_qformer"),
        FROZEN_VIDEOLLAMA_BUFFERS,
    ]


def imagebind_audio_rules() -> list[Rule]:
    """`imagebind_huge.pth`: the audio pre-processor, trunk and head; every other modality is dropped.

    ImageBind's trunk runs `nn.MultiheadAttention` sequence-first, but the parameters (`in_proj_weight`, `bias_k`,
    ...) are laid out the same as in the batch-first module MMEmotion uses, so they keep their names.
    """
    stem, trunk, head = (
        r"modality_preprocessors\.audio",
        r"modality_trunks\.audio\.blocks\.(\d+)",
        r"modality_heads\.audio",
    )
    block_parameter = r"(?:norm_[12]|mlp\.fc[12]|attn\.out_proj)\.(?:weight|bias)|attn\.(?:in_proj_weight|in_proj_bias|bias_k|bias_v)"
    return [
        # `PatchEmbedGeneric` stores a one-layer stem (the audio Conv2d) as `proj` itself and a longer one as the
        # `nn.Sequential` `proj.N` (the vision stem's Conv3d is `proj.1`): accept both spellings.
        (rf"{stem}\.rgbt_stem\.proj(?:\.\d)?\.weight", f"{IMAGEBIND}.embeddings.patch_embedding.weight"),
        (rf"{stem}\.rgbt_stem\.norm_layer\.(weight|bias)", rf"{IMAGEBIND}.embeddings.patch_norm.\1"),
        (rf"{stem}\.cls_token", f"{IMAGEBIND}.embeddings.cls_token"),
        (rf"{stem}\.pos_embedding_helper\.pos_embed", f"{IMAGEBIND}.embeddings.position_embedding"),
        (rf"{trunk}\.({block_parameter})", rf"{IMAGEBIND}.layers.\1.\2"),
        (rf"{head}\.0\.(weight|bias)", rf"{IMAGEBIND}.head_norm.\1"),
        (rf"{head}\.2\.weight", f"{IMAGEBIND}.head_proj.weight"),
        (
            r"modality_postprocessors\.audio\..+",
            Drop("L2 normalisation has no weights; the x20 logit scale only scales ImageBind's contrastive scores"),
        ),
        (
            r"modality_(?:preprocessors|trunks|heads|postprocessors)\.(?!audio\.)\w+\..+",
            Drop("ImageBind's other modalities"),
        ),
    ]


def llama_rules() -> list[Rule]:
    """A transformers LLaMA folder: the token embeddings only (VideoLLaMA's text embeddings)."""
    return [
        (r"model\.embed_tokens\.weight", "mmemotion.text_encoder.embed_tokens.weight"),
        (
            r"model\.(?:layers\.\d+|norm)\..+|lm_head\.weight",
            Drop("LLaMA's transformer layers, final norm and LM head: the text branch uses its input embeddings"),
        ),
    ]


def head_rules() -> list[Rule]:
    """An MMEmotion checkpoint given as `--head_from` (task model or `MMEmotionModel`): its pooling and head."""
    return [
        (r"(?:mmemotion\.)?(poolers\..+|missing_modality_embeds)", r"mmemotion.\1"),
        (r"classifier\..+", r"\g<0>"),
        (r"(?:mmemotion\.)?(?:text|video|audio)_encoder\..+", Drop("encoders: replaced by the converted originals")),
    ]


def fuse_eva_qv_biases(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EVA has q and v biases and no k bias; `Blip2Attention` has one qkv bias, zero for k (as BLIP-2's converter)."""
    for q_name in [name for name in tensors if name.endswith(".self_attn.q_bias")]:
        prefix = q_name.removesuffix("q_bias")
        if prefix + "v_bias" in tensors:  # else both names stay and are reported as unknown targets
            q_bias, v_bias = tensors.pop(q_name), tensors.pop(prefix + "v_bias")
            tensors[prefix + "qkv.bias"] = torch.cat([q_bias, torch.zeros_like(v_bias), v_bias])
    return tensors


# ---------------------------------------------------------------------------------------------------------------------
# Reading the sources
# ---------------------------------------------------------------------------------------------------------------------


def _count_tensors(entry) -> int:
    if isinstance(entry, torch.Tensor):
        return 1
    if isinstance(entry, dict):
        return sum(_count_tensors(value) for value in entry.values())
    if isinstance(entry, (list, tuple)):
        return sum(_count_tensors(value) for value in entry)
    return 0


class Checkpoint:
    """The tensors of one source, read lazily: a `.pth` file, or a safetensors file or (sharded) folder.

    `.pth` files are memory-mapped with `weights_only=True` (nothing else is unpickled); safetensors files are opened
    with `safe_open`, so a tensor is read only when `tensor(name)` asks for it. `skipped_entries` counts the tensors of
    what a training checkpoint holds beside its `model` state dict (optimizer state, scaler, ...).
    """

    def __init__(self, path: str):
        self.path = path
        self.skipped_entries: dict[str, int] = {}
        self._state: dict[str, torch.Tensor] = {}
        self._handles: dict[str, object] = {}  # key -> open safetensors file
        if os.path.isdir(path) or path.endswith(".safetensors"):
            self._open_safetensors(path)
        else:
            self._load_pth(path)

    def _load_pth(self, path: str):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if isinstance(checkpoint.get("model"), dict):  # a LAVIS training checkpoint
            self.skipped_entries = {key: _count_tensors(value) for key, value in checkpoint.items() if key != "model"}
            checkpoint = checkpoint["model"]
        not_tensors = [key for key, value in checkpoint.items() if not isinstance(value, torch.Tensor)]
        if not_tensors:
            raise ConversionError(f"{path}: entries that are not tensors: {_listing(not_tensors)}")
        self._state = checkpoint

    def _open_safetensors(self, path: str):
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.isfile(index):
            with open(index) as file:
                shards = sorted({os.path.join(path, shard) for shard in json.load(file)["weight_map"].values()})
        else:
            shards = [path] if os.path.isfile(path) else sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if not shards:
            raise ConversionError(f"{path}: no safetensors weights found (only safetensors folders are read).")
        for shard in shards:
            handle = safe_open(shard, framework="pt")
            self._handles.update(dict.fromkeys(handle.keys(), handle))

    @property
    def names(self) -> list[str]:
        return list(self._state or self._handles)

    def tensor(self, name: str) -> torch.Tensor:
        if self._state:
            return self._state[name]
        return self._handles[name].get_tensor(name)


@dataclass
class Source:
    """One original file: what it is, its reader and how its keys map."""

    label: str
    checkpoint: Checkpoint
    rules: list[Rule]
    postprocess: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None


@dataclass
class SourceReport:
    label: str
    path: str
    mapped: int = 0
    dropped: Counter = field(default_factory=Counter)
    skipped_entries: dict[str, int] = field(default_factory=dict)


@dataclass
class KeyAccounting:
    """Every problem found while mapping, so that one failure names all the keys at once."""

    unmapped: list[str] = field(default_factory=list)
    unknown_targets: list[str] = field(default_factory=list)
    shape_mismatches: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def raise_if_any(self):
        problems = [
            (self.unmapped, "source keys no rule maps or drops"),
            (self.unknown_targets, "source keys mapped to names the MMEmotion model does not have"),
            (self.shape_mismatches, "shape mismatches"),
            (self.duplicates, "MMEmotion keys given by more than one source key"),
            (self.missing, "MMEmotion keys no source provides"),
        ]
        message = [f"{len(keys)} {what}: {_listing(keys)}" for keys, what in problems if keys]
        if message:
            raise ConversionError("The conversion is incomplete.\n" + "\n".join(message))


def _listing(keys: list[str]) -> str:
    listed = "\n  ".join(keys[:MAX_LISTED_KEYS])
    more = f"\n  ... and {len(keys) - MAX_LISTED_KEYS} more" if len(keys) > MAX_LISTED_KEYS else ""
    return f"\n  {listed}{more}"


def match_rule(rules: list[Rule], name: str) -> "str | Drop | None":
    """The target key (or `Drop`) of the first rule matching the whole of `name`; `None` when no rule does."""
    for pattern, action in rules:
        match = re.fullmatch(pattern, name)
        if match:
            return action if isinstance(action, Drop) else match.expand(action)
    return None


def convert_source(
    source: Source, expected: dict[str, torch.Size], dtype: torch.dtype, converted: dict, accounting: KeyAccounting
) -> SourceReport:
    """Map one source into `converted` (MMEmotion key -> tensor); the problems go to `accounting`."""
    checkpoint = source.checkpoint
    report = SourceReport(source.label, checkpoint.path, skipped_entries=checkpoint.skipped_entries)
    renamed = {}
    for name in checkpoint.names:
        action = match_rule(source.rules, name)
        if action is None:
            accounting.unmapped.append(f"{name}  ({source.label}: {checkpoint.path})")
        elif isinstance(action, Drop):
            report.dropped[action.reason] += 1
        elif action in renamed:
            accounting.duplicates.append(f"{action} <- {renamed[action]}, {name}")
        else:
            renamed[action] = name
    # One tensor at a time, so that a dtype change holds a single source tensor beside the converted ones.
    tensors = ((target, checkpoint.tensor(name)) for target, name in renamed.items())
    if source.postprocess is not None:
        tensors = source.postprocess(dict(tensors)).items()
    for target, tensor in tensors:
        if target not in expected:
            accounting.unknown_targets.append(f"{target}  ({source.label})")
        elif tensor.shape != expected[target]:
            accounting.shape_mismatches.append(
                f"{target}: {tuple(tensor.shape)} in {source.label}, the model expects {tuple(expected[target])}"
            )
        elif target in converted:
            accounting.duplicates.append(f"{target} (again in {source.label})")
        else:
            # Same dtype: the memory-mapped tensor itself, no copy.
            converted[target] = tensor.to(dtype).contiguous()
    report.mapped = len(renamed)
    return report


# ---------------------------------------------------------------------------------------------------------------------
# Configuration and model
# ---------------------------------------------------------------------------------------------------------------------


def infer_llm_hidden_size(vl_checkpoint: Checkpoint | None, al_checkpoint: Checkpoint | None, llama_config) -> int:
    """The LLaMA width the VideoLLaMA projections were trained for (4096 for 7B, 5120 for 13B); all sources agree."""
    widths = {}
    for checkpoint, name in ((vl_checkpoint, "llama_proj.weight"), (al_checkpoint, "audio_llama_proj.weight")):
        if checkpoint is not None:
            if name not in checkpoint.names:
                raise ConversionError(f"{checkpoint.path} has no `{name}`: is it a VideoLLaMA checkpoint?")
            widths[f"{name} of {checkpoint.path}"] = checkpoint.tensor(name).shape[0]
    if llama_config is not None:
        widths["hidden_size of the LLaMA folder"] = llama_config.hidden_size
    if len(set(widths.values())) != 1:
        raise ConversionError(f"The checkpoints are for different LLaMA sizes: {widths}")
    return next(iter(widths.values()))


def build_config(base: dict, modalities: list[str], llm_hidden_size: int, llama_config) -> MMEmotionConfig:
    """The MMEmotion config: `base` (a preset or `--head_from`'s config; empty = the defaults, VideoLLaMA's sizes) with
    the modalities converted, the LLaMA width the checkpoints were trained for and the LLaMA folder's text config."""
    config_dict = {**base, "modalities": modalities}
    for modality in ("video", "audio"):
        if modality in modalities:
            branch = config_dict.get(f"{modality}_config") or {}
            config_dict[f"{modality}_config"] = {**branch, "llm_hidden_size": llm_hidden_size}
    if "text" in modalities:
        if config_dict.get("text_embedding", "input_embeddings") != "input_embeddings":
            raise ConversionError("Only `text_embedding='input_embeddings'` (VideoLLaMA's text embeddings) converts.")
        config_dict["text_config"] = llama_config.to_dict()
    return MMEmotionConfig.from_dict(config_dict)


def materialize_fresh_weights(model: nn.Module) -> list[str]:
    """Give the weights no source provided (a fresh head) real storage and the model's own initialisation."""
    fresh = []
    for name, parameter in list(model.named_parameters()):
        if parameter.is_meta:
            module_name, _, attribute = name.rpartition(".")
            value = nn.Parameter(torch.empty_like(parameter, device="cpu"), requires_grad=parameter.requires_grad)
            setattr(model.get_submodule(module_name), attribute, value)
            fresh.append(name)
        else:
            parameter._is_hf_initialized = True  # `initialize_weights` leaves converted weights alone
    model.initialize_weights()
    return fresh


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True, help="Where to write the MMEmotion folder.")
    parser.add_argument(
        "--modalities", nargs="+", choices=MODALITIES, help="Branches to convert (default: those of the base config)."
    )
    base = parser.add_mutually_exclusive_group()
    base.add_argument("--config", help="Preset to start from: an MMEmotion config JSON (e.g. presets/exp3.json).")
    base.add_argument(
        "--head_from", help="MMEmotion folder whose config, pooling and classifier head are kept (else a fresh head)."
    )
    video = parser.add_argument_group("video branch (BLIP-2 from one of the two layouts, plus VideoLLaMA's VL file)")
    video.add_argument("--blip2_model_dir", help="transformers `Salesforce/blip2-flan-t5-xxl` folder (safetensors).")
    video.add_argument("--eva_vit_checkpoint", help="LAVIS `eva_vit_g.pth` (instead of --blip2_model_dir).")
    video.add_argument(
        "--blip2_checkpoint", help="LAVIS `blip2_pretrained_flant5xxl.pth` (with --eva_vit_checkpoint)."
    )
    video.add_argument("--vl_checkpoint", help="VideoLLaMA `VL_LLaMA_2_*B_Finetuned.pth`.")
    audio = parser.add_argument_group("audio branch")
    audio.add_argument("--imagebind_checkpoint", help="ImageBind `imagebind_huge.pth`.")
    audio.add_argument("--al_checkpoint", help="VideoLLaMA `AL_LLaMA_2_*B_Finetuned.pth`.")
    parser.add_argument(
        "--llama_model_dir", help="transformers LLaMA-2 folder: text embeddings, text config and the tokenizer."
    )
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the saved weights.")
    parser.add_argument("--max_shard_size", default="2GB", help="Largest safetensors shard (bounds the saving peak).")
    parser.add_argument(
        "--verify", action="store_true", help="Reload the output and compare it with a reference run of the originals."
    )
    args = parser.parse_args(argv)
    if args.blip2_model_dir and (args.eva_vit_checkpoint or args.blip2_checkpoint):
        parser.error("give the BLIP-2 weights either as --blip2_model_dir or as the two LAVIS files, not both.")
    if bool(args.eva_vit_checkpoint) != bool(args.blip2_checkpoint):
        parser.error("the LAVIS layout needs both --eva_vit_checkpoint and --blip2_checkpoint.")
    return args


def required_sources(args: argparse.Namespace, modalities: list[str]) -> None:
    needs = {
        "video": (
            (args.blip2_model_dir or args.eva_vit_checkpoint, args.vl_checkpoint),
            "--blip2_model_dir (or --eva_vit_checkpoint + --blip2_checkpoint) and --vl_checkpoint",
        ),
        "audio": ((args.imagebind_checkpoint, args.al_checkpoint), "--imagebind_checkpoint and --al_checkpoint"),
        "text": ((args.llama_model_dir,), "--llama_model_dir"),
    }
    for modality in modalities:
        paths, flags = needs[modality]
        if not all(paths):
            raise ConversionError(
                f"Converting the {modality} branch needs {flags} (or leave it out with --modalities)."
            )


def open_sources(args: argparse.Namespace, config: MMEmotionConfig, vl: Checkpoint | None, al: Checkpoint | None):
    """The sources of the configured branches, in conversion order; each file is opened when its turn comes."""
    modalities = config.modalities
    if "video" in modalities:
        if args.blip2_model_dir:
            yield Source("BLIP-2 (transformers)", Checkpoint(args.blip2_model_dir), hf_blip2_rules())
        else:
            num_layers = config.video_config.vision_config.num_hidden_layers
            yield Source(
                "EVA ViT-g (LAVIS)", Checkpoint(args.eva_vit_checkpoint), eva_vit_rules(num_layers), fuse_eva_qv_biases
            )
            yield Source("BLIP-2 Q-Former (LAVIS)", Checkpoint(args.blip2_checkpoint), lavis_blip2_rules())
        yield Source("VideoLLaMA video (VL)", vl, video_llama_rules())
    if "audio" in modalities:
        yield Source("ImageBind", Checkpoint(args.imagebind_checkpoint), imagebind_audio_rules())
        yield Source("VideoLLaMA audio (AL)", al, audio_llama_rules())
    if "text" in modalities:
        yield Source("LLaMA", Checkpoint(args.llama_model_dir), llama_rules())
    if args.head_from:
        yield Source("MMEmotion head", Checkpoint(args.head_from), head_rules())


def convert(args: argparse.Namespace) -> None:
    """Build the MMEmotion model from the sources named in `args` and save it (with the processor) to `output_dir`."""
    dtype = DTYPES[args.dtype]
    base = args.config or args.head_from
    base_config = MMEmotionConfig.from_pretrained(base).to_dict() if base else {}
    modalities = args.modalities or base_config.get("modalities") or list(MODALITIES)
    required_sources(args, modalities)
    vl = Checkpoint(args.vl_checkpoint) if "video" in modalities else None
    al = Checkpoint(args.al_checkpoint) if "audio" in modalities else None
    llama_config = AutoConfig.from_pretrained(args.llama_model_dir) if args.llama_model_dir else None
    llm_hidden_size = infer_llm_hidden_size(vl, al, llama_config if "text" in modalities else None)
    config = build_config(base_config, modalities, llm_hidden_size, llama_config)

    # On the meta device the model costs no memory; the converted tensors are assigned in place of its parameters.
    with torch.device("meta"):
        model = MMEmotionForEmotionClassification(config).to(dtype)
    expected = {name: tensor.shape for name, tensor in model.state_dict().items()}
    converted, accounting, reports = {}, KeyAccounting(), []
    # A reader goes when the next source comes: what stays referenced is the converted tensors (memory-mapped views of
    # the `.pth` files where no dtype change was needed).
    for source in open_sources(args, config, vl, al):
        reports.append(convert_source(source, expected, dtype, converted, accounting))
    accounting.missing = sorted(
        name for name in expected if name not in converted and not (HEAD_KEYS.fullmatch(name) and not args.head_from)
    )
    accounting.raise_if_any()

    model.load_state_dict(converted, strict=False, assign=True)
    del converted
    fresh = materialize_fresh_weights(model)
    model.eval()
    model.save_pretrained(args.output_dir, max_shard_size=args.max_shard_size)
    save_processor(args.llama_model_dir, args.output_dir)
    print_summary(reports, fresh, model, args.output_dir)


def save_processor(llama_model_dir: str | None, output_dir: str) -> None:
    """The processor with LLaMA's tokenizer and VideoLLaMA's default video / audio preprocessing."""
    if llama_model_dir is None:
        print("No --llama_model_dir: no tokenizer, so no processor was saved.")
        return
    MMEmotionProcessor(tokenizer=AutoTokenizer.from_pretrained(llama_model_dir)).save_pretrained(output_dir)


def peak_memory_mib() -> float:
    """Peak resident memory of this process (Linux reports `ru_maxrss` in KiB; mapped file pages count too)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_summary(reports: list[SourceReport], fresh: list[str], model: nn.Module, output_dir: str) -> None:
    num_parameters = sum(parameter.numel() for parameter in model.parameters())
    print(f"Saved {type(model).__name__} ({num_parameters:,} parameters, {model.dtype}) to {output_dir}")
    row = "{:<28} {:>7} {:>8}  {}"
    print(row.format("source", "mapped", "dropped", "file"))
    for report in reports:
        print(row.format(report.label, report.mapped, sum(report.dropped.values()), report.path))
        for reason, count in report.dropped.items():
            print(row.format("", "", count, f"dropped: {reason}"))
        if report.skipped_entries:
            entries = ", ".join(
                f"{entry} ({count} tensors)" if count else entry for entry, count in report.skipped_entries.items()
            )
            print(row.format("", "", "", f"dropped: training-checkpoint entries beside `model`: {entries}"))
    if fresh:
        groups = sorted({re.sub(r"^(classifier|mmemotion\.poolers)\..+", r"\1.*", name) for name in fresh})
        print(f"fresh head: {len(fresh)} tensors initialised ({', '.join(groups)})")
    print(f"peak memory (ru_maxrss): {peak_memory_mib():.1f} MiB")


# ---------------------------------------------------------------------------------------------------------------------
# --verify: the converted encoders against a reference run of the original tensors
# ---------------------------------------------------------------------------------------------------------------------
# Functional re-statements of the original modules, reading the ORIGINAL key names: LAVIS' BERT Q-Former, EVA ViT-g
# and ImageBind's audio encoder (sequence-first, as ImageBind runs it). All positions are real, as in VideoLLaMA.

Getter = Callable[[str], torch.Tensor]


def _getter(checkpoint: Checkpoint, prefix: str = "") -> Getter:
    return lambda name: checkpoint.tensor(prefix + name).float()


def _affine(hidden: torch.Tensor, get: Getter, name: str, bias: bool = True) -> torch.Tensor:
    return F.linear(hidden, get(f"{name}.weight"), get(f"{name}.bias") if bias else None)


def _norm(hidden: torch.Tensor, get: Getter, name: str, eps: float) -> torch.Tensor:
    return F.layer_norm(hidden, hidden.shape[-1:], get(f"{name}.weight"), get(f"{name}.bias"), eps)


def _heads_attention(query, key, value, num_heads: int) -> torch.Tensor:
    query, key, value = (tensor.unflatten(-1, (num_heads, -1)).transpose(1, 2) for tensor in (query, key, value))
    return F.scaled_dot_product_attention(query, key, value).transpose(1, 2).flatten(2)


def reference_lavis_qformer(get: Getter, prefix: str, queries, encoder_states, config) -> torch.Tensor:
    """LAVIS `BertModel(query_embeds=queries, encoder_hidden_states=...)` (post-LN BERT layers, query path)."""
    eps, heads = config.layer_norm_eps, config.num_attention_heads

    def attention_block(name, hidden, context):
        query, key, value = (
            _affine(x, get, f"{name}.self.{n}") for x, n in ((hidden, "query"), (context, "key"), (context, "value"))
        )
        return _norm(
            _affine(_heads_attention(query, key, value, heads), get, f"{name}.output.dense") + hidden,
            get,
            f"{name}.output.LayerNorm",
            eps,
        )

    hidden = _norm(queries, get, f"{prefix}.bert.embeddings.LayerNorm", eps)
    for index in range(config.num_hidden_layers):
        layer = f"{prefix}.bert.encoder.layer.{index}"
        hidden = attention_block(f"{layer}.attention", hidden, hidden)
        if index % config.cross_attention_frequency == 0:
            hidden = attention_block(f"{layer}.crossattention", hidden, encoder_states)
        intermediate = F.gelu(_affine(hidden, get, f"{layer}.intermediate_query.dense"))
        hidden = _norm(
            _affine(intermediate, get, f"{layer}.output_query.dense") + hidden,
            get,
            f"{layer}.output_query.LayerNorm",
            eps,
        )
    return hidden


def reference_eva_vit(get: Getter, frames: torch.Tensor, config) -> torch.Tensor:
    """LAVIS EVA ViT-g `forward_features` (no final norm): pre-norm blocks, q/v biases only, eps 1e-6."""
    patches = F.conv2d(frames, get("patch_embed.proj.weight"), get("patch_embed.proj.bias"), stride=config.patch_size)
    hidden = torch.cat([get("cls_token").expand(len(frames), -1, -1), patches.flatten(2).transpose(1, 2)], dim=1)
    hidden = hidden + get("pos_embed")
    for index in range(config.num_hidden_layers):
        block = f"blocks.{index}"
        v_bias = get(f"{block}.attn.v_bias")
        qkv_bias = torch.cat([get(f"{block}.attn.q_bias"), torch.zeros_like(v_bias), v_bias])
        normed = _norm(hidden, get, f"{block}.norm1", 1e-6)
        query, key, value = F.linear(normed, get(f"{block}.attn.qkv.weight"), qkv_bias).chunk(3, dim=-1)
        hidden = hidden + _affine(
            _heads_attention(query, key, value, config.num_attention_heads), get, f"{block}.attn.proj"
        )
        mlp = F.gelu(_affine(_norm(hidden, get, f"{block}.norm2", 1e-6), get, f"{block}.mlp.fc1"))
        hidden = hidden + _affine(mlp, get, f"{block}.mlp.fc2")
    return hidden


def reference_imagebind_audio(checkpoint: Checkpoint, clips: torch.Tensor, config) -> torch.Tensor:
    """ImageBind's audio encoder + the L2 normalisation VideoLLaMA applies: (N, 1, mel, frames) -> (N, output_size)."""
    get = _getter(checkpoint)
    stem = "modality_preprocessors.audio"
    stem_weight = next(
        name for name in checkpoint.names if re.fullmatch(rf"{stem}\.rgbt_stem\.proj(?:\.\d)?\.weight", name)
    )
    patches = F.conv2d(clips, get(stem_weight), stride=config.patch_stride).flatten(2).transpose(1, 2)
    patches = _norm(patches, get, f"{stem}.rgbt_stem.norm_layer", 1e-5)
    hidden = torch.cat([get(f"{stem}.cls_token").expand(len(clips), -1, -1), patches], dim=1)
    hidden = (hidden + get(f"{stem}.pos_embedding_helper.pos_embed")).transpose(0, 1)  # sequence-first trunk
    for index in range(config.num_hidden_layers):
        block = f"modality_trunks.audio.blocks.{index}"
        normed = _norm(hidden, get, f"{block}.norm_1", config.layer_norm_eps)
        attended, _ = F.multi_head_attention_forward(
            normed, normed, normed, config.hidden_size, config.num_attention_heads,
            get(f"{block}.attn.in_proj_weight"), get(f"{block}.attn.in_proj_bias"),
            get(f"{block}.attn.bias_k"), get(f"{block}.attn.bias_v"), False, 0.0,
            get(f"{block}.attn.out_proj.weight"), get(f"{block}.attn.out_proj.bias"), training=False, need_weights=False,
        )  # fmt: skip
        hidden = hidden + attended
        mlp = F.gelu(_affine(_norm(hidden, get, f"{block}.norm_2", config.layer_norm_eps), get, f"{block}.mlp.fc1"))
        hidden = hidden + _affine(mlp, get, f"{block}.mlp.fc2")
    cls_state = _norm(hidden[0], get, "modality_heads.audio.0", config.layer_norm_eps)
    return F.normalize(_affine(cls_state, get, "modality_heads.audio.2", bias=False), dim=-1)


def reference_frame_features(args: argparse.Namespace, frames: torch.Tensor, config) -> torch.Tensor:
    """BLIP-2 per-frame features of the originals: transformers' own BLIP-2 modules on the published HF weights, or
    the functional EVA ViT-g + `ln_vision` + LAVIS Q-Former on the LAVIS files."""
    if args.blip2_model_dir:
        checkpoint = Checkpoint(args.blip2_model_dir)
        with torch.device("meta"):
            vision, qformer = Blip2VisionModel(config.vision_config), Blip2QFormerModel(config.qformer_config)
        for module, prefix in ((vision, "vision_model."), (qformer, "qformer.")):
            names = [name for name in checkpoint.names if name.startswith(prefix)]
            module.load_state_dict(
                {name[len(prefix) :]: checkpoint.tensor(name).float() for name in names}, assign=True
            )
            module.eval()
        image_embeds = vision(pixel_values=frames).last_hidden_state
        queries = checkpoint.tensor("query_tokens").float().expand(len(frames), -1, -1)
        return qformer(query_embeds=queries, encoder_hidden_states=image_embeds).last_hidden_state
    eva, blip2 = Checkpoint(args.eva_vit_checkpoint), Checkpoint(args.blip2_checkpoint)
    prefix = "visual_encoder." if "visual_encoder.cls_token" in eva.names else ""
    image_embeds = reference_eva_vit(_getter(eva, prefix), frames, config.vision_config)
    image_embeds = _norm(image_embeds, _getter(blip2), "ln_vision", 1e-5)  # LAVIS' LayerNorm default eps
    queries = blip2.tensor("query_tokens").float().expand(len(frames), -1, -1)
    return reference_lavis_qformer(_getter(blip2), "Qformer", queries, image_embeds, config.qformer_config)


def reference_video_branch(args: argparse.Namespace, frames: torch.Tensor, config) -> torch.Tensor:
    """VideoLLaMA's `encode_videoQformer_visual` on (B, T, 3, H, W) frames."""
    batch_size, num_frames = frames.shape[:2]
    get = _getter(Checkpoint(args.vl_checkpoint))
    frame_features = reference_frame_features(args, frames.flatten(0, 1), config).unflatten(
        0, (batch_size, num_frames)
    )
    frame_features = frame_features + get("video_frame_position_embedding.weight")[:num_frames, None]
    queries = get("video_query_tokens").expand(batch_size, -1, -1)
    tokens = reference_lavis_qformer(
        get, "video_Qformer", queries, frame_features.flatten(1, 2), config.video_qformer_config
    )
    return _affine(tokens, get, "llama_proj")


def reference_audio_branch(args: argparse.Namespace, audio: torch.Tensor, config) -> torch.Tensor:
    """VideoLLaMA's `encode_audioQformer` on (B, S, 1, mel, frames) clips."""
    batch_size, num_clips = audio.shape[:2]
    get = _getter(Checkpoint(args.al_checkpoint))
    clip_embeds = reference_imagebind_audio(Checkpoint(args.imagebind_checkpoint), audio.flatten(0, 1), config)
    clip_embeds = (
        clip_embeds.unflatten(0, (batch_size, num_clips)) + get("audio_position_embedding.weight")[:num_clips]
    )
    queries = get("audio_query_tokens").expand(batch_size, -1, -1)
    tokens = reference_lavis_qformer(get, "audio_Qformer", queries, clip_embeds, config.audio_qformer_config)
    return _affine(tokens, get, "audio_llama_proj")


@torch.no_grad()
def verify(args: argparse.Namespace, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    """Reload the output with `AutoModel` (remote code) in float32 and compare each converted branch with the reference
    on a random input: prints the largest absolute difference per branch and fails when one is out of tolerance."""
    model = AutoModel.from_pretrained(args.output_dir, trust_remote_code=True, dtype=torch.float32).eval()
    config, base = model.config, model.mmemotion
    generator = torch.Generator().manual_seed(0)
    results = {}
    if "video" in config.modalities:
        vision = config.video_config.vision_config
        frames = torch.randn(1, 2, 3, vision.image_size, vision.image_size, generator=generator)
        results["video"] = (base.video_encoder(frames), reference_video_branch(args, frames, config.video_config))
    if "audio" in config.modalities:
        audio_config = config.audio_config
        audio = torch.randn(1, 2, 1, audio_config.num_mel_bins, audio_config.target_length, generator=generator)
        results["audio"] = (base.audio_encoder(audio), reference_audio_branch(args, audio, audio_config))
    if "text" in config.modalities:
        input_ids = torch.randint(config.text_config.vocab_size, (1, 16), generator=generator)
        embeddings = Checkpoint(args.llama_model_dir).tensor("model.embed_tokens.weight").float()
        results["text"] = (base.text_encoder(input_ids), embeddings[input_ids])
    failed = []
    for branch, (converted, reference) in results.items():
        if not torch.allclose(converted, reference, atol=atol, rtol=rtol):
            failed.append(branch)
        difference = (converted - reference).abs().max().item()
        status = "MISMATCH" if branch in failed else "ok"
        print(f"verify {branch}: max |converted - reference| = {difference:.3g} ({status}, atol {atol}, rtol {rtol})")
    if failed:
        raise ConversionError(f"--verify: the converted {', '.join(failed)} branch(es) differ from the reference.")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    convert(args)
    if args.verify:  # on the saved folder, reloaded as a user would
        verify(args)


if __name__ == "__main__":
    try:
        main()
    except ConversionError as error:
        sys.exit(f"Conversion failed: {error}")
