"""The tests' port allocator (tests/free_ports.py): ports for the programs
tests start come from outside the kernel's ephemeral range and are never
handed out twice, so no port the kernel gives to port-0 binds collides."""

import socket

from free_ports import ephemeral_range, free_port, relay_range, udp_bound, udp_port


def test_ports_are_outside_the_ephemeral_range_and_never_repeat():
    low, high = ephemeral_range()
    ports = [free_port() for _ in range(50)] + [udp_port(4) for _ in range(10)]
    assert not [p for p in ports if low <= p <= high]
    spans = set(ports[:50]) | {p + i for p in ports[50:] for i in range(4)}
    assert len(spans) == 50 + 40


def test_a_relay_range_does_not_overlap_the_ports_handed_out():
    given = {free_port() for _ in range(20)}
    first, last = relay_range(100)
    assert last - first == 99 and last < ephemeral_range()[0]
    assert not given & set(range(first, last + 1))


def test_udp_bound_sees_a_bound_socket_without_binding_it():
    port = udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        assert udp_bound(port)
    assert not udp_bound(port)
