"""Train (and cache) the adapters of LLM systems ahead of a table run, on many GPUs.

    accelerate launch --num_processes 8 -m molorec.train \\
        --protocol runs/paper/protocols/ml-1m/warm/seed-0 --workdir runs/paper/cache \\
        --profile paper --seed 0 --system MoLoRec --system TALLRec
    torchrun --nproc_per_node 8 -m molorec.train ...   (the same)

Each process takes a share of every batch (data parallel, gradients all-reduced); the
main process writes the artifacts to the same content-addressed cache that `python -m
bench run` reads (its workdir is `<out>/cache`), so the table run then only loads,
selects on validation and scores. Without a launcher it runs in one process.
"""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m molorec.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", required=True, help="a protocol directory")
    ap.add_argument("--workdir", required=True, help="the table run's cache directory")
    ap.add_argument("--profile", default="paper", choices=("smoke", "cpu", "paper"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--system", action="append", default=None,
                    help="MoLoRec, MoLoRec-G, MoLoRec-S, TALLRec (repeatable; default all)")
    ap.add_argument("--backbone", metavar="MODEL",
                    help="as `bench run --backbone` (give the table run the same)")
    ap.add_argument("--set", action="append", dest="overrides", metavar="SYSTEM.PATH=VALUE",
                    help="as `bench run --set` (give the table run the same)")
    args = ap.parse_args(argv)

    from accelerate import PartialState

    from bench import registry
    from bench.runner import Variant
    from protocols.files import load_protocol

    proto = load_protocol(args.protocol)
    state = PartialState()
    names = args.system or ["MoLoRec-G", "MoLoRec-S", "MoLoRec", "TALLRec"]
    classes = {registry.canonical(n, args.profile): registry.resolve(n, args.profile)
               for n in names}
    # the configs the table run computes, so the artifacts are the ones it looks for
    configs, _ = Variant(args.backbone, None, tuple(args.overrides or ())).configs(
        classes, args.profile)
    for name, cls in classes.items():
        if not hasattr(cls, "train_artifacts"):
            raise SystemExit(f"{name} is not a molorec system")
        system = cls(configs[name], args.seed, args.workdir)
        system.train_artifacts(proto.data)
        if state.is_main_process:
            print(json.dumps({"system": name, "artifacts": system.describe().get("adapters", {})},
                             indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
