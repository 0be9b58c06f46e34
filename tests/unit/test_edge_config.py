"""Edge node flags: names, environment variables, precedence and clear errors."""

from __future__ import annotations

import pytest

from edge_node.config import EdgeConfig, parse_config


def test_flags_env_and_defaults():
    cfg = parse_config(["--model-repository", "/m", "--max-batch-size", "16"],
                       {"SPLITINFER_EDGE_MAX_BATCH_SIZE": "4", "SPLITINFER_EDGE_WORKERS": "3",
                        "SPLITINFER_EDGE_PROFILE_TAILS": "false"})
    assert cfg.model_repository == "/m"
    assert cfg.max_batch_size == 16  # the flag wins over the variable
    assert cfg.workers == 3 and cfg.profile_tails is False
    assert cfg.max_queue == EdgeConfig.__dataclass_fields__["max_queue"].default


def test_fleet_flags_reach_the_server_options():
    from splitinfer import transport

    cfg = parse_config(["--model-repository", "m", "--health-port", "50052"],
                       {"SPLITINFER_EDGE_MAX_CONNECTION_AGE_S": "60",
                        "SPLITINFER_EDGE_MAX_CONNECTION_AGE_GRACE_S": "5"})
    assert (cfg.health_port, cfg.max_connection_age_s, cfg.max_connection_age_grace_s) == \
        (50052, 60.0, 5.0)
    options = dict(transport.server_options(
        max_connection_age_s=cfg.max_connection_age_s,
        max_connection_age_grace_s=cfg.max_connection_age_grace_s))
    assert options["grpc.max_connection_age_ms"] == 60_000
    assert options["grpc.max_connection_age_grace_ms"] == 5_000
    assert options["grpc.keepalive_time_ms"] == 60_000  # the default --keepalive-time-s
    # the server accepts the SDK's own keepalive pings (every 30 s): fewer would be refused
    # with GOAWAY too_many_pings
    client = dict(transport._options(None, 1 << 20, True))
    assert client["grpc.keepalive_time_ms"] >= \
        options["grpc.http2.min_ping_interval_without_data_ms"]
    assert "grpc.max_connection_age_ms" not in dict(transport.server_options())  # 0 = never


def test_repository_from_environment():
    cfg = parse_config([], {"SPLITINFER_EDGE_MODEL_REPOSITORY": "/models",
                            "SPLITINFER_EDGE_LISTEN": "127.0.0.1:0"})
    assert (cfg.model_repository, cfg.listen) == ("/models", "127.0.0.1:0")


@pytest.mark.parametrize("argv, env, message", [
    ([], {}, "--model-repository (or SPLITINFER_EDGE_MODEL_REPOSITORY) is required"),
    (["--model-repository", "m", "--max-batch-size", "0"], {}, "--max-batch-size must be >= 1"),
    (["--model-repository", "m", "--device", "tpu"], {}, "--device must be cpu or cuda"),
    (["--model-repository", "m", "--listen", "nowhere"], {}, "--listen must be HOST:PORT"),
    (["--model-repository", "m", "--tls-cert", "c.pem"], {}, "--tls-cert and --tls-key go"),
    (["--model-repository", "m", "--tls-client-ca", "ca.pem"], {},
     "--tls-client-ca (mutual TLS) needs"),
    (["--model-repository", "m"], {"SPLITINFER_EDGE_MAX_QUEUE": "lots"},
     "SPLITINFER_EDGE_MAX_QUEUE='lots'"),
    (["--model-repository", "m", "--metrics-port", "70000"], {}, "--metrics-port must be"),
    (["--model-repository", "m", "--health-port", "-1"], {}, "--health-port must be 0..65535"),
    (["--model-repository", "m", "--max-connection-age-s", "-5"], {},
     "--max-connection-age-s must be >= 0"),
    (["--model-repository", "m"], {"SPLITINFER_EDGE_KEEPALIVE_TIME_S": "0"},
     "--keepalive-time-s must be > 0"),
    (["--model-repository", "m"], {"SPLITINFER_EDGE_MAX_CONNECTION_AGE_S": "soon"},
     "SPLITINFER_EDGE_MAX_CONNECTION_AGE_S='soon'"),
])
def test_bad_configuration_exits_2_naming_the_problem(capsys, argv, env, message):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(argv, env)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_torch_threads_default_to_the_cores_shared_out_among_the_workers(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert EdgeConfig("/m", workers=2).threads_per_worker() == 4
    assert EdgeConfig("/m", workers=3).threads_per_worker() == 2
    assert EdgeConfig("/m", workers=16).threads_per_worker() == 1  # never 0
    assert EdgeConfig("/m", workers=2, torch_threads=3).threads_per_worker() == 3  # given wins


def test_batching_never_waits_by_default():
    assert parse_config(["--model-repository", "/m"], {}).max_queue_delay_ms == 0.0
