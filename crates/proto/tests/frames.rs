//! Frame round trips (prost style) and the named edge cases of the codec.

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use cloudproxy_proto::codec::FrameCodec;
use cloudproxy_proto::frame::*;
use cloudproxy_proto::udp::{UDP_HEADER_LEN, UdpHeader, UdpKind};
use cloudproxy_proto::*;
use proptest::prelude::*;
use tokio_util::codec::Encoder;

fn encode(f: &Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    f.encode(&mut buf);
    buf
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_frame_round_trips(f in common::frame()) {
        f.validate().unwrap();
        let buf = encode(&f);
        prop_assert_eq!(buf.len(), f.encoded_len());
        prop_assert_eq!(Frame::parse(&buf).unwrap(), f.clone());
        prop_assert_eq!(Frame::decode(buf.freeze()).unwrap(), f);
    }

    #[test]
    fn split_at_any_index_decodes_in_two_reads(f in common::frame(), at in any::<prop::sample::Index>()) {
        let bytes = encode(&f);
        let cut = at.index(bytes.len() + 1);
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::from(&bytes[..cut]);
        if cut < bytes.len() {
            prop_assert_eq!(codec.decode(&mut buf).unwrap(), None);
        } else {
            prop_assert_eq!(codec.decode(&mut buf).unwrap(), Some(f.clone()));
            return Ok(());
        }
        buf.extend_from_slice(&bytes[cut..]);
        prop_assert_eq!(codec.decode(&mut buf).unwrap(), Some(f));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn several_frames_in_one_buffer(frames in prop::collection::vec(common::frame(), 1..8)) {
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::new();
        for f in &frames {
            codec.encode(f, &mut buf).unwrap();
        }
        let mut out = Vec::new();
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            out.push(f);
        }
        prop_assert_eq!(out, frames);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn udp_header_round_trips(kind in 0u8..4, id in any::<u32>(), token in any::<u64>(), payload in common::payload(1400)) {
        let kind = [UdpKind::Data, UdpKind::Keepalive, UdpKind::KeepaliveAck, UdpKind::Close][kind as usize];
        let payload = if kind == UdpKind::Data { payload } else { Bytes::new() };
        let h = UdpHeader { kind, binding_id: id, binding_token: token };
        let mut buf = Vec::new();
        h.encode(&mut buf);
        prop_assert_eq!(buf.len(), h.encoded_len());
        buf.extend_from_slice(&payload);
        let (h2, p2) = UdpHeader::parse(&buf).unwrap();
        prop_assert_eq!(h2, h);
        prop_assert_eq!(p2, &payload[..]);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Frame::parse(&data);
        let _ = UdpHeader::parse(&data);
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(_)) = codec.decode(&mut buf) {}
    }
}

#[test]
fn header_alone_waits_for_the_body() {
    let f = Frame::Ping(5);
    let bytes = encode(&f);
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::from(&bytes[..HEADER_LEN]);
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
    assert_eq!(buf.len(), HEADER_LEN, "nothing consumed");
    assert!(matches!(
        Frame::parse(&bytes[..HEADER_LEN]),
        Err(CodecError::Truncated {
            field: "frame body",
            needed: 8,
            available: 0,
            ..
        })
    ));
}

#[test]
fn empty_body_frames_are_just_a_header() {
    for f in [Frame::Close, Frame::Leave] {
        let b = encode(&f);
        assert_eq!(b.len(), HEADER_LEN);
        assert_eq!(Frame::parse(&b).unwrap(), f);
    }
}

#[test]
fn maximum_size_message_is_accepted() {
    let payload = Bytes::from(vec![0xAB; MAX_PAYLOAD - 12]);
    let f = Frame::Message(Message {
        seq: 1,
        from: 2,
        payload,
    });
    f.validate().unwrap();
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    codec.encode(&f, &mut buf).unwrap();
    assert_eq!(buf.len(), HEADER_LEN + MAX_PAYLOAD);
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(f));
}

