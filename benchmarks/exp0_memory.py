"""
Peak resident memory of building the exp0 model (EVA ViT-g + BLIP-2 Q-Former, ImageBind's audio trunk, LLaMA-2-13B's
input embeddings: 1.41B parameters) from a converted folder, as train.py does it (`train.build_config` then
`training.models.load_model`, i.e. `--model_name_or_path FOLDER`), with `--encoder_dtype float32` and `bfloat16`.

    python benchmarks/exp0_memory.py --output benchmarks/results/exp0-memory.json

A folder in `convert_videollama_to_mmemotion.py`'s output layout is written first for each `--folder_dtypes` entry
(the converter's `--dtype`): the config the converter builds from `presets/exp0.json` and a LLaMA-2-13B config, the
remote code and config files of the model's own `save_pretrained`, and zero weights in 2 GB safetensors shards with
their index, written one shard at a time (loading reads bytes; their values do not matter). The converter's processor
(LLaMA's tokenizer) is left out: loading the model does not read it. Each load runs in a fresh process, whose peak RSS
(VmHWM) is reported next to that of a process that only imports the same modules. The folders are deleted at the end.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import save_file
from transformers import LlamaConfig
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.measure import machine_info  # noqa: E402
from configuration_mmemotion import MODALITIES, MMEmotionConfig  # noqa: E402
from convert_videollama_to_mmemotion import DTYPES, build_config  # noqa: E402
from modeling_mmemotion import MMEmotionForEmotionClassification  # noqa: E402


EXP0 = os.path.join(ROOT, "presets", "exp0.json")
# The LLaMA the exp presets' text branch and 5,120-wide projections come from (its config.json as the converter reads it).
LLAMA_2_13B = LlamaConfig(
    vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
    num_key_value_heads=40, max_position_embeddings=4096, rms_norm_eps=1e-5,
)
MAX_SHARD_SIZE = "2GB"  # the converter's --max_shard_size default
# What a load process runs after the imports: train.py's `--model_name_or_path` path with an `--encoder_dtype`.
LOAD_MODEL = """
model_args = train.ModelArguments(model_name_or_path=folder, encoder_dtype={encoder_dtype!r})
config = train.build_config(model_args, None)
start = time.perf_counter()
model = load_model(MMEmotionForEmotionClassification, config, model_args)
result["load_s"] = time.perf_counter() - start
result["parameters_mb"] = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters()) / 2**20
result["parameter_dtypes"] = dict(Counter(str(parameter.dtype).removeprefix("torch.") for parameter in model.parameters()))
# Weights loaded in the folder's dtype stay memory-mapped views of its shards, resident only once read: read every one,
# as the first forward pass does.
result["after_load"] = memory()
with torch.no_grad():
    for parameter in model.parameters():
        parameter.sum()
