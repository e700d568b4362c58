"""Stand-in for DataComp's scale_configs.py: the same scale names and training sizes."""

_CONFIGS = {
    "debug": ("ViT-B-32", 1024, 128_000),
    "small": ("ViT-B-32", 4096, 12_800_000),
    "medium": ("ViT-B-32", 4096, 128_000_000),
    "large": ("ViT-B-16", 8192, 1_280_000_000),
    "xlarge": ("ViT-L-14", 90112, 12_800_000_000),
}


def available_scales(simple_names=False):
    return list(_CONFIGS) if simple_names else sorted(_CONFIGS)


def get_scale_config(scale):
    if scale not in _CONFIGS:
        raise ValueError(f"Unknown scale: {scale}")
    model, batch, samples = _CONFIGS[scale]
    return {"model": model, "batch_size": batch, "train_num_samples": samples}
