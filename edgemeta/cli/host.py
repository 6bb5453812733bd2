"""Workstation commands: train, convert, adapt, and the demo of the whole path."""

from __future__ import annotations

from pathlib import Path

import click

from edgemeta.cli._base import cli


# ---------------------------------------------------------------- host: train, convert
@cli.command()
@click.option("--data", "source", default="synthetic", show_default=True,
              help="'synthetic[:N_CLASSES]', Omniglot-layout folder(s)/zip(s) (comma-separated), "
                   "or a <class>/*.png folder.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Run directory: model.keras, checkpoint.npz, train_log.jsonl, training.png.")
@click.option("--algorithm", type=click.Choice(["protonet", "maml", "fomaml", "reptile"]),
              default="protonet", show_default=True)
@click.option("--way", default=20, show_default=True)
@click.option("--shot", default=5, show_default=True)
@click.option("--query", default=5, show_default=True)
@click.option("--meta-batch", default=1, show_default=True, help="Tasks per optimisation step.")
@click.option("--inner-steps", default=5, show_default=True, help="MAML family and Reptile.")
@click.option("--inner-lr", type=float, default=None,
              help="MAML family and Reptile [default: 0.4; 0.1 for reptile].")
@click.option("--episodes", type=int, default=None,
              help="Optimisation steps [default: 400; no limit when --minutes is given].")
@click.option("--minutes", type=float, default=None,
              help="Time budget; the run stops when it is spent (or at --episodes, if given).")
@click.option("--filters", default=64, show_default=True, help="Conv-4 width (= embedding size).")
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--augment/--no-augment", default=False, show_default=True,
              help="Random affine and stroke-thickness augmentation.")
@click.option("--normalize/--no-normalize", default=False, show_default=True,
              help="Unit-length embeddings with a learned temperature.")
@click.option("--rotations/--no-rotations", default=False, show_default=True,
              help="Rotated training classes (x4 classes).")
@click.option("--holdout", default="", help="Comma-separated groups (alphabets) held out for "
              "validation instead of a random class split.")
@click.option("--seed", default=0, show_default=True)
@click.option("--test-fraction", default=0.3, show_default=True,
              help="Share of classes held out as unseen for validation (without --holdout).")
@click.option("--checkpoint-every", default=0, show_default=True, help="Episodes; 0: at the end.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
def train(source: str, out_dir: str, algorithm: str, way: int, shot: int, query: int,
          meta_batch: int, inner_steps: int, inner_lr: float | None, episodes: int | None,
          minutes: float | None, filters: int, lr: float, augment: bool, normalize: bool,
          rotations: bool, holdout: str, seed: int, test_fraction: float,
          checkpoint_every: int, resume: bool) -> None:
    """Meta-train a Conv-4 embedding network on N-way K-shot episodes."""
    from edgemeta.errors import ConfigError
    from edgemeta.meta import UNLIMITED_EPISODES, TrainConfig
    from edgemeta.pipeline import DataSplit, train_run

    if minutes is not None and not minutes > 0:  # 0 must not silently mean "no budget"
        raise ConfigError(f"--minutes must be a positive time budget, got {minutes}")
    if episodes is None:
        # "--minutes 15" means a 15-minute run, not 400 steps that end after three of them.
        episodes = UNLIMITED_EPISODES if minutes is not None else 400
    config = TrainConfig(algorithm=algorithm, n_way=way, k_shot=shot, n_query=query,
                         meta_batch=meta_batch, inner_steps=inner_steps, inner_lr=inner_lr,
                         episodes=episodes,
                         time_budget_s=minutes * 60 if minutes is not None else None,
                         filters=filters, learning_rate=lr, augment=augment, normalize=normalize,
                         seed=seed, checkpoint_every=checkpoint_every)
    split = DataSplit(source, test_fraction, seed,
                      holdout_groups=tuple(g for g in holdout.split(",") if g), rotations=rotations)
    result, paths = train_run(split, config, out_dir, resume=resume)
    last = result.history[-1] if result.history else {}
    val = result.extra.get("val_episode", {"way": config.val_way, "shot": config.val_shot})
    click.echo(f"trained {result.episodes_done} episodes in {result.seconds:.1f} s; "
               f"val {val['way']}-way {val['shot']}-shot "
               f"{last.get('val_acc', float('nan')):.3f}")
    click.echo(f"wrote {paths['model']} and {paths['plot']}")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True,
              help="Bundle to write, e.g. glyphs.edgemeta")
