"""Service settings (SPECSEARCH_* environment), API-key files, the serve command, start-up
checks and the default-index lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.default_index import DEMO_INDEXES, ensure_default_index
from service.settings import Settings
from specsearch.errors import ConfigError


def test_settings_from_env(tmp_path, monkeypatch):
    env = {"SPECSEARCH_INDEX_DIR": str(tmp_path), "SPECSEARCH_MAX_K": "50",
           "SPECSEARCH_API_KEYS": "key-aaaaaaaa, key-bbbbbbbb",
           "SPECSEARCH_CORS_ORIGINS": "https://a.example,https://b.example",
           "SPECSEARCH_REQUEST_TIMEOUT_S": "2.5", "SPECSEARCH_ENABLE_DOCS": "false",
           "SPECSEARCH_MODEL_DIR": ""}                       # empty = unset
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = Settings.from_env()
    assert s.index_dir == tmp_path and s.max_k == 50 and s.request_timeout_s == 2.5
    assert s.api_keys == ("key-aaaaaaaa", "key-bbbbbbbb") and not s.enable_docs
    assert s.cors_origins == ("https://a.example", "https://b.example")
    assert s.model_dir is None and s.parse_workers == 2            # defaults kept
    assert Settings.from_env(max_k=7, model_dir=None).max_k == 7   # overrides win


@pytest.mark.parametrize("env, words", [
    ({}, "SPECSEARCH_INDEX_DIR"),
    ({"SPECSEARCH_INDEX_DIR": "x", "SPECSEARCH_MAX_K": "100000"}, "SPECSEARCH_MAX_K"),
    ({"SPECSEARCH_INDEX_DIR": "x", "SPECSEARCH_API_KEYS": "short"}, "at least 8"),
    ({"SPECSEARCH_INDEX_DIR": "x", "SPECSEARCH_WORKER_THREADS": "many"},
     "SPECSEARCH_WORKER_THREADS"),
])
def test_bad_settings_name_the_variable(env, words, monkeypatch):
    monkeypatch.delenv("SPECSEARCH_INDEX_DIR", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=words):
        Settings.from_env()


def test_api_keys_file(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# comment\nabcdefgh-1\n\n  abcdefgh-2  # trailing\n")
    s = Settings(index_dir=tmp_path, api_keys=("abcdefgh-0",), api_keys_file=keys)
    assert s.all_api_keys() == {"abcdefgh-0", "abcdefgh-1", "abcdefgh-2"}
    with pytest.raises(ConfigError, match="cannot read"):
        Settings(index_dir=tmp_path, api_keys_file=tmp_path / "missing").all_api_keys()
    (tmp_path / "empty").write_text("# none\n")
    with pytest.raises(ConfigError, match="holds no key"):
        Settings(index_dir=tmp_path, api_keys_file=tmp_path / "empty").all_api_keys()


def test_serve_command_is_registered_with_example():
    from specsearch.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    serve = sub.choices["serve"]
    assert "Example:" in serve.epilog
    args = parser.parse_args(["serve", "idx", "--port", "9001", "--cors-origin", "https://x"])
    assert args.index_dir == "idx" and args.port == 9001 and args.cors_origin == ["https://x"]


def test_default_index_prefers_the_demo(tmp_path):
    demo = tmp_path / "demo-output" / "index"
    demo.mkdir(parents=True)
    (demo / "manifest.json").write_text("{}")
    assert ensure_default_index(tmp_path / "indexes", demo_indexes=(
        tmp_path / "missing", demo)) == demo
    assert DEMO_INDEXES[0] == Path("demo-output") / "index"  # `specsearch demo`'s default


def test_bad_index_or_model_refuses_to_start(tmp_path, service_index):
    """What ``lifespan`` opens: a missing index or another model stops the start."""
    from service.metrics import ServiceMetrics
    from service.state import open_state
    from specsearch.errors import ModelError, SearchIndexError

    with pytest.raises(SearchIndexError, match="no index manifest"):
        open_state(Settings(index_dir=tmp_path), ServiceMetrics.create())
    index = service_index.index
    import torch

    from specsearch.model.checkpoint import save_model_dir
    from specsearch.model.config import model_config
    from specsearch.model.network import SpecCLIPNet

    torch.manual_seed(123)
    cfg = model_config("small").with_data(label_names=("teff",), class_names=())
    save_model_dir(tmp_path / "other", SpecCLIPNet(cfg), cfg)
    with pytest.raises(ModelError, match="not the one this index was built from"):
        open_state(Settings(index_dir=index, model_dir=tmp_path / "other"),
                   ServiceMetrics.create())