#[test]
fn one_byte_over_the_maximum_is_rejected_before_any_allocation() {
    let mut header = BytesMut::with_capacity(HEADER_LEN);
    FrameHeader {
        frame_type: FrameType::Message as u8,
        flags: 0,
        length: MAX_PAYLOAD + 1,
    }
    .encode(&mut header);
    assert_eq!(header.len(), HEADER_LEN);
    let cap_before = header.capacity();
    let mut codec = FrameCodec::new();
    let err = codec.decode(&mut header).unwrap_err();
    assert!(
        matches!(err, CodecError::TooLarge { field: "frame length", found, max } if found == MAX_PAYLOAD + 1 && max == MAX_PAYLOAD),
        "{err}"
    );
    assert_eq!(
        header.capacity(),
        cap_before,
        "the decoder reserved memory for an oversized frame"
    );

    // The encoder refuses to produce it too.
    let f = Frame::Message(Message {
        seq: 1,
        from: 0,
        payload: Bytes::from(vec![0; MAX_PAYLOAD - 11]),
    });
    assert!(matches!(
        codec.encode_checked(&f, &mut BytesMut::new()),
        Err(CodecError::TooLarge { .. })
    ));
}

#[test]
fn configured_lower_limit_is_enforced_before_reserving() {
    let mut codec = FrameCodec::with_max_payload(2048);
    let mut buf = BytesMut::with_capacity(HEADER_LEN);
    FrameHeader {
        frame_type: FrameType::Bind as u8,
        flags: 0,
        length: 2049,
    }
    .encode(&mut buf);
    let cap = buf.capacity();
    assert!(matches!(
        codec.decode(&mut buf),
        Err(CodecError::TooLarge { max: 2048, .. })
    ));
    assert_eq!(buf.capacity(), cap);
}

#[test]
fn oversized_datagram_frame_is_rejected() {
    let mut buf = BytesMut::new();
    FrameHeader {
        frame_type: FrameType::Datagram as u8,
        flags: 0,
        length: MAX_DATAGRAM_PAYLOAD + 1,
    }
    .encode(&mut buf);
    buf.put_bytes(0, MAX_DATAGRAM_PAYLOAD + 1);
    assert!(matches!(
        Frame::parse(&buf),
        Err(CodecError::TooLarge {
            field: "datagram payload",
            ..
        })
    ));
    let f = Frame::Datagram(Bytes::from(vec![0; MAX_DATAGRAM_PAYLOAD + 1]));
    assert!(f.validate().is_err());
}

#[test]
fn unknown_type_is_an_error_unless_ignorable() {
    let mut buf = BytesMut::new();
    FrameHeader {
        frame_type: 0x7f,
        flags: 0,
        length: 3,
    }
    .encode(&mut buf);
    buf.put_slice(b"abc");
    let err = Frame::parse(&buf).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::UnknownType {
                found: 0x7f,
                offset: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("0x7f"));
    assert!(FrameCodec::new().decode(&mut buf.clone()).is_err());

    // With the ignorable flag the codec skips it and returns the next frame.
    let mut buf = BytesMut::new();
    FrameHeader {
        frame_type: 0x7f,
        flags: FLAG_IGNORABLE,
        length: 3,
    }
    .encode(&mut buf);
    buf.put_slice(b"abc");
    Frame::Pong(4).encode(&mut buf);
    let mut codec = FrameCodec::new();
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::Pong(4)));
    assert_eq!(codec.skipped(), 1);
}

