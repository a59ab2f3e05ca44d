"""`ebpflb agent` source selection: exactly one of --manifests and --kubernetes; NODE_NAME from the
environment (the downward API). Nothing is started: the checks run before any kernel work."""
from click.testing import CliRunner

from ebpflb.cli import agent, main


def test_exactly_one_source():
    runner = CliRunner()
    r = runner.invoke(main, ["agent"])
    assert r.exit_code == 2 and "exactly one of --manifests and --kubernetes" in r.output
    r = runner.invoke(main, ["agent", "--kubernetes", "--manifests", "."])
    assert r.exit_code == 2 and "exactly one of" in r.output


def test_kubeconfig_needs_kubernetes(tmp_path):
    (tmp_path / "kc").write_text("{}")
    r = CliRunner().invoke(main, ["agent", "--manifests", str(tmp_path), "--kubeconfig",
                                  str(tmp_path / "kc")])
    assert r.exit_code == 2 and "--kubeconfig goes with --kubernetes" in r.output


def test_node_name_defaults_from_the_downward_api_env():
    ctx = agent.make_context("agent", ["--kubernetes"], obj=None)
    assert ctx.params["node_name"] is None
    import os
    os.environ["NODE_NAME"] = "worker-7"
    try:
        ctx = agent.make_context("agent", ["--kubernetes"])
        assert ctx.params["node_name"] == "worker-7"
        assert ctx.params["health_address"] == "127.0.0.1:9403"
    finally:
        del os.environ["NODE_NAME"]
