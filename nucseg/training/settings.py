"""The train stage's settings: the ``train:`` section of the config, checked as it is read."""

from __future__ import annotations

from dataclasses import dataclass, field

from nucseg.augment import AugmentSettings
from nucseg.model import DEVICES, PRESETS, ModelConfig
from nucseg.nets import SEMANTIC_PRESETS
from nucseg.sampling import SAMPLING


@dataclass(frozen=True)
class TrainSettings:
    """Training settings (see ``config/config.yaml`` for what each means and why the default).

    ``model`` names a preset of :data:`nucseg.model.PRESETS`; ``width``, ``blocks`` (residual
    blocks per encoder stage: the depth) and ``heads``, when given, override the preset's.
    """

    model: str = "resunet-small"
    width: int | None = None
    blocks: int | None = None
    heads: tuple[str, ...] = field(default=("body",))
    loss: str = "bce_dice"
    epochs: int = 15
    samples_per_epoch: int = 128
    batch_size: int = 8
    learning_rate: float = 1e-3
    lr_patience: int = 5
    stop_patience: int = 10
    augment: bool = True
    augment_affine: float = 0.5
    augment_distort: float = 0.25
    augment_intensity: float = 0.5
    augment_colour: float = 0.0
    augment_rescale: float = 0.0
    augment_stain: float = 0.0
    augment_grey: float = 0.0
    augment_noise: float = 0.0
    augment_blur: float = 0.0
    augment_sparse: float = 0.0
    invert_dark: bool = True
    sampling: str = "uniform"
    empty_weight: float = 0.25
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    class_weights: tuple[float, ...] | None = None
    init: str | None = None
    shares: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(self.heads))
        if self.class_weights is not None:
            object.__setattr__(self, "class_weights", tuple(float(w) for w in self.class_weights))
        if self.model not in PRESETS and self.model not in SEMANTIC_PRESETS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {sorted(set(PRESETS) | set(SEMANTIC_PRESETS))}")
        if self.samples_per_epoch < 0:
            raise ValueError(f"samples_per_epoch must be >= 0 (0: all examples), got {self.samples_per_epoch}")
        for name in ("epochs", "batch_size", "lr_patience", "stop_patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"train setting {name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.sampling not in SAMPLING:
            raise ValueError(f"train sampling must be one of {list(SAMPLING)}, got {self.sampling!r}")
        if not 0 <= self.empty_weight <= 1:
            raise ValueError(f"train empty_weight must be in [0, 1], got {self.empty_weight}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        object.__setattr__(self, "shares", dict(self.shares or {}))
        if any(not 0 < v <= 1 for v in self.shares.values()) or sum(self.shares.values()) > 1 + 1e-9:
            raise ValueError(f"train shares must be fractions in (0, 1] summing to at most 1, got {self.shares}")
        self.augment_settings()  # checks the probabilities

    def model_config(self) -> ModelConfig:
        preset = PRESETS[self.model]
        return ModelConfig(width=self.width or preset.width, blocks=self.blocks or preset.blocks, heads=self.heads)

    def augment_settings(self) -> AugmentSettings | None:
        """The augmentation settings, or ``None`` when ``augment`` is off."""
        settings = AugmentSettings(
            affine=self.augment_affine,
            distort=self.augment_distort,
            intensity=self.augment_intensity,
            colour=self.augment_colour,
            rescale=self.augment_rescale,
            stain=self.augment_stain,
            grey=self.augment_grey,
            noise=self.augment_noise,
            blur=self.augment_blur,
            sparse=self.augment_sparse,
        )
        return settings if self.augment else None
