"""The framing of RTP/RTCP over HTTP (presence.sip.mediaframe)."""

import pytest

from presence.sip.mediaframe import (
    KEEPALIVE, MAX_PACKET, FrameDecoder, MediaFrameError, decode_all, encode,
)

RTP = bytes([0x80, 0x00, 0x00, 0x01]) + b"\x00" * 8 + b"audio" * 30
RTCP = bytes([0x81, 0xC8, 0x00, 0x06]) + b"\x01" * 24


def test_round_trip_of_rtp_and_rtcp():
    body = encode(RTP) + KEEPALIVE + encode(RTCP, rtcp=True) + encode(b"x" * MAX_PACKET)
    assert decode_all(body) == [(RTP, False), (RTCP, True), (b"x" * MAX_PACKET, False)]
    assert encode(RTP)[:3] == len(RTP).to_bytes(2, "big") + b"\x00"
    assert encode(RTCP, True)[2] == 1


def test_a_stream_cut_anywhere_gives_the_same_packets():
    body = encode(RTP) + KEEPALIVE + encode(RTCP, rtcp=True) + encode(RTP)
    for size in (1, 2, 3, 5, 64, len(body)):
        decoder = FrameDecoder()
        got = []
        for at in range(0, len(body), size):
            got += decoder.feed(body[at:at + size])
        assert got == [(RTP, False), (RTCP, True), (RTP, False)], size
        assert decoder.pending == 0 and decoder.keepalives == 1


def test_oversized_and_empty_packets_are_not_framed():
    with pytest.raises(MediaFrameError, match="over the 1500 bytes"):
        encode(b"x" * (MAX_PACKET + 1))
    with pytest.raises(MediaFrameError, match="empty packet"):
        encode(b"")


@pytest.mark.parametrize("body, why", [
    (encode(RTP)[:-1], "truncated: 162 bytes announced, 161 present"),
    (encode(RTP) + b"\x00", "truncated frame header at byte 165"),
    ((MAX_PACKET + 1).to_bytes(2, "big") + b"\x00" + b"x" * (MAX_PACKET + 1),
     "1501 bytes is over the 1500"),
    (b"\x00\x04\x02abcd", "reserved flag bits set \\(0x02\\)"),
    (b"\x00\x00\x01", "empty frame with flags set"),
])
def test_broken_bodies_are_refused_whole_with_the_reason(body, why):
    with pytest.raises(MediaFrameError, match=why):
        decode_all(body)


def test_the_stream_decoder_refuses_a_bad_header_and_holds_one_frame_at_most():
    decoder = FrameDecoder()
    assert decoder.feed(encode(RTP)[:100]) == []
    assert decoder.pending == 100
    with pytest.raises(MediaFrameError, match="over the 1500"):
        FrameDecoder().feed(b"\xff\xff\x00")
    with pytest.raises(MediaFrameError, match="reserved"):
        FrameDecoder().feed(b"\x00\x01\x80")


def test_binary_frames_cost_5_percent_and_base64_events_would_cost_43():
    """The figures of docs/calls.md ("Endpoints and framing"): a 20 ms PCMU
    packet as one chunk of the held response."""
    import base64

    from twisted.web.http import toChunk
    packet = bytes([0x80, 0]) + b"\x00" * 10 + b"\xff" * 160
    assert len(packet) == 172
    binary = len(b"".join(toChunk(encode(packet))))
    event = len(b"".join(toChunk(b"data: " + base64.b64encode(packet) + b"\n\n")))
    assert (binary, event) == (181, 246)