"""
MEASURE = """
import json, sys, time
from collections import Counter
sys.path.insert(0, {root!r})
import torch
import train
from modeling_mmemotion import MMEmotionForEmotionClassification
from training.models import load_model
folder = {folder!r}
def memory():
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {{name: int(status[name].split()[0]) / 1024 for name in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}}
result = {{}}
{load}
print(json.dumps({{**result, **memory()}}))
"""


def exp0_config() -> MMEmotionConfig:
    """The config the converter writes for exp0 (`--config presets/exp0.json`, 13B checkpoints, a LLaMA-2-13B folder)."""
    base = MMEmotionConfig.from_pretrained(EXP0).to_dict()
    return build_config(base, base.get("modalities") or list(MODALITIES), LLAMA_2_13B.hidden_size, LLAMA_2_13B)


def write_converted_folder(folder: str, config: MMEmotionConfig, dtype: torch.dtype) -> int:
    """Writes a folder of `config` in the converter's layout with zero weights of `dtype`; returns the weights' bytes."""
    with torch.device("meta"):
        model = MMEmotionForEmotionClassification(config).to(dtype)
    # The model's own save_pretrained writes the config (auto_map, custom pipeline, dtype) and the remote code, and no
    # weights for an empty state dict: they are written below, one shard at a time, named and indexed as it does.
    model.save_pretrained(folder, state_dict={})
    state_dict = model.state_dict()
    split = split_torch_state_dict_into_shards(
        state_dict, filename_pattern=SAFE_WEIGHTS_NAME.replace(".safetensors", "{suffix}.safetensors"), max_shard_size=MAX_SHARD_SIZE
    )
    for filename, names in split.filename_to_tensors.items():
        shard = {name: torch.zeros(state_dict[name].shape, dtype=dtype) for name in names}
        save_file(shard, os.path.join(folder, filename), metadata={"format": "pt"})
        del shard
    if split.is_sharded:
        index = {"metadata": {"total_parameters": model.num_parameters(), **split.metadata}, "weight_map": split.tensor_to_filename}
        with open(os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME), "w", encoding="utf-8") as file:
            file.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return split.metadata["total_size"]


def measure(folder: str, load: str) -> dict:
    """Runs `load` in a fresh one-thread process; its memory figures (MiB) and what `load` recorded."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    script = MEASURE.format(root=ROOT, folder=folder, load=load)
    output = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, env=environment)
    # transformers reports weights it did not find or did not use: the folder must match the model exactly.
    for status in ("MISSING", "UNEXPECTED", "MISMATCH"):
        if status in output.stderr:
            raise RuntimeError(f"Loading {folder} reported {status} weights:\n{output.stderr}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def render_markdown(results: dict) -> str:
    """The table of `results` (what `main` writes next to the JSON file)."""
    imports = results["imports only"]
    lines = [
        "# Peak RSS of building the exp0 model from a converted folder",
        "",
        f"Command: `{results['command']}` ({results['machine']}, torch {results['torch']}, transformers "
        f"{results['transformers']}, one thread; {results['date']}, 1-minute load average {results['load_average_start']:.1f} / "
        f"{results['load_average_end']:.1f} at the start / end).",
        "",
        f"A folder in the converter's layout at exp0's sizes ({results['parameters'] / 1e9:.2f}B parameters), zero weights "
        "in 2 GB safetensors shards, loaded in a fresh process by `train.build_config` + `training.models.load_model` "
        "(`train.py --model_name_or_path FOLDER --encoder_dtype ...`), then every weight read once (as the first forward "
        "pass does: weights kept in the folder's dtype are memory-mapped views of its shards, resident only once read). "
        "Peak RSS is VmHWM; the RSS at the end is split into anonymous memory and file pages (the mapped shards).",
        "",
        "| folder (converter `--dtype`) | weights GB | `--encoder_dtype` | peak RSS after the load MiB | peak RSS, every weight read MiB | RSS at the end MiB (anonymous + file) | parameters MiB | load s |",
        "|---|---|---|---|---|---|---|---|",
        f"| imports only | - | - | {imports['VmHWM']:,.0f} | - | {imports['VmRSS']:,.0f} ({imports['RssAnon']:,.0f} + {imports['RssFile']:,.0f}) | - | - |",
    ]
    for folder in results["folders"]:
        for encoder_dtype, load in folder["loads"].items():
            lines.append(
                f"| {folder['folder_dtype']} | {folder['weights_gb']:.2f} | {encoder_dtype} | {load['after_load']['VmHWM']:,.0f} | "
                f"{load['VmHWM']:,.0f} | {load['VmRSS']:,.0f} ({load['RssAnon']:,.0f} + {load['RssFile']:,.0f}) | "
                f"{load['parameters_mb']:,.0f} | {load['load_s']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--folder_dtypes", nargs="+", choices=list(DTYPES), default=["float32", "bfloat16"],
                        help="dtypes of the converted folders (the converter's --dtype, whose default is float32)")
    parser.add_argument("--encoder_dtypes", nargs="+", choices=list(DTYPES), default=["float32", "bfloat16"],
                        help="train.py --encoder_dtype values to load each folder with")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "exp0-memory.json"))
    args = parser.parse_args(argv)
    command = "python benchmarks/exp0_memory.py" + " ".join(["", *(argv if argv is not None else sys.argv[1:])])
    machine = machine_info()
    results = {"command": command, "load_average_start": os.getloadavg()[0], **{key: machine[key] for key in ("date", "torch", "transformers")}}
    results["machine"] = f"{machine['cpu']}, {machine['cpu_cores']} cores, {machine['memory_gb']} GB"
    config = exp0_config()
    with torch.device("meta"):
        results["parameters"] = MMEmotionForEmotionClassification(config).num_parameters()
    results["imports only"] = measure(ROOT, "")
    print("imports only", results["imports only"], flush=True)
    results["folders"] = []
    for folder_dtype in args.folder_dtypes:
        with tempfile.TemporaryDirectory(prefix="mmemotion-exp0-") as folder:
            weights_bytes = write_converted_folder(folder, config, DTYPES[folder_dtype])
            entry = {"folder_dtype": folder_dtype, "weights_gb": weights_bytes / 1e9, "loads": {}}
            for encoder_dtype in args.encoder_dtypes:
                entry["loads"][encoder_dtype] = measure(folder, LOAD_MODEL.format(encoder_dtype=encoder_dtype))
                print(folder_dtype, "folder, --encoder_dtype", encoder_dtype, entry["loads"][encoder_dtype], flush=True)
        results["folders"].append(entry)
    results["load_average_end"] = os.getloadavg()[0]
    with open(args.output, "w") as file:
        json.dump(results, file, indent=1)
    with open(os.path.splitext(args.output)[0] + ".md", "w") as file:
        file.write(render_markdown(results))


if __name__ == "__main__":
    main()
