"""The agent's netlink monitor (ebpflb.dataplane.attach.LinkMonitor) when events are lost."""
import pytest

pytestmark = pytest.mark.unit


def test_lost_netlink_events_ask_for_a_rescan():
    """A burst of link, route or tc events larger than the monitor socket's buffer makes the
    kernel drop some and the next read fail with ENOBUFS: the monitor reports it so the agent
    rescans every device, instead of the error ending the agent. (A fake socket: the overrun
    cannot be produced on purpose without flooding the machine's netlink.)"""
    import errno

    from ebpflb.dataplane.attach import OVERRUN, LinkMonitor

    class Overrun:
        def get(self):
            raise OSError(errno.ENOBUFS, "No buffer space available")

    class Broken:
        def get(self):
            raise OSError(errno.EBADF, "Bad file descriptor")

    monitor = LinkMonitor.__new__(LinkMonitor)
    monitor.ipr = Overrun()
    assert monitor.events() == [(OVERRUN, 0, None)]
    monitor.ipr = Broken()
    with pytest.raises(OSError):
        monitor.events()
