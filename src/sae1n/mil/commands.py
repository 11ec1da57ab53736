"""CLI glue for this stage: parse arguments, call the public API, print."""

from __future__ import annotations

import argparse

from sae1n.cliutil import experiments_epilog, option

_ALLOW_MISSING_FLAGS = ("--allow_missing", "--allow-missing")


def configure_train_mil(p: argparse.ArgumentParser) -> None:
    p.epilog = experiments_epilog("mil")
    p.description = (
        "Train MIL slide classifiers over k folds: `sae1n train-mil exp=<name> key=value ...` "
        "(the paper's experiments/mil/main.py). Results go to <results_dir_base>/mil/<exp>/."
    )
    option(
        p,
        "--allow_missing",
        action="store_true",
        help="skip slides listed in a split but missing on disk or in the dataset CSV (default: error)",
    )
    option(
        p,
        "--overwrite",
        action="store_true",
        help="retrain folds whose outputs were made with other settings or inputs (default: refuse)",
    )
    option(
        p,
        "--device",
        default=None,
        help="cpu, cuda, cuda:1 ... (default: the config's `device`, auto)",
    )
    p.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        metavar="exp=NAME [key=value ...]",
        help="experiment config name and overrides, e.g. exp=camelyon16_conch_maxmil k_end=1 max_epochs=50",
    )


def run_train_mil(args) -> int:
    from sae1n.configs import available_experiments, split_exp_args
    from sae1n.errors import ConfigError
    from sae1n.mil import train_mil_experiment

    # options written after exp=... arrive in the remainder
    tokens, device, allow_missing = [], args.device, args.allow_missing
    overwrite = args.overwrite
    rest = iter(args.args)
    for tok in rest:
        if tok in _ALLOW_MISSING_FLAGS:
            allow_missing = True
        elif tok == "--overwrite":
            overwrite = True
        elif tok == "--device":
            device = next(rest, None)
        elif tok.startswith("--device="):
            device = tok.split("=", 1)[1]
        else:
            tokens.append(tok)
    exp, overrides = split_exp_args(tokens)
    if not exp:
        raise ConfigError(
            f"give the experiment as exp=<name>; known: {', '.join(available_experiments('mil'))}"
        )
    summary = train_mil_experiment(
        exp, overrides, allow_missing=allow_missing, device=device, overwrite=overwrite
    )
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0
