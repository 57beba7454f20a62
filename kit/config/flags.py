"""The command line's flags: one per Config field, with its help, default, choices and range."""
import argparse
import shlex
import sys
import typing

from kit import pipeline
from kit.config import Config, fields_by_group

GROUP_TITLES = {
    "general": "general",
    "data": "data: dataset, filter, stored images and split",
    "train": "train: model and recipe",
    "evaluate": "soup, evaluate and predict",
    "study": "synthetic-data study",
    "platform": "Kaggle, Colab and sessions",
}


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each flag's default, unless its help already says what it is or there is none to show; the
    stage list as written."""

    def _get_help_string(self, action):
        if "(default" in (action.help or "") or action.default in ("", None, ()):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line, not argparse's usage of every flag: the flag, what is wrong, where to look."""
        self.exit(2, f"error: {message}; run.py --help lists every flag\n")


def checked(kind, check):
    """argparse type: `kind`, refused (saying the range) outside `check`."""
    ok, wanted = check

    def convert(text):
        value = kind(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text} is out of range (it must be {wanted})")
        return value
    convert.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return convert


def number_or_word(text: str) -> "int | str":
    return int(text) if text.strip().isdigit() else text


def build_parser(defaults=True):
    """The command line; without `defaults`, parsing gives only the settings the user named."""
    parser = Parser(
        prog="run.py",
        description="Chest X-ray classification study: "
                    + " -> ".join(s.name for s in pipeline.PIPELINE) + ". Every artifact goes to --work-dir.",
        formatter_class=DefaultsFormatter,
        epilog="stages (--stage all runs the first ones in order; the others run when named):\n"
               + "\n".join(f"  {s.name:<15} {s.doc}" for s in pipeline.PIPELINE + pipeline.TOOLS),
    )
    for group, fields in fields_by_group().items():
        g = parser.add_argument_group(GROUP_TITLES[group])
        for f in fields:
            flag = "--" + f.name.replace("_", "-")
            kw = dict(dest=f.name, default=f.default if defaults else argparse.SUPPRESS, help=f.metadata["help"])
            if f.type in (bool, "bool"):
                kw["action"] = argparse.BooleanOptionalAction
            elif typing.get_origin(f.type) is tuple:  # tuple[str, str]: two values; tuple[str, ...]: one or more
                args = typing.get_args(f.type)
                kw.update(type=args[0], nargs="+" if args[-1] is Ellipsis else len(args), metavar=f.name.upper())
            else:
                kw["type"] = {"int": int, "float": float, "str": str}.get(f.type, f.type)
                if kw["type"] is str and type(f.default) is int:  # a number that also takes words (--epochs auto)
                    kw["type"] = number_or_word
                if f.metadata["check"]:
                    kw["type"] = checked(kw["type"], f.metadata["check"])
                kw["choices"] = f.metadata["choices"]
                kw["metavar"] = None if f.metadata["choices"] else f.name.upper()
            g.add_argument(flag, **kw)
    return parser


def parse_config(argv=None) -> Config:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--" in argv:  # run.py --stage bundle -- ARGS: ARGS are the bundled kernel's own arguments
        cut = argv.index("--")
        argv = argv[:cut] + ["--kernel-args=" + shlex.join(argv[cut + 1:])]
    cfg = Config(**vars(build_parser().parse_args(argv)))
    cfg.given = frozenset(vars(build_parser(defaults=False).parse_args(argv)))
    return cfg