#[test]
fn wrong_version_and_magic_are_named() {
    let mut b = encode(&Frame::Ping(1)).to_vec();
    b[2] = 2;
    let err = Frame::parse(&b).unwrap_err();
    assert!(matches!(
        err,
        CodecError::UnsupportedVersion {
            expected: 1,
            found: 2,
            offset: 2
        }
    ));
    assert_eq!(err.wire_code(), ErrorCode::UNSUPPORTED_VERSION);

    // Garbage is refused as soon as two bytes are visible.
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::from(&b"GE"[..]);
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(
        matches!(err, CodecError::BadMagic { found: 0x4745, .. }),
        "{err}"
    );
    assert!(matches!(
        codec.decode(&mut BytesMut::from(&b"X"[..])),
        Err(CodecError::BadMagic { .. })
    ));
    assert_eq!(codec.decode(&mut BytesMut::from(&b"C"[..])).unwrap(), None);
}

#[test]
fn truncated_fields_name_the_field_and_offset() {
    let f = Frame::BindOk(BindOk {
        binding_id: 1,
        binding_token: 2,
        mode: BindMode::Datagram,
        keepalive_secs: 15,
        idle_timeout_secs: 60,
    });
    let full = encode(&f);
    // Claim a shorter body: cut the token in half and fix the length field.
    let mut b = full[..HEADER_LEN + 8].to_vec();
    b[7] = 8;
    let err = Frame::parse(&b).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::Truncated {
                field: "binding_token",
                offset: 12,
                needed: 8,
                available: 4
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "truncated binding_token at byte 12: needed 8 bytes, 4 available"
    );

    // A bad enum value.
    let mut b = full.to_vec();
    b[HEADER_LEN + 12] = 9;
    let err = Frame::parse(&b).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::Invalid {
                field: "mode",
                offset: 20,
                ..
            }
        ),
        "{err}"
    );

    // Trailing bytes inside the declared body.
    let mut b = encode(&Frame::Ack(3)).to_vec();
    b.push(0);
    b[7] += 1;
    assert!(matches!(
        Frame::parse(&b),
        Err(CodecError::TrailingBytes { extra: 1, .. })
    ));
}

#[test]
fn invalid_field_values_are_refused() {
    // Non-zero padding.
    let req = Frame::Refresh(Refresh {
        ticket: SealedTicket::new(Bytes::from_static(b"t")).unwrap(),
        padding: 4,
    });
    let mut b = encode(&req).to_vec();
    *b.last_mut().unwrap() = 1;
    assert!(matches!(
        Frame::parse(&b),
        Err(CodecError::Invalid {
            field: "padding",
            ..
        })
    ));

    // An app id with a space.
    let join = Frame::Join(Join {
        app_id: AppId::new("ab").unwrap(),
        channel: ChannelName::new("c").unwrap(),
        user_id: 1,
        resume: None,
    });
    let mut b = encode(&join).to_vec();
    b[HEADER_LEN + 1] = b' ';
    assert!(matches!(
        Frame::parse(&b),
        Err(CodecError::Invalid {
            field: "app_id",
            ..
        })
    ));

    // A domain destination with an upper-case or bad label.
    assert!(DomainName::new("-bad.example").is_err());
    assert!(DomainName::new(&"a".repeat(64)).is_err());
    // More relays than allowed.
    let mut ok = vec![];
    FrameHeader {
        frame_type: FrameType::AllocateOk as u8,
        flags: 0,
        length: 8 + 4 + 1 + 4 + 2 + 2 + 2 + 1,
    }
    .encode(&mut ok);
    ok.extend_from_slice(&[0; 8 + 4 + 1 + 4 + 2 + 2]);
    ok.extend_from_slice(&[1, b't', 17]);
    assert!(matches!(
        Frame::parse(&ok),
        Err(CodecError::TooLarge {
            field: "tcp_relays",
            found: 17,
            max: 16
        })
    ));
}

