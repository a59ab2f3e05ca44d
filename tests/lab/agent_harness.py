"""The lab tests' names for the agent runner, which lives in the package because
`ebpflb lab conformance` uses it too."""
from ebpflb.lab.agent_runner import (DEFAULT_ENDPOINTS, ECHO_VIP, WEB_VIP, Endpoint,  # noqa: F401
                                     RunningAgent, ebpflb, force_cleanup, manifest,
                                     start_node_agents, wait_until)


def scrape_metrics(node_ns: str, port: int = 9402) -> dict:
    """The agent's Prometheus endpoint in a node namespace, over real HTTP (it listens on that
    namespace's loopback), parsed with prometheus-client's parser: {(name, labels): value}."""
    import socket

    from prometheus_client.parser import text_string_to_metric_families

    from ebpflb.lab import nsops

    with nsops.in_netns(node_ns):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    with sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    body = data.split(b"\r\n\r\n", 1)[1].decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}
