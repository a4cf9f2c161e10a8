"""Renders the results of `benchmarks/run.py` (the dict written to results.json) as the markdown of results.md."""


def _number(value) -> str:
    """A figure with three significant digits or so; `-` for a missing one."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell if isinstance(cell, str) else _number(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _jobs(results: dict, case: str) -> list[dict]:
    return [job for job in results["jobs"] if job["case"] == case]


def _rows(results: dict, case: str) -> list[dict]:
    return [row for job in _jobs(results, case) for row in job["rows"]]


def _find(rows: list[dict], **match) -> dict | None:
    return next((row for row in rows if all(row.get(key) == value for key, value in match.items())), None)


def headlines(results: dict) -> list[str]:
    """The figures the README quotes: cache vs live training, data pipeline vs encoders, the speed-ups."""
    lines = []
    training = _rows(results, "training_epoch")
    for live in (row for row in training if row["mode"] == "live"):
        cached = _find(training, preset=live["preset"], device=live["device"], mode="cached")
        if cached:
            ratio = live["epoch_s"] / cached["epoch_s"]
            saved = live["epoch_s"] - cached["epoch_s"]
            lines.append(
                f"- **Feature cache** ({live['preset']} preset, {live['device']}): one training epoch takes "
                f"{_number(cached['epoch_s'])} s on cached features vs {_number(live['epoch_s'])} s with live frozen "
                f"encoders: **{ratio:,.0f}x faster** (target >= 20x). Building the cache costs "
                f"{_number(cached['cache_build_s'])} s once, paid back after {cached['cache_build_s'] / saved:.1f} epoch(s)."
            )
    video = _rows(results, "video_decoding")
    forward = [row for row in _rows(results, "encoder_forward") if row["part"] == "forward" and row["device"] == "cpu"]
    pipeline = _rows(results, "utterance_pipeline")
    flops = {row["preset"]: row["frame_encoder_gflops"] + row["audio_trunk_gflops"] for row in _rows(results, "encoder_flops")}

    def fastest(preset: str) -> dict | None:
        return max((row for row in forward if row["preset"] == preset), key=lambda row: row["utterances_per_s"], default=None)

    if pipeline and video and fastest("tiny"):
        seconds, workers = pipeline[0]["seconds"], max(row["workers"] for row in video)
        decode = _find(video, seconds=seconds, decoder="decord", mode="sampled, decoder resize", workers=workers)
        utterances = _find(pipeline, workers=workers, resize_in_decoder=True)
        tiny, mid = fastest("tiny"), fastest("mid")
        verdict = "keeps up with" if decode["clips_per_s"] >= tiny["utterances_per_s"] else "does **not** keep up with"
        line = (
            f"- **Data pipeline vs encoders** ({seconds} s clips, {workers} workers): video decoding + preprocessing runs "
            f"at {_number(decode['clips_per_s'])} clips/s and whole utterances (video, audio, text) at "
            f"{_number(utterances['utterances_per_s'])}/s; the tiny preset's forward runs at "
            f"{_number(tiny['utterances_per_s'])} utterances/s (batch {tiny['batch_size']}), so decoding {verdict} it"
        )
        if "tiny" in flops:
            line += f" (its encoders cost {flops['tiny']:.2f} GFLOP per utterance)"
        floor = _find(video, seconds=seconds, decoder="pyav", mode="decode only, every frame", workers=workers)
        if floor:
            line += (
                f"; bare H.264 decoding of every frame of these clips, with nothing else, runs at "
                f"{_number(floor['clips_per_s'])} clips/s with {workers} workers"
            )
        if mid:
            line += f"; the mid-size preset's forward runs at {_number(mid['utterances_per_s'])} utterances/s"
            if "mid" in flops:
                line += f" ({_number(flops['mid'])} GFLOP)"
        lines.append(line + ".")
    for seconds in sorted({row["seconds"] for row in video}):
        ratios = []
        for decoder in ("decord", "pyav"):
            rates = {mode: _find(video, seconds=seconds, decoder=decoder, mode=mode, workers=0)["clips_per_s"] for mode in ("all frames", "sampled, torch resize", "sampled, decoder resize")}
            ratios.append(
                f"{decoder} {rates['sampled, decoder resize'] / rates['sampled, torch resize']:.2f}x / "
                f"{rates['sampled, decoder resize'] / rates['all frames']:.1f}x"
            )
        lines.append(
            f"- {seconds} s clips, no worker: sampled frames resized by the decoder vs by torch / vs decoding every "
            f"frame: {'; '.join(ratios)}."
        )
    cache_building = _rows(results, "scaling_utterances")
    if cache_building:
        largest = max(row["utterances"] for row in cache_building)
        at_largest = [row for row in cache_building if row["utterances"] == largest]
        threads = max(row["threads"] for row in at_largest)
        by_workers = {row["workers"]: row for row in at_largest if row["threads"] == threads}
        if len(by_workers) > 1:
            serial, parallel = by_workers[0], by_workers[max(by_workers)]
            line = (
                f"- **Feature cache build** (`training.features.FeatureCache`, tiny preset, video + audio, {largest} utterances of "
                f"3 s): {_number(serial['ms_per_utterance'])} ms/utterance with the clips read in this process vs "
                f"{_number(parallel['ms_per_utterance'])} ms with {parallel['workers']} DataLoader workers "
                f"(**{serial['ms_per_utterance'] / parallel['ms_per_utterance']:.1f}x**)"
            )
            single = [row for row in at_largest if row["threads"] == 1 and row["workers"] == parallel["workers"]]
            if single and threads > 1:
                line += f"; with 1 torch thread instead of {threads} next to the workers: {_number(single[0]['ms_per_utterance'])} ms"
            lines.append(line + ".")
    for row in _rows(results, "fbank_implementations"):
        lines.append(
            f"- Filterbank of a {row['clip_seconds']:g} s clip: {_number(row['extractor_ms'])} ms vs "
            f"{_number(row['frame_loop_ms'])} ms for transformers' frame-by-frame `spectrogram` "
            f"({row['speedup']:.1f}x; largest difference {row['max_abs_difference']:.1e})."
        )
    return lines + [""] if lines else []


def _video_section(results: dict) -> list[str]:
    rows = _rows(results, "video_decoding")
    if not rows:
        return []
    workers = sorted({row["workers"] for row in rows})
    modes = list(dict.fromkeys(row["mode"] for row in rows))
    header = ["clip", "decoder"] + [f"{mode}, {count} workers" for mode in modes for count in workers]
    table = []
    for seconds in sorted({row["seconds"] for row in rows}):
        for decoder in ("decord", "pyav"):
            cells = [_find(rows, seconds=seconds, decoder=decoder, mode=mode, workers=count) for mode in modes for count in workers]
            table.append([f"{seconds} s", decoder] + [cell and cell["clips_per_s"] for cell in cells])
    lines = ["## Video: decode + preprocess (clips/s, 8 frames of 224x224 per clip)", ""] + _table(header, table)
    for row in _rows(results, "frame_difference"):
        lines.append(
            f"Decoder-side resizing vs torch bicubic ({row['decoder']}): mean difference "
            f"{row['mean_abs_levels']:.2f} levels of 255, largest {row['max_abs_levels']:.0f}."
        )
    return lines + [""]


def _audio_section(results: dict) -> list[str]:
    rows = _rows(results, "audio_extraction")
    if not rows:
        return []
    workers = sorted(int(key.split("_")[3]) for key in rows[0] if key.startswith("items_per_s_"))
    header = ["clip", "decoder", "waveform/s", "filterbank/s"] + [f"items/s, {count} workers" for count in workers]
    table = [
        [f"{row['seconds']} s", row["decoder"], row["waveform_per_s"], row["fbank_per_s"]]
        + [row[f"items_per_s_{count}_workers"] for count in workers]
        for row in rows
    ]
    return ["## Audio: waveform extraction + filterbanks (items/s, 3 clips of 2 s each)", ""] + _table(header, table)


def _pipeline_section(results: dict) -> list[str]:
    rows = _rows(results, "utterance_pipeline")
    if not rows:
        return []
    workers = sorted({row["workers"] for row in rows})
    table = [
        [f"{rows[0]['seconds']} s", "decoder" if resize else "torch"]
        + [_find(rows, resize_in_decoder=resize, workers=count)["utterances_per_s"] for count in workers]
        for resize in (False, True)
    ]
    title = "## Whole utterances: the processor (text, video, audio from the video) as a DataLoader collator (utterances/s)"
    return [title, ""] + _table(["clip", "frames resized by"] + [f"{count} workers" for count in workers], table)


def _encoder_section(results: dict) -> list[str]:
    jobs = _jobs(results, "encoder_forward")
    if not jobs:
        return []
    header = ["preset", "device", "dtype", "batch", "forward (inference_mode)", "forward (no_grad)", "text branch", "video branch", "audio branch", "peak RSS MiB", "CUDA peak MiB"]
    table = []
    for job in jobs:
        rows = job["rows"]
        largest = max(row["batch_size"] for row in rows)
        for row in (row for row in rows if row["part"] == "forward"):
            parts = {part: _find(rows, batch_size=row["batch_size"], part=part) for part in ("forward, no_grad", "text branch", "video branch", "audio branch")}
            memory = [job["peak_rss_mb"], job["cuda_peak_mb"]] if row["batch_size"] == largest else [None, None]
            table.append(
                [row["preset"], row["device"], row["dtype"], row["batch_size"], row["utterances_per_s"]]
                + [part and part["utterances_per_s"] for part in parts.values()]
                + memory
            )
    return ["## Encoders: forward pass (utterances/s)", ""] + _table(header, table)


def _flops_section(results: dict) -> list[str]:
    rows = _rows(results, "encoder_flops")
    if not rows:
        return []
    table = [
        [row["preset"], row["parameters"], row["frame_encoder_gflops"], row["audio_trunk_gflops"], row["frame_encoder_gflops"] + row["audio_trunk_gflops"]]
        for row in rows
    ]
    header = ["preset", "parameters", "frame encoder GFLOP (8 frames)", "audio trunk GFLOP (3 clips)", "total GFLOP"]
    title = "## Encoder compute per utterance (`torch.utils.flop_counter`; exp0 = VideoLLaMA's real sizes)"
    return [title, ""] + _table(header, table)


def gpu_section(results: dict) -> list[str]:
    lines = ["## GPU: real-size video branch (EVA ViT-g + Q-Formers, exp presets), bf16", ""]
    rows = _rows(results, "video_branch_flops")
    if not rows:
        return lines + [results.get("gpu") or "Not run.", ""]
    header = ["GPU", "attention", "batch", "utterances/s", "GFLOP/utterance", "TFLOP/s", "share of bf16 peak", "CUDA peak MiB"]
    table = [
        [row["device"], row["attention"], row["batch_size"], row["utterances_per_s"], row["gflops_per_utterance"], row["achieved_tflops"], "-" if row["share_of_peak"] is None else f"{row['share_of_peak']:.0%}", row["cuda_peak_mb"]]
        for row in rows
    ]
    lines += _table(header, table)
    rows = _rows(results, "device_cache_build")
    if rows:
        lines += ["## GPU: building the video + audio feature cache (`training.features.FeatureCache`, exp0's encoders, clips decoded by DataLoader workers)", ""]
        header = ["preset", "device", "dtype", "workers", "utterances", "seconds", "utterances/s", "ECF's 16,720 clips, minutes", "CUDA peak MiB"]
        table = [
            [row["preset"], row["device"], row["dtype"], row["workers"], row["utterances"], row["seconds"], row["utterances_per_s"], row["ecf_minutes"], row["cuda_peak_mb"]]
            for row in rows
        ]
        lines += _table(header, table)
    return lines


def _training_section(results: dict) -> list[str]:
    jobs = _jobs(results, "training_epoch")
    if not jobs:
        return []
    header = ["preset", "device", "mode", "utterances", "batch", "epoch s", "utterances/s", "cache build s", "trainable params", "peak RSS MiB", "CUDA peak MiB"]
    table = []
    for job in jobs:
        row = job["rows"][0]
        table.append(
            [row["preset"], row["device"], row["mode"], row["utterances"], row["batch_size"], row["epoch_s"], row["utterances_per_s"], row["cache_build_s"], row["trainable_parameters"], job["peak_rss_mb"], row["cuda_peak_mb"]]
        )
    title = "## Training: one epoch with frozen encoders (`lora`: LoRA r=8 on the text embeddings, video and audio cached)"
    return [title, ""] + _table(header, table)


def _scaling_section(results: dict) -> list[str]:
    lines = []
    rows = _rows(results, "scaling_utterances")
    if rows:
        title = (
            "## Scaling: building the tiny preset's video + audio feature cache (`training.features.FeatureCache`) vs number of "
            "utterances, DataLoader workers reading the clips, and torch threads of the process running the encoders"
        )
        table = [[row["utterances"], row["workers"], row["threads"], row["seconds"], row["ms_per_utterance"]] for row in rows]
        lines += [title, ""] + _table(["utterances", "workers", "torch threads", "seconds", "ms/utterance"], table)
    rows = _rows(results, "scaling_frames")
    if rows:
        lines += ["## Scaling: frames per clip (decord, decoder resize; tiny video branch, batch 8)", ""]
        table = [[row["frames"], row["decode_clips_per_s"], row["video_branch_utterances_per_s"]] for row in rows]
        lines += _table(["frames", "decode clips/s", "video branch utterances/s"], table)
    return lines


def _scale_section(results: dict) -> list[str]:
    lines = []
    rows = _rows(results, "sharded_cache_build")
    if rows:
        title = (
            "## Corpus scale: building the tiny preset's video + audio feature cache with N processes (torchrun, gloo, "
            "one torch thread each, each decoding its own clips; shards joined by the main process)"
        )
        header = ["processes", "utterances", "seconds", "utterances/s", "speedup vs 1 process", "load average before / after"]
        table = [
            [row["processes"], row["utterances"], row["seconds"], row["utterances_per_s"], f"{row['speedup']:.2f}x", f"{row['load_before']:.1f} / {row['load_after']:.1f}"]
            for row in rows
        ]
        lines += [title, ""] + _table(header, table)
    forward = [row for job in _jobs(results, "encoder_forward") if job["group"] == "scale" for row in job["rows"]]
    if forward:
        lines += ["## Corpus scale: encoder forward in float32 vs bfloat16 on the CPU (utterances/s, whole model cast)", ""]
        table = []
        for row in (row for row in forward if row["dtype"] == "bfloat16"):
            full = _find(forward, preset=row["preset"], batch_size=row["batch_size"], dtype="float32")
            ratio = f"{row['utterances_per_s'] / full['utterances_per_s']:.2f}x" if full else "-"
            table.append([row["preset"], row["batch_size"], full and full["utterances_per_s"], row["utterances_per_s"], ratio])
        lines += _table(["preset", "batch", "float32", "bfloat16", "bfloat16 / float32"], table)
    rows = _rows(results, "cache_sizes")
    if rows:
        lines += ["## Corpus scale: feature cache size by stored dtype (tiny: measured files; ECF at exp0 widths: computed)", ""]
        header = ["cache dtype", "modality", "tiny bytes/utterance", "tiny values/utterance", "exp0 values/utterance", "ECF (16,720 utterances) at exp0, GB"]
        table = [
            [row["cache_dtype"], row["modality"], row["tiny_bytes_per_utterance"], row["tiny_values_per_utterance"], row["exp0_values_per_utterance"], row["ecf_exp0_gb"]]
            for row in rows
        ]
        lines += _table(header, table)
    return lines


def render_markdown(results: dict) -> str:
    """The whole results.md."""
    machine = results["machine"]
    clips = ", ".join(f"{clip['seconds']} s ({clip['mbps']:.2f} Mbit/s)" for clip in results["clips"])
    first = results["clips"][0]
    versions = ", ".join(f"{package} {machine[package]}" for package in ("torch", "transformers", "numpy", "decord", "av", "peft") if machine.get(package))
    lines = [
        "# mmemotion benchmarks",
        "",
        f"Command: `{results['command']}` ({results['profile']} profile, {results['total_s'] / 60:.1f} min).",
        "",
        (
            f"Machine: {machine['cpu']}, {machine['cpu_cores']} cores, {machine['memory_gb']} GB; "
            f"GPU: {machine['gpu'] or results['gpu']}. {machine['date']}. 1-minute load average at the start / end: "
            f"{results['load_average']['start']:.1f} / {results['load_average']['end']:.1f}."
        ),
        "",
        f"Software: Python {machine['python']}, {versions} (FFmpeg {machine['ffmpeg_of_pyav']} in PyAV).",
        "",
        (
            f"Clips: generated TV-like H.264 + AAC, {first['width']}x{first['height']} at {first['fps']} fps: {clips}. "
            "Figures are medians of several runs after a warm-up run; ratios compare figures of the same run."
        ),
        "",
        "## Headlines",
        "",
    ]
    lines += headlines(results)
    for section in (_video_section, _audio_section, _pipeline_section, _encoder_section, _flops_section, gpu_section, _training_section, _scaling_section, _scale_section):
        lines += section(results)
    return "\n".join(lines).rstrip() + "\n"