#[test]
fn udp_header_edge_cases() {
    let h = UdpHeader {
        kind: UdpKind::Keepalive,
        binding_id: 1,
        binding_token: 2,
    };
    let a = h.to_array();
    assert_eq!(UdpHeader::parse(&a).unwrap().0, h);
    assert!(matches!(
        UdpHeader::parse(&a[..15]),
        Err(CodecError::Truncated {
            needed: 16,
            available: 15,
            ..
        })
    ));
    let mut bad = a;
    bad[1] = 9;
    assert!(matches!(
        UdpHeader::parse(&bad),
        Err(CodecError::UnsupportedVersion { found: 9, .. })
    ));
    let mut bad = a;
    bad[2] = 7;
    assert!(matches!(
        UdpHeader::parse(&bad),
        Err(CodecError::UnknownType { found: 7, .. })
    ));
    let mut with_payload = a.to_vec();
    with_payload.push(0);
    assert!(matches!(
        UdpHeader::parse(&with_payload),
        Err(CodecError::TrailingBytes { .. })
    ));
    let data = UdpHeader {
        kind: UdpKind::Data,
        ..h
    };
    let mut big = data.to_array().to_vec();
    big.resize(UDP_HEADER_LEN + MAX_DATAGRAM_PAYLOAD + 1, 0);
    assert!(matches!(
        UdpHeader::parse(&big),
        Err(CodecError::TooLarge { .. })
    ));
    big.pop();
    assert_eq!(
        UdpHeader::parse(&big).unwrap().1.len(),
        MAX_DATAGRAM_PAYLOAD
    );
}

#[test]
fn error_codes_have_user_text_and_names() {
    for code in ErrorCode::ALL {
        assert!(code.name().is_some());
        assert!(code.user_text().ends_with('.'));
    }
    assert_eq!(ErrorCode::EXPIRED_TICKET.0, 300);
    assert_eq!(
        format!("{:?}", ErrorCode::QUOTA_EXCEEDED),
        "ErrorCode::QUOTA_EXCEEDED(202)"
    );
    assert!(ErrorCode(999).name().is_none());
}

#[test]
fn zero_copy_decode_shares_the_buffer() {
    let payload = Bytes::from(vec![7u8; 1200]);
    let f = Frame::Datagram(payload);
    let mut buf = BytesMut::new();
    FrameCodec::new().encode(&f, &mut buf).unwrap();
    let base = buf.as_ptr() as usize;
    let Some(Frame::Datagram(p)) = FrameCodec::new().decode(&mut buf).unwrap() else {
        panic!()
    };
    assert_eq!(p.as_ptr() as usize, base + HEADER_LEN, "payload was copied");
}

#[test]
fn codec_error_io_prints_its_cause_once() {
    // The rule in docs/decisions.md, "Error causes are printed once".
    let err = cloudproxy_proto::codec::FrameCodecError::from(std::io::Error::other(
        "connection reset by peer",
    ));
    let shown = err.to_string();
    assert!(shown.contains("connection reset by peer"), "{shown}");
    let mut next = std::error::Error::source(&err);
    while let Some(cause) = next {
        assert!(
            !shown.contains(&cause.to_string()),
            "the cause {cause} is printed twice: in {shown:?} and again by source()"
        );
        next = cause.source();
    }
}

#[test]
fn frame_types_display_their_protocol_name_and_byte() {
    assert_eq!(FrameType::Join.to_string(), "Join (0x40)");
    assert_eq!(
        FrameType::AllocateRequest.to_string(),
        "AllocateRequest (0x01)"
    );
    let unexpected = SessionError::UnexpectedFrame {
        found: FrameType::Ping,
        state: "waiting for the first request",
    };
    assert_eq!(
        unexpected.to_string(),
        "unexpected Ping (0x13) frame while waiting for the first request"
    );
}

