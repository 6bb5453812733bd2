"""Host-side orchestration shared by the CLI and the demo: data source → train → int8 → bundle.

Host only (needs ``edgemeta[host]``). Each step is one call into the stage packages.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np


from edgemeta.boards import get_board
from edgemeta.bundle import Bundle, Preprocessing, Provenance, read_bundle
from edgemeta.data import (
    EpisodeSampler,
    ImageClassDataset,
    fit_episode_size,
    load_dataset_folder,
    load_image_folder,
    load_omniglot,
    make_glyph_dataset,
)
from edgemeta.errors import ConfigError, DataError
from edgemeta.meta import TrainConfig, TrainResult, preprocess_dataset, save_training, train_meta
from edgemeta.meta.plot import plot_history
from edgemeta.quantize import (
    QuantReport,
    compare_float_int8,
    convert_float,
    convert_int8,
    export_bundle,
    magnitude_prune,
    make_manifest,
    representative_sample,
)

__all__ = ["AdaptReport", "DataSplit", "adapt_run", "bundle_run", "load_run", "load_source",
           "split_source", "train_run"]


@dataclass(frozen=True)
class DataSplit:
    """Where the data came from and which classes are held out (unseen) for evaluation."""

    source: str
    test_fraction: float = 0.3
    seed: int = 0
    holdout_groups: tuple[str, ...] = ()   # if given: these groups (alphabets) are the unseen set
    rotations: bool = False                # training classes also rotated by 90/180/270 degrees

    def __post_init__(self) -> None:
        object.__setattr__(self, "holdout_groups", tuple(self.holdout_groups))
        if not self.holdout_groups and not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction (--test-fraction, the share of classes held out "
                              f"as unseen) must be in (0, 1), got {self.test_fraction!r}")


def load_source(source: str, mixed_size: tuple[int, int] | None = None) -> ImageClassDataset:
    """``synthetic[:N_CLASSES]``, an Omniglot-layout folder or zip, or a ``<class>/*.png`` folder.

    Images of different sizes are resized to ``mixed_size`` (the model's input size, to which
    the board resizes any image), if given; otherwise they are an error.
    Cached: datasets are immutable (read-only arrays), and the demo reads one source three times.
    """
    synthetic = source == "synthetic" or source.startswith("synthetic:")
    # Generated glyphs share one size: one cache entry whatever mixed_size says.
    return _load_source(source, None if synthetic or mixed_size is None else tuple(mixed_size))


@lru_cache(maxsize=2)
def _load_source(source: str, mixed_size: tuple[int, int] | None) -> ImageClassDataset:
    if source == "synthetic" or source.startswith("synthetic:"):
        count = source.split(":", 1)[1] if ":" in source else "300"
        if not count.isdigit() or int(count) < 2:
            raise DataError(f"data source {source!r}: expected 'synthetic' or 'synthetic:N' with "
                            "N >= 2 classes, e.g. 'synthetic:300'")
        return make_glyph_dataset(n_classes=int(count), seed=0)
    if "," in source:  # several Omniglot-layout zips/folders, e.g. the two background sets
        # A stray comma must not add '' (the working directory) as a source.
        paths = [Path(p.strip()) for p in source.split(",") if p.strip()]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise DataError(f"data source(s) {missing} do not exist")
        return load_omniglot(paths, mixed_size=mixed_size)
    path = Path(source)
    if not path.exists():
        raise DataError(f"data source {source!r} does not exist; expected 'synthetic[:N]', an "
                        "Omniglot-layout folder or zip, or a <class>/*.png folder")
    if path.suffix.lower() == ".zip":
        return load_omniglot(path, mixed_size=mixed_size)
    return load_dataset_folder(path, mixed_size=mixed_size)


def split_source(split: DataSplit, mixed_size: tuple[int, int] | None = None
                 ) -> tuple[ImageClassDataset, ImageClassDataset]:
    """(train classes, unseen classes), deterministic for the split's seed.

    Rotated copies are added to the training classes only: unseen classes stay as drawn.
    ``mixed_size``: see :func:`load_source`.
    """
    data = load_source(split.source, mixed_size)
    if split.holdout_groups:
        unknown = sorted(set(split.holdout_groups) - set(data.class_groups))
        if unknown:
            raise DataError(f"holdout group(s) {unknown} are not in {split.source}; "
                            f"groups there: {sorted(set(data.class_groups))}")
        train, test = data.split_groups(split.holdout_groups)
    else:
        train, test = data.split_classes(1.0 - split.test_fraction, seed=split.seed)
    return (train.with_rotations() if split.rotations else train), test


def _check_creatable_dir(path: Path) -> None:
    """Raise ConfigError unless ``path`` is, or can be created as, a writable folder."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--out {path}: {existing} is a file; expected a folder there (or a "
                          "path that can be created as one)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {path}: {existing} is not writable by this user; expected a "
                          "folder this user may write to")


def train_run(split: DataSplit, config: TrainConfig, out_dir: str | Path,
              preprocessing: Preprocessing = Preprocessing(), progress: bool = True,
              resume: bool = False, strategy: Any | None = None
              ) -> tuple[TrainResult, dict[str, Path]]:
    """Train on the split's training classes, validating on its unseen ones; save to ``out_dir``.

    ``out_dir`` also receives ``checkpoint.npz`` (``resume=True`` continues from it),
    ``train_log.jsonl`` and ``training.png``.
    """
    # Validate the data and the output folder before creating anything (train_meta creates
    # out_dir once it starts): a long run must not fail at its first log line.
    out = Path(out_dir)
    _check_creatable_dir(out)
    train, test = split_source(split, preprocessing.size)
    train_x = preprocess_dataset(train, preprocessing)
    test_x = preprocess_dataset(test, preprocessing)
    result = train_meta(train_x, train, config, val_x=test_x, val=test, progress=progress,
                        log_path=out / "train_log.jsonl", checkpoint_dir=out, resume=resume,
                        strategy=strategy)
    paths = save_training(result, out)
    paths["plot"] = plot_history(result.history, out / "training.png",
                                 title=f"{config.algorithm} {config.n_way}-way {config.k_shot}-shot")
    meta = {"split": asdict(split), "preprocessing": asdict(preprocessing),
            "dataset": train.name, "train_classes": train.num_classes,
            "test_classes": test.num_classes, "train_seconds": round(result.seconds, 2)}
    (out / "run.json").write_text(json.dumps(meta, indent=2))
    paths["run"] = out / "run.json"
    return result, paths


def load_run(run_dir: str | Path) -> tuple[Any, TrainConfig, DataSplit, Preprocessing, dict]:
    """Reload a saved run: Keras model, config, split and preprocessing."""
    from edgemeta._deps import require

    keras = require("keras", "loading a trained model")
    run = Path(run_dir)
    if not (run / "model.keras").is_file() or not (run / "run.json").is_file():
        raise DataError(f"{run} is not a training run; expected model.keras and run.json "
                        "written by 'edgemeta train'")
    try:
        meta = json.loads((run / "run.json").read_text())
        config = TrainConfig(**json.loads((run / "train_config.json").read_text()))
        pre = dict(meta["preprocessing"])
        pre["size"] = tuple(pre["size"])
        split = DataSplit(**{**meta["split"],
                             "holdout_groups": tuple(meta["split"].get("holdout_groups", ()))})
        preprocessing = Preprocessing(**pre)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{run}: run.json or train_config.json is missing or malformed "
                        f"({exc.__class__.__name__}: {exc}); re-run 'edgemeta train'") from exc
    try:
        model = keras.models.load_model(run / "model.keras")
    except Exception as exc:  # Keras raises ValueError, OSError, zip errors, ... by version
        raise DataError(f"{run / 'model.keras'} is not a readable Keras model "
                        f"({exc.__class__.__name__}: {str(exc)[:200]}); re-run 'edgemeta train'"
                        ) from exc
    return model, config, split, preprocessing, meta


def bundle_run(model: Any, config: TrainConfig, split: DataSplit, preprocessing: Preprocessing,
               out_path: str | Path, *, name: str, version: str, eval_way: int = 5,
               eval_shot: int = 1, eval_query: int = 5, eval_episodes: int = 300,
               dataset_name: str = "", prune: float = 0.0,
               test_time_shifts: tuple[tuple[int, int], ...] = (),
               run_dir: str | Path | None = None, signing_key: Any = None,
               boards: tuple[str, ...] = ()) -> tuple[Bundle, QuantReport]:
    """Convert to int8 (calibrated on training images), score float vs int8, write the bundle.

    The accuracies written into the bundle's provenance are the ones just measured on identical
    unseen-class episodes. ``signing_key`` (a PEM private key path) signs the bundle; ``boards``
    names the board profiles it is built for.
    """
    if eval_episodes < 1:
        raise ConfigError(f"eval_episodes must be >= 1, got {eval_episodes}")
    for board in boards:
        get_board(board)  # a misspelt profile would make a bundle that every board refuses
    height, width = preprocessing.size
    for dy, dx in test_time_shifts:
        if abs(dy) >= height or abs(dx) >= width:
            raise ConfigError(f"test-time shift ({dy}, {dx}) (--tta-shift) must be smaller than "
                              f"the {height}x{width} model input; it would embed a blank view")
    train, test = split_source(split, preprocessing.size)
    # Sampled before the (slow) conversion so that data too small for the report fails early.
    try:
        # Few or small unseen classes still get a report, on the largest episodes they fill.
        eval_way, eval_shot, eval_query = fit_episode_size(test, eval_way, eval_shot, eval_query)
        sampler = EpisodeSampler(test, eval_way, eval_shot, eval_query, seed=split.seed + 7)
    except DataError as exc:
        raise DataError(f"the float-vs-int8 report on the {test.num_classes} unseen classes "
                        f"needs {eval_way}-way {eval_shot}-shot episodes with {eval_query} "
                        f"queries per class: {exc}") from exc
    episodes = sampler.take(eval_episodes)
    # The pruned copy is what ships; the original is kept so the report shows what pruning cost.
    unpruned = model if prune else None
    if prune:
        model = magnitude_prune(model, prune)
    train_x = preprocess_dataset(train, preprocessing)
    int8 = convert_int8(model, representative_sample(train_x, 300, seed=split.seed))
    float_bytes = len(convert_float(model))
    provenance = Provenance(algorithm=config.algorithm, n_way=config.n_way, k_shot=config.k_shot,
                            dataset=dataset_name or train.name, episodes=config.episodes,
                            extra={"train": asdict(config), "split": asdict(split),
                                   "prune": prune,
                                   "run_dir": str(Path(run_dir).resolve()) if run_dir else None})
    # The self-test vector is a real training image: it exercises the model as the board will.
    fields = dict(name=name, version=version, preprocessing=preprocessing,
                  normalize_embeddings=config.normalize, test_time_shifts=test_time_shifts,
                  boards=tuple(boards), self_test_input=train_x[0])
    # Score the in-memory bundle through the board runtime, then write it once, with the
    # accuracies just measured: a crash never leaves a bundle without its figures.
    draft = Bundle(make_manifest(int8, provenance=provenance, **fields), int8)
    report = compare_float_int8(model, preprocess_dataset(test, preprocessing), draft, test,
                                episodes, float_bytes=float_bytes, unpruned_model=unpruned)
    provenance = replace(provenance, float_accuracy=report.float_accuracy.mean,
                         int8_accuracy=report.int8_accuracy.mean)
    path = export_bundle(int8, out_path, provenance=provenance, signing_key=signing_key, **fields)
    return read_bundle(path), report


@dataclass(frozen=True)
class AdaptReport:
    """Whether fine-tuning on a site's examples beats plain prototypes, on held-out examples."""

    classes: int
    support: int
    held_out: int
    prototype_accuracy: float
    adapted_accuracy: float

    @property
    def adaptation_helps(self) -> bool:
        return self.adapted_accuracy > self.prototype_accuracy


def run_dir_of(model: str | Path) -> Path:
    """The training run behind ``model``: a run directory itself, or the one a bundle records."""
    path = Path(model)
    if path.is_dir():
        return path
    recorded = read_bundle(path).manifest.provenance.extra.get("run_dir")
    if not recorded or not Path(recorded).is_dir():
        raise DataError(f"{path} does not record a training run that exists here "
                        f"(run_dir={recorded!r}); pass the run directory written by "
                        "'edgemeta train' instead: adaptation needs the float model")
    return Path(recorded)


def adapt_run(run_dir: str | Path, support_dir: str | Path, out_path: str | Path, *,
              version: str, steps: int = 10, lr: float | None = None,
              name: str | None = None, signing_key: Any = None) -> tuple[Bundle, AdaptReport]:
    """Fine-tune a run's backbone on a site's ``<label>/*.png`` examples and export it as int8.

    Half of each class's examples (at least one) adapt, the rest measure nearest-prototype
    accuracy before and after; the exported model is then adapted on all of them. Adapting a
    bundle keeps what the board does with it: its test-time views, board profiles and name.
    The new bundle carries its own install-time self-test vector; ``signing_key`` signs it.
    """
    from edgemeta.meta.adapt import adapt_model, prototype_vs_adapted

    source = None if Path(run_dir).is_dir() else read_bundle(run_dir).manifest
    run_dir = run_dir_of(run_dir)
    model, config, split, preprocessing, _ = load_run(run_dir)
    site = load_image_folder(support_dir, mixed_size=preprocessing.size)
    x = preprocess_dataset(site, preprocessing)
    labels = np.asarray(site.labels)
    first, rest = [], []
    for idx in site.indices_by_class():
        if len(idx) < 2:
            raise DataError(f"{support_dir}: class {site.class_names[labels[idx[0]]]!r} has "
                            f"{len(idx)} image; expected at least 2 per class (half adapt, half "
                            "measure)")
        half = max(1, len(idx) // 2)
        first.extend(idx[:half])
        rest.extend(idx[half:])
    lr = config.inner_lr if lr is None else lr
    trial = adapt_model(model, x[first], labels[first], steps=steps, lr=lr)
    acc_p, acc_a = prototype_vs_adapted(model, trial, (x[first], labels[first]),
                                        (x[rest], labels[rest]), normalize=config.normalize)
    report = AdaptReport(site.num_classes, len(first), len(rest), acc_p, acc_a)
    adapted = adapt_model(model, x, labels, steps=steps, lr=lr)
    train, _ = split_source(split, preprocessing.size)
    calibration = np.concatenate([x, representative_sample(preprocess_dataset(train, preprocessing),
                                                           300, seed=split.seed)])
    int8 = convert_int8(adapted, calibration)
    provenance = Provenance(algorithm=config.algorithm, n_way=config.n_way, k_shot=config.k_shot,
                            dataset=site.name, episodes=config.episodes,
                            extra={"adapted_from": str(run_dir), "adapt_steps": steps,
                                   "adapt_lr": lr, "site_classes": list(site.class_names),
                                   "prototype_accuracy": acc_p, "adapted_accuracy": acc_a})
    inherited = {} if source is None else {"test_time_shifts": source.test_time_shifts,
                                            "boards": source.boards}
    path = export_bundle(int8, out_path, name=name or (source.name if source else Path(out_path).stem),
                         version=version, preprocessing=preprocessing,
                         normalize_embeddings=config.normalize, provenance=provenance,
                         self_test_input=x[0], signing_key=signing_key, **inherited)
    return read_bundle(path), report
