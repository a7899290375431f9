"""What a checkpoint says its model is: `ModelSpec`, and `build_vlm`, the model of Figure 2
(PaLM2-VAdapter, arXiv 2402.10896) a spec describes: ViT -> adapter -> LM, the adapter being a
resampler (stage 1), the Perceiver baseline, the VAdapter (resampler + tiny LM) or an MLP.

Every checkpoint holds its spec as plain values (`to_dict`), so the model is rebuilt from the file
alone; support/checkpoints.py reads it back as a ModelSpec.
"""

from dataclasses import asdict, dataclass, fields

from palm_decoder import PaLMConfig, PaLMDecoder
from resampler import PerceiverResampler, ResamplerConfig
from vit import ViT, ViTConfig
from vlm import MLPAdapter, PerceiverAdapter, VAdapter, VisionLanguageModel


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model; every checkpoint holds it as plain values (to_dict)."""

    # the decoder: the tiny LM in stage 0/1, the frozen large LM in stage 2 (None: a ViT alone)
    lm: PaLMConfig | None
    vision: ViTConfig | None = None  # None for a text-only LM (stage0/pretrain.py lm)
    resampler: ResamplerConfig | None = None  # None for the MLP adapter
    # "none" (text-only LM) | "scene-labels" (stage-0 ViT) | "resampler" (stage 1) | "perceiver" |
    # "vadapter" | "mlp"
    adapter: str = "none"
    tiny_lm: PaLMConfig | None = None  # vadapter only
    adapter_init: str | None = None  # vadapter only: "stage1" | "lm" | "random"
    train_lm: bool = False
    train_vision: bool = False

    @property
    def num_visual_tokens(self) -> int:
        """The LM positions the visual tokens take: the resampler's latents, or one per patch
        (MLP)."""
        return self.vision.grid_size**2 if self.adapter == "mlp" else self.resampler.num_latents

    def to_dict(self) -> dict:
        """Plain values (nested dicts, None for absent parts), for torch.save / weights_only
        loading."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelSpec":
        configs = {
            "lm": PaLMConfig,
            "vision": ViTConfig,
            "resampler": ResamplerConfig,
            "tiny_lm": PaLMConfig,
        }
        names = {f.name for f in fields(cls)}
        if unknown := sorted(set(values) - names):
            raise ValueError(
                f"model spec has unknown field(s) {unknown}; expected some of {sorted(names)}"
            )
        if values.get("lm") is None and values.get("adapter") != "scene-labels":
            raise ValueError("model spec has no 'lm' (the decoder's PaLMConfig fields)")
        parts = {}
        for name, value in values.items():
            config = configs.get(name)
            parts[name] = (
                value
                if config is None or value is None
                else config_from_dict(config, value, f"spec[{name!r}]")
            )
        return cls(**parts)


def config_from_dict(config_class, values: dict, where: str):
    """A config dataclass from plain values; an unknown field is an error that names it."""
    names = {f.name for f in fields(config_class)}
    if unknown := sorted(set(values) - names):
        raise ValueError(f"{where} has unknown field(s) {unknown} for {config_class.__name__}")
    return config_class(**values)


def build_vlm(spec: ModelSpec) -> VisionLanguageModel:
    """The model a spec describes, freshly initialised (load a checkpoint's "model" into it)."""
    if spec.adapter not in VLM_ADAPTERS:
        raise ValueError(f"spec.adapter is {spec.adapter!r}; expected one of {list(VLM_ADAPTERS)}")
    if spec.adapter != "mlp" and spec.resampler is None:
        raise ValueError(
            f"spec.adapter {spec.adapter!r} needs spec.resampler (ResamplerConfig fields); it is "
            "None"
        )
    lm = PaLMDecoder(spec.lm)
    if spec.adapter == "mlp":
        adapter = MLPAdapter(spec.vision.dim, lm.config.dim)
    elif spec.adapter == "resampler":
        if spec.resampler.dim != lm.config.dim:
            raise ValueError(
                f"resampler dim {spec.resampler.dim} must equal the LM's dim {lm.config.dim}"
            )
        adapter = PerceiverResampler(spec.resampler)
    elif spec.adapter == "perceiver":
        adapter = PerceiverAdapter(PerceiverResampler(spec.resampler), lm.config.dim)
    else:
        adapter = VAdapter(
            PerceiverResampler(spec.resampler), PaLMDecoder(spec.tiny_lm), lm.config.dim
        )
    return VisionLanguageModel(
        ViT(spec.vision), adapter, lm, train_lm=spec.train_lm, train_vision=spec.train_vision
    )


# what build_vlm builds (stage 0 and 1: "resampler")
VLM_ADAPTERS = (
    "resampler",
    "perceiver",
    "vadapter",
    "mlp",
)