@click.option("--name", default=None, help="Model name (default: the bundle's file stem).")
@click.option("--version", "version", default="1.0.0", show_default=True)
@click.option("--eval-episodes", default=300, show_default=True)
@click.option("--prune", type=float, default=0.0, show_default=True,
              help="Zero this fraction of each kernel's smallest weights before conversion.")
@click.option("--tta-shift", type=int, default=0, show_default=True,
              help="Board test-time views: also embed each image shifted by N px up, down, left "
                   "and right and average (5 invocations per image).")
@click.option("--sign-key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Sign the bundle with this private key (from 'edgemeta keys generate').")
@click.option("--board", "boards", multiple=True,
              help="Board profile the bundle is built for (repeatable); boards configured as "
                   "another profile refuse it.")
def convert(run_dir: str, out_path: str, name: str | None, version: str, eval_episodes: int,
            prune: float, tta_shift: int, sign_key: str | None, boards: tuple[str, ...]) -> None:
    """Convert a training run to a full-integer int8 bundle and report float vs int8 accuracy."""
    from edgemeta.errors import ConfigError
    from edgemeta.pipeline import bundle_run, load_run

    if tta_shift < 0:
        raise ConfigError(f"--tta-shift must be a number of pixels >= 0, got {tta_shift}")
    model, config, split, pre, _ = load_run(run_dir)
    bundle, report = bundle_run(model, config, split, pre, out_path, name=name or Path(out_path).stem,
                                version=version, eval_episodes=eval_episodes, prune=prune,
                                test_time_shifts=((tta_shift, 0), (-tta_shift, 0), (0, tta_shift),
                                                  (0, -tta_shift)) if tta_shift else (),
                                run_dir=run_dir, signing_key=sign_key, boards=boards)
    for line in report.lines():
        click.echo(line)
    click.echo(f"wrote {out_path} ({bundle.manifest.name} {bundle.manifest.version})")


@cli.command()
@click.argument("run_dir", metavar="RUN_DIR|BUNDLE", type=click.Path(exists=True))
@click.option("--support", "support_dir", type=click.Path(exists=True, file_okay=False),
              required=True, help="The site's examples: <label>/*.png, at least 2 per label.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True)
@click.option("--version", "version", required=True, help="Version of the adapted bundle.")
@click.option("--steps", default=10, show_default=True, help="SGD steps on the site's examples.")
@click.option("--lr", type=float, default=None, help="Default: the run's inner learning rate.")
@click.option("--sign-key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Sign the adapted bundle with this Ed25519 private key (PEM).")
def adapt(run_dir: str, support_dir: str, out_path: str, version: str, steps: int,
          lr: float | None, sign_key: str | None) -> None:
    """Fine-tune a (MAML-family) run on a site's few examples and re-export int8.

    Reports, on held-out examples of the site's classes, whether adaptation beats plain
    prototypes with the original model.
    """
    from edgemeta.pipeline import adapt_run

    bundle, r = adapt_run(run_dir, support_dir, out_path, version=version, steps=steps, lr=lr,
                          signing_key=sign_key)
    click.echo(f"{r.classes} classes, {r.support} examples to adapt, {r.held_out} held out:")
    click.echo(f"  prototypes, original model: {100 * r.prototype_accuracy:.1f} %")
    click.echo(f"  prototypes, adapted model : {100 * r.adapted_accuracy:.1f} %  "
               f"({'adaptation helps' if r.adaptation_helps else 'adaptation does not help: ship the original'})")
    click.echo(f"wrote {out_path} ({bundle.manifest.name} {bundle.manifest.version})")



# ---------------------------------------------------------------- demo
@cli.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="edgemeta-demo",
              show_default=True, help="Where the demo writes its artefacts.")
@click.option("--broker", "broker_kind", type=click.Choice(["auto", "mosquitto", "embedded"]),
              default="auto", show_default=True)
@click.option("--quick", is_flag=True, help="Tiny scale (for tests): fewer classes and episodes.")
def demo(out_dir: str, broker_kind: str, quick: bool) -> None:
    """The whole path on generated data: train → int8 → bundle → flash 3 boards → enroll → monitor."""
    from edgemeta.demo import DemoConfig, run_demo

    run_demo(Path(out_dir), DemoConfig.quick() if quick else DemoConfig(), broker_kind=broker_kind)
