"""Figure: few-shot accuracy on real Omniglot, float vs int8 on the board runtime, per algorithm.

Trains on the shared background zips (rotations as classes) with two alphabets held out, then
scores 5-way/20-way x 1-shot/5-shot episodes drawn *within one held-out alphabet*, float Keras and
int8 through ``FewShotClassifier`` on identical episodes, with 95 % intervals; 20-way 1-shot is
also reported per alphabet. ``--holdout none`` trains the shipping model on all eight alphabets.
The bundle is written to ``OUT/omniglot-<algorithm>.edgemeta`` and its path printed last but one.

    python benchmarks/omniglot.py --algorithm protonet --minutes 15 --holdout Korean,Balinese \\
        --out /tmp/omni-protonet [--augment] [--normalize] [--episodes-eval 1000]

Last line: ``algorithm=A holdout=H w20s1_float=F w20s1_int8=I train_s=T bundle_bytes=B``
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from edgemeta.bundle import Bundle, Preprocessing, Provenance, pack_bundle
from edgemeta.data import EpisodeSampler, load_omniglot
from edgemeta.meta import (UNLIMITED_EPISODES, TrainConfig, TrainResult, preprocess_dataset,
                           save_training, train_meta)
from edgemeta.meta.plot import plot_history
from edgemeta.quantize import compare_float_int8, convert_int8, make_manifest, representative_sample

SHARED = Path(os.environ.get("EDGEMETA_OMNIGLOT_DIR",
                             Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"))
SETTINGS = ((5, 1), (5, 5), (20, 1), (20, 5))


def tta_shifts(n: int, views: str = "cross") -> tuple[tuple[int, int], ...]:
    """The board's extra views: 4 (``cross``: up/down/left/right) or 2 (``diagonal``) shifts."""
    if not n:
        return ()
    return ((n, n), (-n, -n)) if views == "diagonal" else ((n, 0), (-n, 0), (0, n), (0, -n))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algorithm", default="protonet")
    p.add_argument("--minutes", type=float, default=15.0, help="training time budget")
    p.add_argument("--holdout", default="Korean,Balinese",
                   help="comma-separated alphabets kept out of training, or 'none'")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--way", type=int, default=60)
    p.add_argument("--shot", type=int, default=5)
    p.add_argument("--query", type=int, default=5)
    p.add_argument("--meta-batch", type=int, default=1)
    p.add_argument("--inner-steps", type=int, default=5)
    p.add_argument("--inner-lr", type=float, default=0.4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--filters", type=int, default=64)
    p.add_argument("--size", type=int, default=28, help="input side in pixels (preprocessing)")
    p.add_argument("--augment", action="store_true")
    p.add_argument("--normalize", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tta-shift", type=int, default=0,
                   help="board test-time views: the image shifted by +-N px up/down/left/right")
    p.add_argument("--tta-views", choices=("cross", "diagonal"), default="cross",
                   help="cross: 4 shifted views (5 in all); diagonal: 2 (3 in all, ~0.6x the time)")
    p.add_argument("--version", default="1.0.0", help="the bundle's version")
    p.add_argument("--episodes-eval", type=int, default=1000)
    p.add_argument("--eval-only", action="store_true",
                   help="skip training: score OUT/model.keras (e.g. with another --tta-shift)")
    p.add_argument("--eval-query", type=int, default=5)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    data = load_omniglot(sorted(SHARED.glob("*.zip")), name="omniglot-background-small")
    holdout = [] if args.holdout == "none" else args.holdout.split(",")
    train, test = data.split_groups(holdout) if holdout else (data, None)
    train = train.with_rotations()
    spec = Preprocessing(size=(args.size, args.size))
    train_x = preprocess_dataset(train, spec)
    test_x = preprocess_dataset(test, spec) if test is not None else None
    config = TrainConfig(
        algorithm=args.algorithm, n_way=args.way, k_shot=args.shot, n_query=args.query,
        meta_batch=args.meta_batch, inner_steps=args.inner_steps, inner_lr=args.inner_lr,
        episodes=UNLIMITED_EPISODES, time_budget_s=args.minutes * 60, learning_rate=args.lr,
        filters=args.filters, normalize=args.normalize, augment=args.augment, seed=args.seed,
        val_every=500, val_way=20, val_shot=1, val_episodes=200,
        val_within_group=True, checkpoint_every=1000)
    if args.eval_only:
        import keras

        old = json.loads((args.out / "results.json").read_text())
        result = TrainResult(keras.models.load_model(args.out / "model.keras"), config,
                             old["history"], old["train_seconds"], old["episodes"])
    else:
        result = train_meta(train_x, train, config, test_x, test, progress=True,
                            log_path=args.out / "train_log.jsonl", checkpoint_dir=args.out)
        save_training(result, args.out)
        plot_history(result.history, args.out / "training.png",
                     title=f"{args.algorithm} on Omniglot, holdout {args.holdout}")
    int8 = convert_int8(result.model, representative_sample(train_x, 500, seed=args.seed))
    provenance = Provenance(algorithm=args.algorithm, n_way=args.way, k_shot=args.shot,
                            dataset=data.name, episodes=result.episodes_done,
                            extra={"train": asdict(config), "holdout": holdout})
    # The self-test vector is a real training image: the board checks the model with it at
    # install time, so the bundle written here is the one that ships.
    fields = dict(name=f"omniglot-{args.algorithm}", version=args.version, preprocessing=spec,
                  normalize_embeddings=args.normalize, self_test_input=train_x[0],
                  test_time_shifts=tta_shifts(args.tta_shift, args.tta_views))
    bundle = Bundle(make_manifest(int8, provenance=provenance, **fields), int8)
    rows, per_alphabet = [], {}
    if test is not None:
        for n_way, k_shot in SETTINGS:
            eps = EpisodeSampler(test, n_way, k_shot, args.eval_query, seed=100 + n_way + k_shot,
                                 within_group=True).take(args.episodes_eval)
            rep = compare_float_int8(result.model, test_x, bundle, test, eps)
            rows.append({"way": n_way, "shot": k_shot, "float": rep.float_accuracy._asdict(),
                         "int8": rep.int8_accuracy._asdict()})
            print(f"{n_way:>2}-way {k_shot}-shot  float {rep.float_accuracy}  int8 {rep.int8_accuracy}")
        for group in holdout:
            sub = test.subset_classes([c for c, g in enumerate(test.class_groups) if g == group])
            if sub.num_classes < 20:
                continue
            eps = EpisodeSampler(sub, 20, 1, args.eval_query, seed=7).take(max(100, args.episodes_eval // 4))
            rep = compare_float_int8(result.model, preprocess_dataset(sub, spec), bundle, sub, eps)
            per_alphabet[group] = {"float": rep.float_accuracy._asdict(), "int8": rep.int8_accuracy._asdict()}
            print(f"  {group:<22} 20-way 1-shot  float {rep.float_accuracy}  int8 {rep.int8_accuracy}")
    w20 = next((r for r in rows if r["way"] == 20 and r["shot"] == 1), None)
    if w20:
        provenance = replace(provenance, float_accuracy=w20["float"]["mean"],
                             int8_accuracy=w20["int8"]["mean"])
    suffix = (f"-tta{args.tta_shift}{'d' if args.tta_views == 'diagonal' else ''}"
              if args.tta_shift else "")
    path = pack_bundle(make_manifest(int8, provenance=provenance, **fields), int8,
                       args.out / f"omniglot-{args.algorithm}{suffix}.edgemeta")
    (args.out / f"results{suffix if args.eval_only else ''}.json").write_text(json.dumps({
        "config": asdict(config), "holdout": holdout, "train_seconds": result.seconds,
        "episodes": result.episodes_done, "settings": rows, "per_alphabet": per_alphabet,
        "bundle_bytes": path.stat().st_size, "history": result.history,
        "tta_shift": args.tta_shift, "tta_views": args.tta_views, "size": args.size}, indent=2))
    print(path)
    f = w20["float"]["mean"] if w20 else float("nan")
    i = w20["int8"]["mean"] if w20 else float("nan")
    print(f"algorithm={args.algorithm} holdout={'+'.join(holdout) or 'none'} w20s1_float={f:.4f} "
          f"w20s1_int8={i:.4f} train_s={result.seconds:.0f} bundle_bytes={path.stat().st_size}")


if __name__ == "__main__":
    main()
