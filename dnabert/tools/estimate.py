"""`python -m dnabert.tools.estimate --gpus 8 --gpu h100 [--family dnabert2]`: the compute estimate of a
family's published run (dnabert.run.estimate has the arithmetic; `train.py ... estimate=true` estimates any
config)."""

from __future__ import annotations

import argparse

from dnabert.errors import command_line
from dnabert.models import DEFAULT_FAMILY, FAMILIES
from dnabert.run.estimate import GPU_PEAK_FLOPS, estimate, format_estimate


@command_line
def main(argv: list[str] | None = None) -> int:
    """The family's published run (its `paper_run`) by default; every number can be overridden."""
    published = {name: family for name, family in FAMILIES.items() if family.paper_run}
    parser = argparse.ArgumentParser(description="Compute estimate: parameters, FLOPs, tokens, memory and wall "
                                                 "time of a pretraining run, before launching.")
    parser.add_argument("--family", default=DEFAULT_FAMILY, choices=tuple(published))
    parser.add_argument("--k", type=int, default=6, help="a k-mer family's k")
    parser.add_argument("--vocab-size", type=int, default=4096, help="a BPE family's vocabulary")
    parser.add_argument("--preset", default=None, help="model preset name (the family's model.preset)")
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--global-batch", type=int, default=None)
    parser.add_argument("--micro-batch", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpu", default=None, help=f"one of: {', '.join(GPU_PEAK_FLOPS)}")
    parser.add_argument("--mfu", type=float, default=0.4)
    parser.add_argument("--length-rule", default="original", choices=("original", "fixed"))
    parser.add_argument("--tokens-per-s", type=float, default=None, help="measured whole-job throughput")
    args = parser.parse_args(argv)
    family = published[args.family]
    run = {name: value if value is not None else family.paper_run[name]
           for name, value in ((name, getattr(args, name)) for name in family.paper_run)}
    k = None if family.tokenizer == "bpe" else args.k
    model_config = family.preset(run["preset"], k, args.vocab_size)
    est = estimate(
        model_config, k, run["max_tokens"], run["global_batch"], run["max_steps"],
        run["micro_batch"], args.gpus, args.nodes, gpu_name=args.gpu, mfu=args.mfu,
        length_rule=args.length_rule, measured_tokens_per_s=args.tokens_per_s,
    )
    print(format_estimate(est))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
