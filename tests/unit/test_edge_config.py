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
])
def test_bad_configuration_exits_2_naming_the_problem(capsys, argv, env, message):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(argv, env)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