#[test]
fn tokio_util_impls_frame_like_the_inherent_codec() {
    use cloudproxy_proto::codec::FrameCodecError;
    use tokio_util::codec::Decoder;

    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    Encoder::encode(&mut codec, Frame::Ping(9), &mut buf).unwrap();
    Encoder::encode(&mut codec, &Frame::Close, &mut buf).unwrap();
    assert_eq!(
        Decoder::decode(&mut codec, &mut buf).unwrap(),
        Some(Frame::Ping(9))
    );
    assert_eq!(
        Decoder::decode(&mut codec, &mut buf).unwrap(),
        Some(Frame::Close)
    );
    assert_eq!(Decoder::decode(&mut codec, &mut buf).unwrap(), None);

    let mut garbage = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
    let err = Decoder::decode(&mut codec, &mut garbage).unwrap_err();
    assert!(
        matches!(
            err,
            FrameCodecError::Codec(CodecError::BadMagic { found: 0x4745, .. })
        ),
        "{err}"
    );
    // Transparent: the peer sees the parse error's own text and code.
    assert!(err.to_string().starts_with("bad magic at byte 0"), "{err}");
    assert_eq!(err.wire_code(), ErrorCode::MALFORMED_FRAME);
}

#[test]
fn invalid_values_are_typed_and_print_as_before() {
    // Non-zero padding: the byte, in hex, at its own offset.
    let mut b = encode(&Frame::Refresh(Refresh {
        ticket: SealedTicket::new(Bytes::from_static(b"t")).unwrap(),
        padding: 4,
    }))
    .to_vec();
    *b.last_mut().unwrap() = 1;
    let err = Frame::parse(&b).unwrap_err();
    assert_eq!(
        err,
        CodecError::Invalid {
            field: "padding",
            offset: 13,
            expected: "zero bytes",
            found: FoundValue::Byte(1),
        }
    );
    assert_eq!(
        err.to_string(),
        "invalid padding at byte 13: expected zero bytes, found 0x01"
    );

    // A bad app id byte: which byte, where.
    let err = AppId::new("a b").unwrap_err();
    assert!(matches!(
        err,
        CodecError::Invalid {
            found: FoundValue::ByteAt {
                byte: b' ',
                position: 1
            },
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        "invalid app_id at byte 0: expected printable ASCII without spaces, found byte 0x20 at position 1"
    );

    // Lengths, characters and host names.
    assert_eq!(
        SealedTicket::new(Bytes::new()).unwrap_err().to_string(),
        "invalid ticket at byte 0: expected 1 to 255 bytes, found 0 bytes"
    );
    assert_eq!(
        ChannelName::new("a\u{7}").unwrap_err().to_string(),
        "invalid channel at byte 0: expected no control characters, found '\\u{7}'"
    );
    let err = DomainName::new("-bad.example").unwrap_err();
    assert!(matches!(
        &err,
        CodecError::Invalid { found: FoundValue::HostName(name), .. } if name == b"-bad.example"
    ));
    assert_eq!(
        err.to_string(),
        "invalid destination.domain at byte 0: expected labels not starting or ending with '-', found -bad.example"
    );

    // A bad enum byte, in decimal.
    let mut b = encode(&Frame::BindOk(BindOk {
        binding_id: 1,
        binding_token: 2,
        mode: BindMode::Stream,
        keepalive_secs: 3,
        idle_timeout_secs: 4,
    }))
    .to_vec();
    b[HEADER_LEN + 12] = 9;
    assert_eq!(
        Frame::parse(&b).unwrap_err().to_string(),
        "invalid mode at byte 20: expected 1 (stream) or 2 (datagram), found 9"
    );

    // A malformed ticket keeps the parse error as data.
    let ring = cloudproxy_proto::ticket::TicketKeyRing::new(1, vec![7; 32]);
    // Version 1, then nothing.
    let sealed = SealedTicket::new(Bytes::from_static(b"\x01")).unwrap();
    let err = ring.open(&sealed, 0).unwrap_err();
    assert!(
        matches!(err, TicketError::Malformed(CodecError::Truncated { .. })),
        "{err}"
    );
    assert!(
        err.to_string().starts_with("malformed ticket: truncated "),
        "{err}"
    );
}
