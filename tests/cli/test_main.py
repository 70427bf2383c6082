from pathlib import Path

import pytest

from glmserve.cli.main import parser, serve_config
from glmserve.common.catalogue import CATALOGUE, GLM_4_6_ARCH, get_model


def _cfg(argv: list[str]):
    return serve_config(parser().parse_args(["up", *argv]))


def test_flags_override_config_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("port: 9000\nreplicas: 2\n")
    cfg = _cfg(["--config", str(f), "--port", "9100"])
    assert (cfg.port, cfg.replicas) == (9100, 2)
    assert _cfg(["--max-body-mib", "64"]).max_body_mib == 64


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "70000"], "port"),
        (["--replicas", "0"], "replicas"),
        (["--stream-interval-ms", "-1"], "stream_interval_ms"),
        (["--migration-limit", "-1"], "migration_limit"),
        (["--stall-timeout-s", "-5"], "stall_timeout_s"),
        (["--max-body-mib", "0"], "max_body_mib"),
        (["--tls-certfile", "/nonexistent.pem"], "not a readable file"),
    ],
)
def test_invalid_flags_say_what_to_fix(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        _cfg(argv)
    assert message in str(exc.value)


def test_tls_needs_both_files(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(SystemExit, match="both tls_certfile and tls_keyfile"):
        _cfg(["--tls-certfile", str(cert)])


@pytest.mark.parametrize(
    ("argv", "runs"),
    [
        ([], False),  # one engine, no tenants: nothing to choose or admit
        (["--replicas", "2"], True),
        (["--tenants-file", "TENANTS"], True),  # the router admits
        (["--tenants-file", "TENANTS", "--router", "off"], False),  # the ingress admits alone
        (["--tenants-file", "TENANTS", "--router-address", "10.0.0.1:50051"], False),
    ],
)
def test_the_local_router_starts_for_a_choice_of_engines_or_tenants(
    tmp_path: Path, argv: list[str], runs: bool
) -> None:
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text("plans: []\n")
    assert _cfg([str(tenants) if a == "TENANTS" else a for a in argv]).runs_local_router is runs


def test_unknown_config_keys_are_rejected(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("prot: 9000\n")
    with pytest.raises(SystemExit, match="prot"):
        _cfg(["--config", str(f)])


def test_catalogue_holds_glm46_numbers() -> None:
    a = GLM_4_6_ARCH
    assert (a.num_layers, a.hidden_size, a.num_attention_heads, a.num_kv_heads, a.head_dim) == (92, 5120, 96, 8, 128)
    assert (a.num_routed_experts, a.num_experts_per_token, a.num_shared_experts) == (160, 8, 1)
    assert (a.moe_intermediate_size, a.intermediate_size, a.first_k_dense) == (1536, 12288, 3)
    assert a.max_position_embeddings == 202752 and a.routed_scaling_factor == 2.5
    # ~355B total, ~32B active (model card); 368 KiB of BF16 KV per token (reference sheet).
    assert 350e9 < a.total_params() < 360e9
    assert 31e9 < a.active_params() < 35e9
    assert get_model("glm-4.6").kv_bytes_per_token() == 368 * 1024
    assert get_model("glm-4.6-fp8").weight_bytes() < get_model("glm-4.6").weight_bytes()
    assert CATALOGUE["glm-4.6"].thinking_default and not CATALOGUE["glm-4.6-tiny"].thinking_default
