"""`glmserve plan`: how many GPUs and nodes one replica needs, and why (`--explain`)."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from glmserve.common.capacity import DEFAULT_CONCURRENCY, Workload
from glmserve.common.catalogue import CATALOGUE
from glmserve.common.deployment import ModelRef, Parallelism
from glmserve.common.errors import ConfigError
from glmserve.common.gpus import GB, GPUS, get_gpu
from glmserve.common.planner import search


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    plan = subparsers.add_parser(
        "plan",
        help="GPUs and nodes one replica of a model needs (the operator's capacity planner)",
        description="Finds the smallest replica layout whose per-GPU weights + KV cache + activations + runtime "
        "fit the GPU, as the operator does for each pool of a ModelDeployment.",
    )
    plan.add_argument("--model", required=True, choices=sorted(CATALOGUE), help="catalogue name")
    plan.add_argument("--precision", choices=("bf16", "fp8"), help="weight precision (default: the entry's)")
    plan.add_argument("--gpu", required=True, choices=sorted(GPUS), help="GPU type")
    plan.add_argument("--gpus-per-node", type=int, default=8, choices=(1, 2, 4, 8), help="GPUs per node (default 8)")
    plan.add_argument("--context", type=_positive, help="tokens per sequence (default: the model's maximum)")
    plan.add_argument(
        "--concurrency",
        type=_positive,
        default=DEFAULT_CONCURRENCY,
        help=f"sequences held at full context per replica (default {DEFAULT_CONCURRENCY}, Zhipu's batch)",
    )
    plan.add_argument("--kv-precision", choices=("bf16", "fp8"), default="bf16", help="KV cache precision")
    plan.add_argument("--no-mtp", action="store_true", help="without MTP speculative decoding")
    plan.add_argument("--tensor", type=_positive, help="check this tensor-parallel size instead of searching")
    plan.add_argument("--data", type=_positive, help="data-parallel size (with --tensor; default 1)")
    plan.add_argument("--expert", type=_positive, help="expert-parallel size (with --tensor; 1 or tensor x data)")
    plan.add_argument("--explain", action="store_true", help="print the arithmetic of every layout tried")


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors())


def run(args: argparse.Namespace) -> None:
    if args.tensor is None and (args.data is not None or args.expert is not None):
        raise SystemExit("glmserve: --data and --expert need --tensor (or leave all three out to search)")
    try:
        ref = ModelRef(name=args.model, precision=args.precision, max_context=args.context)
        model = ref.resolve()
        layout = (
            Parallelism(tensor=args.tensor, data=args.data or 1, expert=args.expert or 1).layout()
            if args.tensor
            else None
        )
    except ValidationError as exc:
        raise SystemExit(f"glmserve: invalid plan: {_problems(exc)}") from None
    workload = Workload(
        model=model,
        context=model.max_context,
        concurrency=args.concurrency,
        kv_precision=args.kv_precision,
        mtp=not args.no_mtp,
    )
    try:
        result = search(workload, get_gpu(args.gpu), args.gpus_per_node, layout)
    except ConfigError as exc:
        raise SystemExit(f"glmserve: {exc.message}") from None
    if args.explain:
        print(result.explain())
    chosen = result.chosen
    if chosen is None:
        last = result.tried[-1]
        raise SystemExit(
            f"glmserve: {model.name} ({model.precision}) at {workload.context} tokens x {workload.concurrency}"
            f" sequences does not fit {last.layout.describe()} = {last.gpus} {args.gpu}"
            f" ({last.memory.total / GB:.2f} GB needed per GPU, {last.memory.usable / GB:.2f} GB usable)"
        )
    mem = chosen.memory
    print(
        f"{model.name} ({model.precision}), {workload.context} tokens x {workload.concurrency} sequences,"
        f" MTP {'on' if workload.mtp else 'off'}: {chosen.gpus} x {args.gpu} per replica"
        f" ({chosen.nodes} node(s) of {args.gpus_per_node}), {chosen.layout.describe()}\n"
        f"per GPU: weights {mem.weights / GB:.2f} + KV cache {mem.kv_cache / GB:.2f}"
        f" + activations {mem.activations / GB:.2f} + runtime {mem.runtime / GB:.2f}"
        f" = {mem.total / GB:.2f} GB of {mem.usable / GB:.2f} GB usable"
    )
