"""``sae1n config``: list the shipped experiment configs and print one resolved."""

from __future__ import annotations

import argparse

from sae1n.errors import ConfigError

KINDS = ("sae", "mil")


def configure_config(p: argparse.ArgumentParser) -> None:
    p.description = (
        "List experiment configs (the exp= names of train-sae and train-mil) or print one\n"
        "fully resolved (its defaults: inherited and your key=value overrides applied).\n"
        "Reads ./experiments/<kind>/exp/, ./configs/<kind>/ and the shipped configs;\n"
        "writes nothing. The config is checked as train-sae / train-mil check it (unknown\n"
        "keys, types, choices). Every key is described in docs/config_keys.md."
    )
    p.add_argument("action", choices=("show", "list"), help="show: print one config; list: the exp names")
    p.add_argument("tokens", nargs="*", metavar="exp=NAME key=value", help="with show: the experiment and overrides")
    p.add_argument("--kind", choices=KINDS, default=None, help="sae or mil (default: whichever has NAME)")


def resolve_kind(exp: str, kind: str | None) -> str:
    """The config kind holding ``exp`` (``sae`` or ``mil``)."""
    from sae1n.configs import available_experiments

    if kind:
        return kind
    found = [k for k in KINDS if exp in available_experiments(k)]
    if not found:
        known = {k: available_experiments(k) for k in KINDS}
        raise ConfigError(f"no experiment config named {exp!r}; known: {known}")
    if len(found) > 1:
        raise ConfigError(f"{exp!r} is both an sae and a mil config; pass --kind sae or --kind mil")
    return found[0]


def run_config(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from sae1n.configs import available_experiments, load_experiment, split_exp_args

    if args.action == "list":
        for kind in (args.kind,) if args.kind else KINDS:
            print(f"{kind} (sae1n train-{kind} exp=NAME):")
            for name in available_experiments(kind):
                print(f"  {name}")
        return 0
    exp, overrides = split_exp_args(args.tokens)
    if not exp:
        raise ConfigError("config show needs exp=NAME (see `sae1n config list`)")
    kind = resolve_kind(exp, args.kind)
    if kind == "sae":
        from sae1n.sae.config import load_sae_config

        cfg = load_sae_config(exp, overrides)  # checked against the typed SAERunConfig
    else:
        from sae1n.mil.config import load_mil_config

        load_mil_config(exp, overrides)  # checked against the typed MILRunConfig
        cfg = load_experiment(kind, exp, overrides)
    print(OmegaConf.to_yaml(cfg, resolve=True), end="")
    return 0
