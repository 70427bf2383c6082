"""`glmserve` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from glmserve.cli import plan
from glmserve.common.catalogue import CATALOGUE, TINY_MODEL
from glmserve.common.config import ServeConfig
from glmserve.common.errors import GlmserveError, validation_problems
from glmserve.router import cli as router_cli


def _progress(message: str) -> None:
    print(f"glmserve: {message}", file=sys.stderr, flush=True)


def _add_up(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser(
        "up",
        help="run the platform locally (Ray + vLLM engines + OpenAI ingress)",
        description="Starts local Ray, the vLLM engine replicas and the OpenAI-compatible ingress, "
        "prints the base URL and serves until Ctrl-C or SIGTERM; then requests in flight finish (at most "
        "drain_timeout_s, default 600 s) before it stops.",
    )
    up.add_argument("--config", type=Path, help="YAML file with any of the settings below (flags win)")
    up.add_argument("--model", help=f"catalogue name or checkpoint directory (default {TINY_MODEL}, built locally)")
    up.add_argument("--served-model-name", help="the name clients send as 'model'")
    up.add_argument("--host", help="listen address (default 127.0.0.1)")
    up.add_argument("--port", type=int, help="listen port (default 8000)")
    up.add_argument("--tls-certfile", type=Path, help="serve HTTPS with this certificate (needs --tls-keyfile)")
    up.add_argument("--tls-keyfile", type=Path, help="private key of --tls-certfile")
    up.add_argument(
        "--replicas",
        type=int,
        help="engine replicas (default 1; the minimum with --max-replicas; 0: scale from zero, with "
        "--autoscaling-policy glmserve and the local router)",
    )
    up.add_argument("--max-replicas", type=int, help="autoscale the engines up to this many (colocated mode)")
    up.add_argument(
        "--downscale-delay-s",
        type=float,
        help="autoscaling: how long demand must stay low before a replica goes (colocated; default 120 with "
        "--autoscaling-policy glmserve, else Ray Serve's)",
    )
    up.add_argument("--ttft-slo-s", type=float, help="time to first token autoscaled pools defend (default 2.5)")
    up.add_argument("--itl-slo-s", type=float, help="inter-token latency autoscaled pools defend (default 0.05)")
    up.add_argument(
        "--autoscaling-policy",
        choices=["serve", "glmserve"],
        help="autoscaled pools: Ray Serve's default (ongoing requests) or glmserve's per-pool policy (default serve)",
    )
    up.add_argument("--max-model-len", type=int, help="context window (default: the model's)")
    up.add_argument("--kv-cache-gib", type=float, help="KV cache per CPU engine replica in GiB (default 1)")
    up.add_argument("--max-ongoing-requests", type=int, help="requests an engine replica runs at once (default 64)")
    up.add_argument("--max-queued-requests", type=int, help="requests waiting per replica before 503 (default 64)")
    up.add_argument(
        "--queue-ttl-s",
        type=float,
        help="the local router: a request waiting longer for an engine slot gets 503 (default 30; an autoscaled "
        "pool's queue waits for a replica's cold start)",
    )
    up.add_argument(
        "--stream-interval-ms",
        type=int,
        help="after a stream's first token, send batched tokens at most this often (default 50; 0: each at once)",
    )
    up.add_argument(
        "--migration-limit",
        type=int,
        help="times a request moves to another engine replica when its own dies or stalls (default 3; 0: never)",
    )
    up.add_argument(
        "--stall-timeout-s",
        type=float,
        help="a streamed request whose engine sends nothing this long has stalled and moves (default 60; 0: never)",
    )
    up.add_argument(
        "--disaggregated",
        action="store_true",
        default=None,
        help="separate prefill and decode pools (1 + 1 replicas unless set) with KV transfer",
    )
    up.add_argument("--kv-connector", choices=["NixlConnector", "ExampleConnector"], help="default NixlConnector")
    for pool in ("prefill", "decode"):
        up.add_argument(
            f"--{pool}-replicas",
            type=int,
            help=f"{pool} replicas (disaggregated mode, default 1; the minimum with --{pool}-max-replicas; "
            "0: scale from zero, with --autoscaling-policy glmserve and the local router)",
        )
        up.add_argument(f"--{pool}-max-replicas", type=int, help=f"autoscale the {pool} pool up to this many")
        up.add_argument(f"--{pool}-downscale-delay-s", type=float, help=f"--downscale-delay-s of the {pool} pool")
        up.add_argument(f"--{pool}-cpus", help=f"CPU cores of each {pool} engine, e.g. '0' or '0-1' (vLLM's OMP bind)")
    up.add_argument("--tenants-file", type=Path, help="plans and tenants YAML (default: open access, one tenant)")
    up.add_argument("--redis-url", help="keep rate-limit state in this Redis (redis://host:port/db)")
    up.add_argument("--limits-outage", choices=["fail-open", "fail-closed"], help="when Redis is down (default open)")
    up.add_argument(
        "--router",
        choices=["auto", "on", "off"],
        help="run the router locally (auto, the default: when there are several engines or a tenants file)",
    )
    up.add_argument(
        "--router-address",
        help="use a running router (host:port; several replicas: ipv4:host:port,host:port) instead of a local one",
    )
    up.add_argument(
        "--max-body-mib",
        type=int,
        help="largest request body the API reads, in MiB (default 16; larger: 413); other limits: docs/limits.md",
    )
    up.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one")
    up.add_argument("--num-cpus", type=int, help="logical CPUs of the local Ray node (default max(8, cores))")


def _add_model(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="the model catalogue and the locally built tiny model")
    msub = model.add_subparsers(dest="model_command", required=True)
    create = msub.add_parser(
        "create-tiny",
        help=f"write the {TINY_MODEL} checkpoint (seeded random weights + tokenizer) into DIR",
    )
    create.add_argument("dir", type=Path)
    create.add_argument("--seed", type=int, default=0, help="weights and tokenizer seed (default 0)")
    create.add_argument("--force", action="store_true", help="rebuild even if DIR already holds it")
    msub.add_parser("list", help="print the catalogue as JSON")


def _add_cluster(sub: argparse._SubParsersAction) -> None:
    cluster = sub.add_parser(
        "cluster",
        help="run a deployment as separate hosts on this machine (network namespaces, as KubeRay would)",
        description="Renders NodeGroup/ModelDeployment/Plan/Tenant objects with the operator's builders and "
        "runs every pod (Ray head, worker groups, router, Redis) as a host in its own network namespace.",
    )
    csub = cluster.add_subparsers(dest="cluster_command", required=True)
    up = csub.add_parser("up", help="start the hosts, submit serveConfigV2, print the base URL, supervise (root)")
    up.add_argument("-f", dest="files", type=Path, action="append", required=True, help="YAML file or directory")
    up.add_argument(
        "--volume",
        dest="volumes",
        action="append",
        default=[],
        metavar="CLAIM=DIR",
        help="this machine's directory behind a PersistentVolumeClaim the pods mount (read-only), like a hostPath PV",
    )
    status = csub.add_parser("status", help="every host: name, namespace, IP, role, pool, Ray node id, pids")
    status.add_argument("--json", action="store_true", help="as JSON")
    logs = csub.add_parser("logs", help="a host's log")
    logs.add_argument("host")
    run = csub.add_parser("exec", help="run a command on a host with its pod's env, like kubectl exec")
    run.add_argument("host")
    run.add_argument("exec_command", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    csub.add_parser("down", help="stop the cluster; remove every host, veth, the bridge and their processes")


def _run_cluster(args: argparse.Namespace) -> None:
    from glmserve.cluster import up

    if args.cluster_command == "up":
        up.run_up(args.files, up.parse_volumes(args.volumes), _progress)
    elif args.cluster_command == "status":
        up.status(args.json)
    elif args.cluster_command == "logs":
        up.logs(args.host)
    elif args.cluster_command == "exec":
        command = args.exec_command
        up.exec_in(args.host, command[1:] if command[:1] == ["--"] else command)
    else:
        up.run_down(_progress)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glmserve", description="Serve GLM-4.6 on Ray Serve + vLLM.")
    sub = p.add_subparsers(dest="command", required=True)
    _add_up(sub)
    _add_model(sub)
    _add_cluster(sub)
    plan.add_parser(sub)
    router_cli.add_parser(sub)
    return p


def serve_config(args: argparse.Namespace) -> ServeConfig:
    settings: dict[str, Any] = {}
    if args.config:
        try:
            loaded = yaml.safe_load(args.config.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise SystemExit(f"glmserve: cannot read --config {args.config}: {exc}") from None
        if not isinstance(loaded, dict):
            raise SystemExit(f"glmserve: --config {args.config} must hold a mapping of settings")
        settings.update(loaded)
    for field in ServeConfig.model_fields:
        value = getattr(args, field, None)
        if value is not None:
            settings[field] = value
    for pool in ("prefill", "decode"):
        for key in ("replicas", "max_replicas", "downscale_delay_s", "cpus"):
            value = getattr(args, f"{pool}_{key}", None)
            if value is not None:
                settings[pool] = {**settings.get(pool, {}), key: value}
    try:
        return ServeConfig.model_validate(settings)
    except ValidationError as exc:
        raise SystemExit(f"glmserve: invalid settings: {validation_problems(exc)}") from None


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        if args.command == "up":
            from glmserve.serving.launcher import run_until_signal

            run_until_signal(serve_config(args), _progress)
        elif args.command == "plan":
            plan.run(args)
        elif args.command == "cluster":
            _run_cluster(args)
        elif args.command == "router":
            router_cli.run(args)
        elif args.model_command == "create-tiny":
            from glmserve.serving.tiny.create import create_tiny

            create_tiny(args.dir, args.seed, force=args.force, progress=_progress)
        elif args.model_command == "list":
            print(json.dumps([spec.summary() for spec in CATALOGUE.values()], indent=2))
    except GlmserveError as exc:
        raise SystemExit(f"glmserve: {exc.message}") from None
    except FileExistsError as exc:
        raise SystemExit(f"glmserve: {exc}") from None


if __name__ == "__main__":
    main()
