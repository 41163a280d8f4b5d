"""The one entry point: `python train.py` runs the demo; `python train.py experiment=dnabert6_paper ...` the paper.

Any setting can be overridden on the command line (Hydra); see docs/guide/configuration.md and configs/.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

os.environ.setdefault("DNABERT_ROOT", str(Path(__file__).resolve().parent))

from dnabert.errors import DnabertError, user_message  # noqa: E402
from dnabert.run.config import register_resolvers  # noqa: E402  (DNABERT_ROOT must be set first)

register_resolvers()


def user_error(err: BaseException) -> DnabertError | None:
    """The DnabertError behind an exception, also when OmegaConf wrapped it while resolving the config."""
    while err is not None:
        if isinstance(err, DnabertError):
            return err
        err = err.__cause__ or err.__context__
    return None


def run_reporting_user_errors(run: Callable[[DictConfig], object], cfg: DictConfig) -> None:
    """``run(cfg)``, with a user mistake (a DnabertError, a bad config value) as one line on stderr and exit 2."""
    try:
        run(cfg)
    except (DnabertError, OmegaConfBaseException, InstantiationException) as err:
        problem = user_error(err)
        if problem is None:
            raise
        print(f"dnabert: error: {user_message(problem)}", file=sys.stderr)
        sys.exit(2)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from dnabert.run.training import run

    run_reporting_user_errors(run, cfg)


def last_override(argv: list[str], keys: tuple[str, ...]) -> tuple[str, str] | None:
    """(key, value) of the last `key=value` on the command line for any of `keys` (Hydra's rule: the last wins)."""
    for arg in reversed(argv):
        key, _, value = arg.partition("=")
        if key in keys:
            return key, value
    return None


def check_output_override(argv: list[str]) -> None:
    """Hydra creates the run directory before any of our code runs; an unwritable one would end in its traceback."""
    override = last_override(argv, ("paths.output_root", "paths.output_dir"))
    if override is None:
        return
    key, value = override
    if value and "${" not in value:
        try:
            Path(value).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            print(f"dnabert: error: cannot create {key}={value} ({err.strerror}); point it at a writable folder.",
                  file=sys.stderr)
            sys.exit(2)


def validate_before_hydra(config_name: str, argv: list[str]) -> None:
    """Hydra makes the run directory before any of our code runs: the whole config is composed and checked first
    (dnabert.run.validate), so a bad setting is one line and exit 2 with no run folder left behind. Hydra's own
    options (--cfg, -m, -cp, ...) and overrides that do not compose are left to Hydra; run() checks again."""
    if any(arg.startswith("-") for arg in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from dnabert.run.validate import validate_config

    try:
        with initialize_config_dir(config_dir=str(Path(__file__).resolve().parent / "configs"), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=argv)
    except (HydraException, OmegaConfBaseException):
        return  # Hydra reports it in its own words
    try:
        validate_config(cfg)
    except DnabertError as err:
        print(f"dnabert: error: {user_message(err)}", file=sys.stderr)
        sys.exit(2)


def check_folder_names(argv: list[str]) -> None:
    """Hydra creates outputs/<experiment_name>/<run_name> before any of our code runs: a name with '/' or '..' would
    put a folder elsewhere first, so these two are checked from the command line also where validate_before_hydra
    leaves the config to Hydra (-m, -cp, ...)."""
    named = [arg for arg in argv if arg.partition("=")[0] in ("run_name", "experiment_name")]
    if not named:
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    from dnabert.run.validate import SETTINGS, check_value

    rows = {setting.key: setting for setting in SETTINGS}
    try:
        overrides = OverridesParser.create().parse_overrides(named)
    except OverrideParseException:
        return  # Hydra reports the syntax itself
    for override in overrides:
        value = override.value()
        if override.is_sweep_override() or (isinstance(value, str) and "${" in value):
            continue  # a sweep or an interpolation: run() checks what Hydra makes of it
        try:
            check_value(rows[override.key_or_group], override.key_or_group, value, OmegaConf.create())
        except DnabertError as err:
            print(f"dnabert: error: {err}", file=sys.stderr)
            sys.exit(2)


if __name__ == "__main__":
    validate_before_hydra("train", sys.argv[1:])
    check_output_override(sys.argv[1:])
    check_folder_names(sys.argv[1:])
    main()
