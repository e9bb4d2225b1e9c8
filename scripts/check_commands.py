"""Checks the picochat commands a launch recipe is about to run, without running them (scripts/recipe.sh's
check_recipe calls it): each command's flags go through the parser and config classes that `picochat <command>`
itself uses, a training stage's total batch must split over the processes (train.py's gradient accumulation),
and with --need-gpus torch must see that many CUDA GPUs. So a bad setting fails in seconds, not hours in.
Prints each training stage's batch; on a problem, one line `NAME: error: ...` and exit 2.

    python scripts/check_commands.py --name speedrun.sh --processes 8 -- 'picochat train --stage base ...' ...
"""

from __future__ import annotations

import argparse
import shlex
import sys


def picochat_argv(words: list[str]) -> list[str] | None:
    """The arguments of `picochat ...` or `... -m picochat.cli ...` (torchrun, srun); None for other commands."""
    if words[0] == "picochat":
        return words[1:]
    return words[words.index("picochat.cli") + 1:] if "picochat.cli" in words else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the recipe, for the error line")
    parser.add_argument("--processes", type=int, required=True, help="training processes over all machines")
    parser.add_argument("--need-gpus", action="store_true", help="torch must see --processes CUDA GPUs")
    parser.add_argument("commands", nargs="*", help="each command as one shell-quoted line")
    args = parser.parse_args()
    try:
        from picochat import config as cfg
        from picochat.cli import command_parser
        from picochat.common import UserError
        from picochat.train import gradient_accumulation_steps, resolve_configs
    except ImportError as error:  # a dry run before scripts/setup_env.sh has made .venv
        print(f"settings not checked: {error} (scripts/setup_env.sh installs picochat)")
        return

    def raise_user_error(message: str) -> None:
        raise UserError(message)

    def fail(what: str, message: str) -> None:
        print(f"{args.name}: error: {what}: {message}", file=sys.stderr)
        raise SystemExit(2)

    if args.need_gpus:
        import torch
        if torch.version.cuda is None:
            fail("torch", f"{torch.__version__} in .venv is a CPU-only build; rm -rf .venv and run again with "
                          "PICOCHAT_TORCH set to a CUDA build (see --help)")
        if torch.cuda.device_count() < args.processes:
            fail("torch", f"{torch.__version__} (CUDA {torch.version.cuda}) sees {torch.cuda.device_count()} "
                          f"GPU(s), {args.processes} wanted; check the driver with nvidia-smi")
    for line in args.commands:
        argv = picochat_argv(shlex.split(line))
        if argv is None:
            continue
        _, parser, rest, classes = command_parser(argv)
        parser.error = raise_user_error  # the error line is this script's, naming the recipe and the stage
        training = parser.prog == "picochat train"
        what = rest[rest.index("--stage") + 1] if training else parser.prog  # train: name the stage
        try:
            given = vars(parser.parse_args(rest))
            if not training:
                for cls in classes:
                    cfg.build(cls, given)
                continue
            config = resolve_configs(what, given, None)[0]  # as `picochat train` resolves it
            accumulation = gradient_accumulation_steps(config, args.processes)
        except (UserError, ValueError) as error:
            fail(what, str(error))
        if config.total_batch_size:
            print(f"{what} batch: device_batch_size={config.device_batch_size} max_seq_len={config.max_seq_len} "
                  f"gpus={args.processes} grad_accum={accumulation} total_batch_size={config.total_batch_size}")


if __name__ == "__main__":
    main()
