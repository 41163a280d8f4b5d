"""What the entry points (train.py, finetune.py) share: the checks that run before Hydra makes a run directory,
and one line with exit 2 for a user mistake."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, InstantiationException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dnabert.errors import DnabertError, user_message
from dnabert.run.config import register_resolvers
from dnabert.run.validate import MOVED_SETTINGS, SETTINGS, check_value, moved_setting_message, validate_config


def prepare_entry_point(root: Path) -> None:
    """At an entry point's import, before Hydra composes anything: `root` (the folder of configs/) is what
    configs/paths resolves `paths.root_dir` from (DNABERT_ROOT), and the project's config resolvers exist."""
    os.environ.setdefault("DNABERT_ROOT", str(root))
    register_resolvers()


def check_before_hydra(config_dir: Path, config_name: str, argv: list[str]) -> None:
    """Everything an entry point checks on its command line before Hydra starts (and creates folders)."""
    refuse_moved_settings(argv)
    validate_before_hydra(config_dir, config_name, argv)
    check_output_override(argv)
    check_folder_names(argv)


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


def last_override(argv: list[str], keys: tuple[str, ...]) -> tuple[str, str] | None:
    """(key, value) of the last `key=value` on the command line for any of `keys` (Hydra's rule: the last wins)."""
    for arg in reversed(argv):
        key, _, value = arg.partition("=")
        if key in keys:
            return key, value
    return None


def refuse_moved_settings(argv: list[str]) -> None:
    """A setting given by its old name (dnabert.run.validate.MOVED_SETTINGS, e.g. `k=4`): one line naming the new
    one. Hydra would refuse `k=4` in its own words, and `+k=4` would add a key that nothing reads."""
    for arg in argv:
        key, equals, value = arg.partition("=")
        key = key.lstrip("+")
        if equals and key in MOVED_SETTINGS:
            print(f"dnabert: error: {moved_setting_message(key, value)}", file=sys.stderr)
            sys.exit(2)


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


def validate_before_hydra(config_dir: Path, config_name: str, argv: list[str]) -> None:
    """Hydra makes the run directory before any of our code runs: the whole config is composed and checked first
    (dnabert.run.validate), so a bad setting is one line and exit 2 with no run folder left behind; so is an unknown
    setting or config group option. Hydra's own options (--cfg, -m, -cp, ...) and other overrides that do not
    compose are left to Hydra; run() checks again."""
    if any(arg.startswith("-") for arg in argv):
        return
    try:
        try:
            with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
                cfg = compose(config_name=config_name, overrides=argv)
        except (HydraException, OmegaConfBaseException) as err:
            problem = composition_problem(err, config_dir, config_name)
            if problem is None:
                return  # Hydra reports it in its own words
            raise DnabertError(problem) from err
        validate_config(cfg)
    except DnabertError as err:
        print(f"dnabert: error: {user_message(err)}", file=sys.stderr)
        sys.exit(2)


def composition_problem(err: BaseException, config_dir: Path, config_name: str) -> str | None:
    """Hydra's refusal of a misspelt setting or an unknown group option, said with the fix (Hydra's own advice for
    the first, `+key=value`, adds a key that nothing reads)."""
    message = str(err)
    unknown_key = re.match(r"Could not override '([^']+)'", message)
    if unknown_key and isinstance(err.__cause__, OmegaConfBaseException) and "not in struct" in str(err.__cause__):
        return (f"{unknown_key.group(1)} is not a setting of configs/{config_name}.yaml with the chosen config "
                "groups; check its spelling (`--cfg job` prints every setting).")
    unknown_option = re.search(r"Could not find '([^'/]+)/([^']+)'", message)
    if isinstance(err, MissingConfigException) and unknown_option:
        group, option = unknown_option.groups()
        options = sorted(path.stem for path in (config_dir / group).glob("*.yaml"))
        return f"{group}={option} names no file in configs/{group}/; choose one of {', '.join(options)}."
    return None


def check_folder_names(argv: list[str]) -> None:
    """Hydra creates outputs/<experiment_name>/<run_name> before any of our code runs: a name with '/' or '..' would
    put a folder elsewhere first, so these two are checked from the command line also where validate_before_hydra
    leaves the config to Hydra (-m, -cp, ...)."""
    named = [arg for arg in argv if arg.partition("=")[0] in ("run_name", "experiment_name")]
    if not named:
        return
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
