//! Two-endpoint tests of the client and server state machines over a
//! simulated network with a simulated clock (no sockets, no sleeps).

mod common;

use std::time::Duration;

use bytes::Bytes;
use cloudproxy_proto::client::{Allocator, AllocatorEvent, BindingEvent, RelayBinding};
use cloudproxy_proto::frame::{BindMode, Frame};
use cloudproxy_proto::server::{
    Connection, DropReason, RelayInput, Role, ServerEvent, SliceInput, UdpAllocation, UdpRelayEvent,
};
use cloudproxy_proto::ticket::{Ticket, TicketKeyRing};
use cloudproxy_proto::udp::{UdpHeader, UdpKind};
use cloudproxy_proto::*;
use common::*;

fn refused(e: &BindingEvent) -> Option<ErrorCode> {
    match e {
        BindingEvent::Closed(SessionError::Refused { code, .. }) => Some(*code),
        _ => None,
    }
}

fn udp_binding(p: &mut Pair, alloc: &client::Allocation) -> RelayBinding {
    let mut b = RelayBinding::new(
        &p.client,
        alloc,
        Path::Udp,
        BindMode::Datagram,
        edge_udp(),
        p.now,
    )
    .unwrap();
    p.pump_udp(&mut b);
    b
}

#[test]
fn successful_session_allocate_bind_udp_and_exchange_media() {
    let mut p = Pair::new();
    let alloc = p.allocate();
    assert_eq!(alloc.transports, Transports::ALL);
    assert_eq!(alloc.tcp_relays, vec!["192.0.2.1:4000".parse().unwrap()]);
    assert_eq!(alloc.udp_relays.len(), 2);
    assert!(
        alloc
            .udp_relays
            .iter()
            .all(|a| DEFAULT_UDP_RELAY_PORTS.contains(&a.port()))
    );
    assert_eq!(alloc.expires_at, p.now + Duration::from_secs(600));
    assert_eq!(alloc.keepalive_interval, Duration::from_secs(15));

    let mut b = udp_binding(&mut p, &alloc);
    let ev = events(&mut b);
    let Some(BindingEvent::Bound {
        binding_id,
        mode: BindMode::Datagram,
        ..
    }) = ev.first().cloned()
    else {
        panic!("not bound: {ev:?}");
    };
    assert!(b.is_bound());
    assert!(
        matches!(p.udp_events[0], UdpRelayEvent::BindRequested { ref request, .. }
        if request.destination == edge_udp() && request.app_id.as_str() == APP)
    );
    assert!(
        matches!(p.udp_events[1], UdpRelayEvent::Bound { binding_id: id, .. } if id == binding_id)
    );

    // Uplink: the payload is forwarded untouched, with the binding's id.
    b.send_datagram(p.now, b"rtp-packet-1").unwrap();
    p.pump_udp(&mut b);
    assert_eq!(
        p.forwarded,
        vec![(binding_id, Bytes::from_static(b"rtp-packet-1"))]
    );

    // Downlink: the relay wraps a destination datagram for the client.
    let mut out = Vec::new();
    let to = p
        .udp
        .encapsulate(binding_id, b"rtp-back", &mut out)
        .unwrap();
    assert_eq!(to, p.client_addr);
    b.handle_input(p.now, &out);
    assert_eq!(
        events(&mut b),
        vec![BindingEvent::Datagram(Bytes::from_static(b"rtp-back"))]
    );

    // Keepalive after an idle interval, answered by the relay.
    p.advance(Duration::from_secs(15));
    p.fire_timers(&mut b);
    let last = &p.udp_replies.last().unwrap().1;
    assert_eq!(
        UdpHeader::parse(last).unwrap().0.kind,
        UdpKind::KeepaliveAck
    );
    assert!(events(&mut b).is_empty());

    // Orderly close: the relay forgets the binding.
    b.close(p.now);
    p.pump_udp(&mut b);
    assert!(b.is_closed());
    assert!(p.udp.is_empty());
    assert!(matches!(
        p.udp_events.last(),
        Some(UdpRelayEvent::BindingClosed {
            reason: SessionError::ClosedByPeer,
            ..
        })
    ));
}

#[test]
fn tcp_stream_bind_hands_over_early_data() {
    let mut p = Pair::new();
    let alloc = p.allocate();
    let mut b = RelayBinding::new(
        &p.client,
        &alloc,
        Path::Tcp,
        BindMode::Stream,
        edge_tcp(),
        p.now,
    )
    .unwrap();
    let mut conn = Connection::new(p.server.clone(), Role::Relay, p.now);
    // The client pipelines its first edge frame behind the Bind.
    let mut first = b.poll_transmit().unwrap().to_vec();
    first.extend_from_slice(b"JOIN...");
    conn.handle_input(p.now, &first);
    let ev = conn.poll_event().unwrap();
    let ServerEvent::BindRequested(req) = &ev else {
        panic!("{ev:?}")
    };
    assert_eq!(req.mode, BindMode::Stream);
    assert_eq!(req.destination, edge_tcp());
    conn.accept_bind(p.now).unwrap();
    let ServerEvent::Bound { early_data, .. } = conn.poll_event().unwrap() else {
        panic!()
    };
    assert_eq!(&early_data[..], b"JOIN...");
    assert_eq!(
        conn.poll_timeout(),
        None,
        "stream mode is the I/O layer's from here"
    );

    // The client receives BindOk followed by the first bytes of the edge.
    let mut back = conn.poll_transmit().unwrap().to_vec();
    back.extend_from_slice(b"JOINED");
    b.handle_input(p.now, &back);
    assert_eq!(
        events(&mut b),
        vec![BindingEvent::Bound {
            binding_id: 0,
            mode: BindMode::Stream,
            early_data: Bytes::from_static(b"JOINED")
        }]
    );
    assert_eq!(b.poll_timeout(), None);
}

#[test]
fn udp_over_tcp_datagrams_both_ways_and_ping() {
    let mut p = Pair::new();
    let alloc = p.allocate();
    let mut b = RelayBinding::new(
        &p.client,
        &alloc,
        Path::Tcp,
        BindMode::Datagram,
        edge_udp(),
        p.now,
    )
    .unwrap();
    let mut conn = Connection::new(p.server.clone(), Role::Relay, p.now);
    let evs = p.pump_tcp(&mut b, &mut conn, &mut accept_all);
    assert!(matches!(evs[1], ServerEvent::Bound { .. }));
    assert!(matches!(
        events(&mut b)[..],
        [BindingEvent::Bound {
            mode: BindMode::Datagram,
            ..
        }]
    ));

    b.send_datagram(p.now, b"media up").unwrap();
    let evs = p.pump_tcp(&mut b, &mut conn, &mut accept_all);
    assert_eq!(
        evs,
        vec![ServerEvent::Datagram(Bytes::from_static(b"media up"))]
    );
    conn.send_datagram(p.now, b"media down").unwrap();
    p.pump_tcp(&mut b, &mut conn, &mut accept_all);
    assert_eq!(
        events(&mut b),
        vec![BindingEvent::Datagram(Bytes::from_static(b"media down"))]
    );

    // Idle for a keepalive interval: the client pings, the relay pongs, both stay up.
    p.advance(Duration::from_secs(15));
    b.handle_timeout(p.now);
    p.pump_tcp(&mut b, &mut conn, &mut accept_all);
    conn.handle_timeout(p.now);
    assert!(!conn.is_closed());
    assert!(events(&mut b).is_empty());
    assert!(b.is_bound());
}

#[test]
fn udp_allocation_is_padded_and_never_amplifies() {
    let mut p = Pair::new();
    let mut a = Allocator::new(&p.client, Path::Udp, [1; 16], p.now);
    let req = a.poll_transmit().unwrap();
    assert_eq!(req.len(), MIN_UDP_REQUEST);
    let UdpAllocation::Pending(pending) = p.server.handle_allocation_datagram(p.now, &req) else {
        panic!()
    };
    assert_eq!(pending.request.app_id.as_str(), APP);
    let reply = pending.accept();
    assert!(reply.len() <= req.len());
    a.handle_input(p.now, &reply);
    assert!(matches!(a.poll_event(), Some(AllocatorEvent::Allocated(_))));

    // An unpadded request (as a TCP client builds it) sent over UDP gets a
    // short REQUEST_TOO_SMALL instead of the answer.
    let small = Allocator::new(&p.client, Path::Tcp, [2; 16], p.now)
        .poll_transmit()
        .unwrap();
    assert!(small.len() < 200);
    let UdpAllocation::Reply(err) = p.server.handle_allocation_datagram(p.now, &small) else {
        panic!()
    };
    assert!(err.len() <= small.len());
    let Frame::Error(e) = Frame::parse(&err).unwrap() else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::REQUEST_TOO_SMALL);

    // Garbage and tiny datagrams: nothing, or something no larger.
    assert!(matches!(
        p.server.handle_allocation_datagram(p.now, b"\x00\x01"),
        UdpAllocation::Drop
    ));
    assert!(matches!(
        p.server.handle_allocation_datagram(p.now, b"CP"),
        UdpAllocation::Drop
    ));
    match p
        .server
        .handle_allocation_datagram(p.now, b"CP\x01\x01\x00\x00\x00\x05hello")
    {
        UdpAllocation::Reply(r) => assert!(r.len() <= 13),
        UdpAllocation::Drop => {}
        other => panic!("{other:?}"),
    }
    p.advance(Duration::ZERO);
}

#[test]
fn udp_allocation_retransmits_then_times_out() {
    let p = Pair::new();
    let mut a = Allocator::new(&p.client, Path::Udp, [1; 16], p.now);
    let _ = a.poll_transmit();
    let mut now = p.now;
    let mut sends = 0;
    while let Some(t) = a.poll_timeout() {
        now = t;
        a.handle_timeout(now);
        while a.poll_transmit().is_some() {
            sends += 1;
        }
        if a.is_done() {
            break;
        }
    }
    // 250 ms doubling within 10 s: 0.25, 0.75, 1.75, 3.75, 7.75.
    assert_eq!(sends, 5);
    assert_eq!(now - p.now, Duration::from_secs(10));
    assert_eq!(
        a.poll_event(),
        Some(AllocatorEvent::Failed(SessionError::Timeout {
            which: "allocation",
            after: Duration::from_secs(10)
        }))
    );
}

#[test]
fn bad_credential_clock_skew_and_quota_are_refused_with_codes() {
    let mut p = Pair::new();
    // Wrong secret.
    let mut cfg = p.client.clone();
    cfg.secret = b"wrong".to_vec();
    let mut a = Allocator::new(&cfg, Path::Tcp, [1; 16], p.now);
    let mut conn = Connection::new(p.server.clone(), Role::Allocation, p.now);
    let evs = p.pump_tcp(&mut a, &mut conn, &mut accept_all);
    assert!(matches!(
        evs[..],
        [ServerEvent::Closed(SessionError::Rejected {
            code: ErrorCode::BAD_CREDENTIAL
        })]
    ));
    assert!(matches!(
        a.poll_event(),
        Some(AllocatorEvent::Failed(SessionError::Refused {
            code: ErrorCode::BAD_CREDENTIAL,
            ..
        }))
    ));

    // Unknown app: same code (no oracle for which app ids exist).
    let mut cfg = p.client.clone();
    cfg.app_id = AppId::new("nobody").unwrap();
    let mut a = Allocator::new(&cfg, Path::Tcp, [1; 16], p.now);
    let mut conn = Connection::new(p.server.clone(), Role::Allocation, p.now);
    p.pump_tcp(&mut a, &mut conn, &mut accept_all);
    assert!(matches!(
        a.poll_event(),
        Some(AllocatorEvent::Failed(SessionError::Refused {
            code: ErrorCode::BAD_CREDENTIAL,
            ..
        }))
    ));

    // Client clock ten minutes fast.
    let mut cfg = p.client.clone();
    cfg.timebase = Timebase::new(p.now, UNIX0 + 600);
    let mut a = Allocator::new(&cfg, Path::Tcp, [1; 16], p.now);
    let mut conn = Connection::new(p.server.clone(), Role::Allocation, p.now);
    p.pump_tcp(&mut a, &mut conn, &mut accept_all);
    let Some(AllocatorEvent::Failed(SessionError::Refused { code, message })) = a.poll_event()
    else {
        panic!()
    };
    assert_eq!(code, ErrorCode::CLOCK_SKEW);
    assert!(message.contains("600 s"), "{message}");

    // Quota decided by the I/O layer.
    let mut a = Allocator::new(&p.client, Path::Tcp, [1; 16], p.now);
    let mut conn = Connection::new(p.server.clone(), Role::Allocation, p.now);
    let evs = p.pump_tcp(&mut a, &mut conn, &mut |e, c, now| {
        if let ServerEvent::AllocationRequested(r) = e {
            assert_eq!(r.app_id.as_str(), APP);
            assert!(!r.refresh);
            c.reject(
                now,
                ErrorCode::QUOTA_EXCEEDED,
                Some("demo-app: 100 of 100 sessions in use"),
            );
        }
    });
    assert!(matches!(evs[0], ServerEvent::AllocationRequested(_)));
    let Some(AllocatorEvent::Failed(SessionError::Refused { code, message })) = a.poll_event()
    else {
        panic!()
    };
    assert_eq!(code, ErrorCode::QUOTA_EXCEEDED);
    assert_eq!(message, "demo-app: 100 of 100 sessions in use");
    p.advance(Duration::ZERO);
}

#[test]
fn expired_ticket_is_refused() {
    let mut p = Pair::new();
    let alloc = p.allocate();
    p.advance(Duration::from_secs(600));
    let mut b = RelayBinding::new(
        &p.client,
        &alloc,
        Path::Udp,
        BindMode::Datagram,
        edge_udp(),
        p.now,
    )
    .unwrap();
    p.pump_udp(&mut b);
    let ev = events(&mut b);
    assert_eq!(refused(&ev[0]), Some(ErrorCode::EXPIRED_TICKET), "{ev:?}");
    assert!(p.udp.is_empty());

    // Over TCP too.
    let mut b = RelayBinding::new(
        &p.client,
        &alloc,
        Path::Tcp,
        BindMode::Stream,
        edge_tcp(),
        p.now,
    )
    .unwrap();
    let mut conn = Connection::new(p.server.clone(), Role::Relay, p.now);
    let evs = p.pump_tcp(&mut b, &mut conn, &mut accept_all);
    assert!(matches!(
        evs[..],
        [ServerEvent::Closed(SessionError::Rejected {
            code: ErrorCode::EXPIRED_TICKET
        })]
    ));
    assert_eq!(refused(&events(&mut b)[0]), Some(ErrorCode::EXPIRED_TICKET));
}

#[test]
fn ticket_from_another_key_is_refused() {
    let mut p = Pair::new();
    let alloc = p.allocate();
    p.restart_server(b"some other key, not the fleet's");
    let mut b = udp_binding(&mut p, &alloc);
    assert_eq!(refused(&events(&mut b)[0]), Some(ErrorCode::INVALID_TICKET));
}

#[test]
fn tampered_ticket_is_refused() {
    let mut p = Pair::new();
    let mut alloc = p.allocate();
    // Flip the transports byte (offset 29) to try to widen the ticket.
    let mut raw = alloc.ticket.as_bytes().to_vec();
    raw[13] ^= 0x01; // created_at: try to extend the session
    alloc.ticket = SealedTicket::new(Bytes::from(raw)).unwrap();
    let mut b = RelayBinding::new(
        &p.client,
        &alloc,
        Path::Tcp,
        BindMode::Stream,
        edge_tcp(),
        p.now,
    )
    .unwrap();
    let mut conn = Connection::new(p.server.clone(), Role::Relay, p.now);
    let evs = p.pump_tcp(&mut b, &mut conn, &mut accept_all);
    assert!(matches!(
        evs[..],
        [ServerEvent::Closed(SessionError::Rejected {
            code: ErrorCode::INVALID_TICKET
        })]
    ));
    let ev = events(&mut b);
    assert_eq!(refused(&ev[0]), Some(ErrorCode::INVALID_TICKET));
}

#[test]
fn server_restart_with_same_key_accepts_old_ticket() {
    let mut p = Pair::new();
    let alloc = p.allocate();
    p.advance(Duration::from_secs(120));
    p.restart_server(KEY);
    let mut b = udp_binding(&mut p, &alloc);
    assert!(matches!(events(&mut b)[..], [BindingEvent::Bound { .. }]));
}

#[test]
fn key_rotation_old_key_still_verifies() {
    let mut ring = TicketKeyRing::new(1, KEY.to_vec());
    let t = Ticket {
        key_id: 0,
        session_id: 5,
        app_id: AppId::new(APP).unwrap(),
        transports: Transports::UDP,
        created_at: UNIX0,
        expires_at: UNIX0 + 10,
    };
    let old = ring.seal(&t);
    ring.insert(2, b"new key".to_vec());
    ring.set_current(2).unwrap();
    let new = ring.seal(&t);
    assert_eq!(ring.open(&old, UNIX0).unwrap().key_id, 1);
    assert_eq!(ring.open(&new, UNIX0).unwrap().key_id, 2);
    assert!(ring.remove(1));
    assert_eq!(ring.open(&old, UNIX0), Err(TicketError::UnknownKey(1)));
    assert!(!ring.remove(2), "the current key cannot be removed");
}

#[test]
fn keepalive_timeout_when_the_relay_goes_silent() {
    let mut p = Pair::new();
    let alloc = p.allocate();
    let mut b = udp_binding(&mut p, &alloc);
    let _ = events(&mut b);
    p.deliver_to_client = false;
    p.run_for(&mut b, Duration::from_secs(60), Duration::from_secs(1));
    let ev = events(&mut b);
    assert_eq!(
        ev,
        vec![BindingEvent::Closed(SessionError::Timeout {
            which: "keepalive",
            after: Duration::from_secs(45)
        })]
    );
    // The relay kept seeing keepalives, so it still holds the binding until idle.
    assert_eq!(p.udp.len(), 1);
    let mut dead = RelayBinding::new(
        &p.client,
        &alloc,
        Path::Udp,
        BindMode::Datagram,
        edge_udp(),
        p.now,
    )
    .unwrap();
    let _ = dead.poll_transmit();
    p.run_for(&mut dead, Duration::from_secs(80), Duration::from_secs(5));
    assert!(p.udp.is_empty(), "idle binding was not dropped");
    assert!(p.udp_events.iter().any(|e| matches!(
        e,
        UdpRelayEvent::BindingClosed {
            reason: SessionError::Timeout { which: "idle", .. },
            ..
        }
    )));
}

#[test]
fn handshake_deadline_closes_a_silent_connection() {
    let p = Pair::new();
    let mut conn = Connection::new(p.server.clone(), Role::Relay, p.now);
    conn.handle_input(p.now, &b"CP\x01"[..]); // a partial header
    let t = conn.poll_timeout().unwrap();
    assert_eq!(t - p.now, Duration::from_secs(10));
    conn.handle_timeout(t - Duration::from_millis(1));
    assert!(!conn.is_closed());
    conn.handle_timeout(t);
    let Frame::Error(e) = Frame::parse(&conn.poll_transmit().unwrap()).unwrap() else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::HANDSHAKE_TIMEOUT);
    assert!(matches!(
        conn.poll_event(),
        Some(ServerEvent::Closed(SessionError::Timeout {
            which: "handshake",
            ..
        }))
    ));
    assert_eq!(conn.poll_timeout(), None);
}

#[test]
fn garbage_and_wrong_frames_get_error_frames() {
    let p = Pair::new();
    let mut conn = Connection::new(p.server.clone(), Role::Relay, p.now);
    conn.handle_input(p.now, b"\x16\x03\x01 TLS hello");
    let Frame::Error(e) = Frame::parse(&conn.poll_transmit().unwrap()).unwrap() else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::MALFORMED_FRAME);
    assert!(e.message.as_str().contains("bad magic"), "{}", e.message);

    // An AllocateRequest on the relay port is out of place.
    let mut a = Allocator::new(&p.client, Path::Tcp, [1; 16], p.now);
    let mut conn = Connection::new(p.server.clone(), Role::Relay, p.now);
    conn.handle_input(p.now, &a.poll_transmit().unwrap());
    let Frame::Error(e) = Frame::parse(&conn.poll_transmit().unwrap()).unwrap() else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::UNEXPECTED_FRAME);

    // A version-2 header.
    let mut conn = Connection::new(p.server.clone(), Role::Allocation, p.now);
    conn.handle_input(p.now, b"CP\x02\x01\x00\x00\x00\x00");
    let Frame::Error(e) = Frame::parse(&conn.poll_transmit().unwrap()).unwrap() else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::UNSUPPORTED_VERSION);

    // A handshake frame over the handshake limit is refused before buffering it.
    let mut conn = Connection::new(p.server.clone(), Role::Allocation, p.now);
    conn.handle_input(p.now, b"CP\x01\x01\x00\x01\x00\x00");
    let Frame::Error(e) = Frame::parse(&conn.poll_transmit().unwrap()).unwrap() else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::MALFORMED_FRAME);
    assert!(conn.is_closed());
}

#[test]
fn destination_not_allowed_is_the_io_layers_call() {
    let mut p = Pair::new();
    let alloc = p.allocate();
    p.udp_bind_verdict = Some(ErrorCode::DESTINATION_NOT_ALLOWED);
    let mut b = udp_binding(&mut p, &alloc);
    assert_eq!(
        refused(&events(&mut b)[0]),
        Some(ErrorCode::DESTINATION_NOT_ALLOWED)
    );
    assert!(p.udp.is_empty());

    let mut b = RelayBinding::new(
        &p.client,
        &alloc,
        Path::Tcp,
        BindMode::Stream,
        edge_tcp(),
        p.now,
    )
    .unwrap();
    let mut conn = Connection::new(p.server.clone(), Role::Relay, p.now);
    p.pump_tcp(&mut b, &mut conn, &mut |e, c, now| {
        if matches!(e, ServerEvent::BindRequested(_)) {
            c.reject(
                now,
                ErrorCode::DESTINATION_NOT_ALLOWED,
                Some("127.0.0.1:22 is not on the allowlist"),
            );
        }
    });
    let ev = events(&mut b);
    assert!(
        matches!(&ev[0], BindingEvent::Closed(SessionError::Refused { code: ErrorCode::DESTINATION_NOT_ALLOWED, message }) if message.contains("allowlist"))
    );
}

#[test]
fn nat_rebinding_needs_ticket_and_token() {
    let mut p = Pair::new();
    let alloc = p.allocate();
    let mut b = udp_binding(&mut p, &alloc);
    let Some(BindingEvent::Bound { binding_id, .. }) = events(&mut b).pop() else {
        panic!()
    };

    // The NAT moves the client: data from the new address is dropped...
    let old = p.client_addr;
    p.client_addr = "203.0.113.10:41111".parse().unwrap();
    b.send_datagram(p.now, b"after move").unwrap();
    let d = b.poll_transmit().unwrap();
    assert_eq!(
        p.udp.handle_datagram(p.now, p.client_addr, d.clone()),
        RelayInput::Dropped(DropReason::AddressMismatch)
    );
    // ...and a blind attacker guessing the token gets nothing either.
    let mut forged = d.to_vec();
    forged[15] ^= 1;
    assert_eq!(
        p.udp
            .handle_datagram(p.now, p.client_addr, Bytes::from(forged)),
        RelayInput::Dropped(DropReason::BadToken)
    );
    // A re-bind carrying the ticket moves the binding.
    b.rebind(p.now).unwrap();
    p.pump_udp(&mut b);
    assert_eq!(events(&mut b), vec![BindingEvent::Rebound]);
    assert!(p.udp_events.iter().any(|e| matches!(e, UdpRelayEvent::Rebound { old: o, new, .. } if *o == old && *new == p.client_addr)));
    // The borrowed-datagram entry point (batched reads) says the same,
    // with the payload as an offset.
    assert_eq!(
        p.udp.handle_slice(p.now, p.client_addr, &d),
        SliceInput::Forward {
            binding_id,
            payload_start: 16
        }
    );
    assert_eq!(
        p.udp.handle_slice(p.now, old, &d),
        SliceInput::Dropped(DropReason::AddressMismatch)
    );
    assert_eq!(
        p.udp.handle_datagram(p.now, p.client_addr, d),
        RelayInput::Forward {
            binding_id,
            payload: Bytes::from_static(b"after move")
        }
    );

    // A re-bind with a wrong token is refused.
    let bad = Frame::Bind(cloudproxy_proto::frame::Bind {
        ticket: alloc.ticket.clone(),
        mode: BindMode::Datagram,
        destination: edge_udp(),
        rebind: Some(cloudproxy_proto::frame::Rebind {
            binding_id,
            binding_token: 1,
        }),
    })
    .to_bytes();
    let _ = p
        .udp
        .handle_datagram(p.now, "198.18.0.1:1".parse().unwrap(), bad);
    let t = p.udp.poll_transmit().unwrap();
    let Frame::Error(e) = Frame::parse(&t.contents).unwrap() else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::BINDING_NOT_FOUND);
}

#[test]
fn lost_bind_ok_is_answered_again_without_a_second_binding() {
    let mut p = Pair::new();
    let alloc = p.allocate();
    let mut b = RelayBinding::new(
        &p.client,
        &alloc,
        Path::Udp,
        BindMode::Datagram,
        edge_udp(),
        p.now,
    )
    .unwrap();
    p.deliver_to_client = false;
    p.pump_udp(&mut b);
    assert_eq!(p.udp.len(), 1);
    p.deliver_to_client = true;
    p.advance(Duration::from_millis(250));
    p.fire_timers(&mut b);
    assert_eq!(
        p.udp.len(),
        1,
        "retransmitted Bind created a second binding"
    );
    assert!(matches!(events(&mut b)[..], [BindingEvent::Bound { .. }]));
}

#[test]
fn refresh_keeps_the_session_and_extends_the_ticket() {
    let mut p = Pair::new();
    let alloc = p.allocate();
    p.advance(Duration::from_secs(400));
    let mut a = Allocator::refresh(&p.client, Path::Tcp, alloc.ticket.clone(), p.now);
    let mut conn = Connection::new(p.server.clone(), Role::Allocation, p.now);
    let evs = p.pump_tcp(&mut a, &mut conn, &mut accept_all);
    assert!(
        matches!(&evs[0], ServerEvent::AllocationRequested(r) if r.refresh && r.session_id == alloc.session_id)
    );
    let Some(AllocatorEvent::Allocated(new)) = a.poll_event() else {
        panic!()
    };
    assert_eq!(new.session_id, alloc.session_id);
    assert_eq!(new.expires_at, p.now + Duration::from_secs(600));
    // The old ticket expires at 600 s; the new one still binds at 700 s.
    p.advance(Duration::from_secs(300));
    let mut b = udp_binding(&mut p, &new);
    assert!(matches!(events(&mut b)[..], [BindingEvent::Bound { .. }]));

    // An expired ticket cannot be refreshed.
    let mut a = Allocator::refresh(&p.client, Path::Tcp, alloc.ticket, p.now);
    let mut conn = Connection::new(p.server.clone(), Role::Allocation, p.now);
    p.pump_tcp(&mut a, &mut conn, &mut accept_all);
    assert!(matches!(
        a.poll_event(),
        Some(AllocatorEvent::Failed(SessionError::Refused {
            code: ErrorCode::EXPIRED_TICKET,
            ..
        }))
    ));
}

#[test]
fn datagram_mode_connection_closes_when_idle() {
    let mut p = Pair::new();
    let alloc = p.allocate();
    let mut b = RelayBinding::new(
        &p.client,
        &alloc,
        Path::Tcp,
        BindMode::Datagram,
        edge_udp(),
        p.now,
    )
    .unwrap();
    let mut conn = Connection::new(p.server.clone(), Role::Relay, p.now);
    p.pump_tcp(&mut b, &mut conn, &mut accept_all);
    assert_eq!(conn.poll_timeout(), Some(p.now + Duration::from_secs(60)));
    p.advance(Duration::from_secs(60));
    conn.handle_timeout(p.now);
    assert!(conn.is_closed());
    let Frame::Error(e) = Frame::parse(&conn.poll_transmit().unwrap()).unwrap() else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::IDLE_TIMEOUT);
}

#[test]
fn stream_mode_over_udp_is_refused_locally() {
    let mut p = Pair::new();
    let alloc = p.allocate();
    assert!(
        RelayBinding::new(
            &p.client,
            &alloc,
            Path::Udp,
            BindMode::Stream,
            edge_udp(),
            p.now
        )
        .is_err()
    );
}

#[test]
fn forged_udp_error_does_not_tear_down_a_bound_binding() {
    let mut p = Pair::new();
    let alloc = p.allocate();
    let mut b = udp_binding(&mut p, &alloc);
    let _ = events(&mut b);
    let forged = Frame::Error(cloudproxy_proto::frame::ErrorFrame::new(
        ErrorCode::EXPIRED_TICKET,
    ))
    .to_bytes();
    b.handle_input(p.now, &forged);
    assert!(events(&mut b).is_empty());
    assert!(b.is_bound());
    // During a re-bind the relay's Error is expected and ends the binding.
    b.rebind(p.now).unwrap();
    b.handle_input(p.now, &forged);
    assert_eq!(refused(&events(&mut b)[0]), Some(ErrorCode::EXPIRED_TICKET));
}

#[test]
fn configured_max_frame_len_holds_after_a_datagram_bind() {
    let mut p = Pair::new();
    p.server = make_server_with(p.now, UNIX0, KEY, 1, |cfg| cfg.max_frame_len = 4096);
    let alloc = p.allocate();
    let mut b = RelayBinding::new(
        &p.client,
        &alloc,
        Path::Tcp,
        BindMode::Datagram,
        edge_udp(),
        p.now,
    )
    .unwrap();
    let mut conn = Connection::new(p.server.clone(), Role::Relay, p.now);
    p.pump_tcp(&mut b, &mut conn, &mut accept_all);
    assert!(b.is_bound());
    // A header announcing 32 768 bytes: refused at once, no body awaited.
    conn.handle_input(p.now, &[0x43, 0x50, 1, 0x12, 0, 0x00, 0x80, 0x00]);
    assert!(conn.is_closed());
    let Frame::Error(e) = Frame::parse(&conn.poll_transmit().unwrap()).unwrap() else {
        panic!("expected an Error frame")
    };
    assert_eq!(e.code, ErrorCode::MALFORMED_FRAME);
    assert!(
        e.message.as_str().contains("maximum is 4096"),
        "{}",
        e.message.as_str()
    );
}

/// A datagram-mode connection bound through `p`, its `BindOk` taken.
fn bound_datagram_connection(p: &mut Pair) -> (RelayBinding, Connection) {
    let alloc = p.allocate();
    let mut b = RelayBinding::new(
        &p.client,
        &alloc,
        Path::Tcp,
        BindMode::Datagram,
        edge_udp(),
        p.now,
    )
    .unwrap();
    let mut conn = Connection::new(p.server.clone(), Role::Relay, p.now);
    p.pump_tcp(&mut b, &mut conn, &mut accept_all);
    assert!(b.is_bound());
    assert_eq!(conn.queued_bytes(), 0);
    (b, conn)
}

/// The frames one after another in `bytes`.
fn frames(mut bytes: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len =
            8 + (usize::from(bytes[5]) << 16 | usize::from(bytes[6]) << 8 | usize::from(bytes[7]));
        out.push(Frame::parse(&bytes[..len]).unwrap());
        bytes = &bytes[len..];
    }
    out
}

/// 1 MiB of `Ping` frames, in 16 KiB reads.
fn ping_flood() -> Vec<Vec<u8>> {
    let pings: Vec<u8> = (0..65_536u64)
        .flat_map(|i| Frame::Ping(i).to_bytes())
        .collect();
    pings.chunks(16 * 1024).map(<[u8]>::to_vec).collect()
}

#[test]
fn pings_from_a_client_that_does_not_read_stop_at_the_queue_bound() {
    const BOUND: usize = 4096;
    const PONG: usize = 16;
    let mut p = Pair::new();
    p.server = make_server_with(p.now, UNIX0, KEY, 1, |cfg| cfg.max_queued_bytes = BOUND);
    let (_b, mut conn) = bound_datagram_connection(&mut p);
    // A driver feeds reads while the connection wants them; the client
    // never reads, so nothing is taken.
    let mut fed = 0;
    for read in ping_flood() {
        if !conn.wants_input() {
            break;
        }
        conn.handle_input(p.now, &read);
        fed += 1;
    }
    assert_eq!(fed, 1, "one 16 KiB read of pings fills a 4 KiB queue");
    assert!(!conn.wants_input());
    assert!(conn.is_backed_up());
    assert!(
        conn.queued_bytes() >= BOUND && conn.queued_bytes() < BOUND + PONG,
        "{} bytes queued",
        conn.queued_bytes()
    );
    // Even a driver that keeps feeding gets no further answers.
    conn.handle_input(p.now, &ping_flood()[1]);
    assert!(conn.queued_bytes() < BOUND + PONG);
    assert_eq!(conn.poll_event(), None);

    // The client reads: the held pings are answered, in order.
    let mut answers = frames(&conn.poll_transmit().unwrap());
    assert!(conn.wants_input());
    conn.handle_input(p.now, &[]);
    answers.extend(frames(&conn.poll_transmit().unwrap()));
    assert!(answers.len() > BOUND / PONG, "{}", answers.len());
    assert!(
        answers
            .iter()
            .enumerate()
            .all(|(i, f)| *f == Frame::Pong(i as u64))
    );
}

#[test]
fn a_client_that_neither_reads_nor_sends_datagrams_is_closed_as_not_reading() {
    let mut p = Pair::new();
    p.server = make_server_with(p.now, UNIX0, KEY, 1, |cfg| cfg.max_queued_bytes = 4096);
    let (_b, mut conn) = bound_datagram_connection(&mut p);
    for read in ping_flood().iter().take(3) {
        p.advance(Duration::from_secs(1));
        conn.handle_input(p.now, read);
    }
    // Its pings did not refresh the idle timer: it runs from the bind.
    assert_eq!(
        conn.poll_timeout(),
        Some(p.now - Duration::from_secs(3) + Duration::from_secs(60))
    );
    p.advance(Duration::from_secs(57));
    conn.handle_timeout(p.now);
    assert!(conn.is_closed());
    let queued = conn.queued_bytes();
    match conn.poll_event() {
        Some(ServerEvent::Closed(SessionError::NotReading { queued: q })) => {
            assert!(q >= 4096 && q < queued, "{q} of {queued}");
        }
        other => panic!("expected a NotReading close, got {other:?}"),
    }
    // The Error frame went through the same queue, behind the answers.
    let out = frames(&conn.poll_transmit().unwrap());
    assert!(
        out[..out.len() - 1]
            .iter()
            .all(|f| matches!(f, Frame::Pong(_)))
    );
    let Some(Frame::Error(e)) = out.last() else {
        panic!("expected an Error frame last, got {:?}", out.last())
    };
    assert_eq!(e.code, ErrorCode::IDLE_TIMEOUT);
}

#[test]
fn only_the_bindings_traffic_keeps_a_datagram_binding_alive() {
    let mut p = Pair::new();
    let (mut b, mut conn) = bound_datagram_connection(&mut p);
    // A client that only pings, and reads its pongs, is idle.
    for _ in 0..5 {
        p.advance(Duration::from_secs(10));
        conn.handle_input(p.now, &Frame::Ping(7).to_bytes());
        assert_eq!(
            Frame::parse(&conn.poll_transmit().unwrap()).unwrap(),
            Frame::Pong(7)
        );
        conn.handle_timeout(p.now);
        assert!(!conn.is_closed());
    }
    // A datagram for a client that only listens (a muted participant)
    // is the binding's traffic too: at 50 s it moves the deadline to 110 s.
    conn.send_datagram(p.now, b"media down").unwrap();
    assert_eq!(conn.poll_timeout(), Some(p.now + Duration::from_secs(60)));
    let _ = conn.poll_transmit();
    // So does one from the client, at 50 s.
    b.send_datagram(p.now, b"media").unwrap();
    let evs = p.pump_tcp(&mut b, &mut conn, &mut accept_all);
    assert_eq!(
        evs,
        vec![ServerEvent::Datagram(Bytes::from_static(b"media"))]
    );
    assert_eq!(conn.poll_timeout(), Some(p.now + Duration::from_secs(60)));
    p.advance(Duration::from_secs(59));
    conn.handle_input(p.now, &Frame::Ping(8).to_bytes());
    let _ = conn.poll_transmit();
    p.advance(Duration::from_secs(1));
    conn.handle_timeout(p.now);
    assert!(conn.is_closed());
    assert_eq!(
        conn.poll_event(),
        Some(ServerEvent::Closed(SessionError::Timeout {
            which: "idle",
            after: Duration::from_secs(60),
        }))
    );
}

#[test]
fn datagrams_for_a_client_that_does_not_read_are_refused_at_the_bound() {
    let mut p = Pair::new();
    p.server = make_server_with(p.now, UNIX0, KEY, 1, |cfg| cfg.max_queued_bytes = 4096);
    let (_b, mut conn) = bound_datagram_connection(&mut p);
    let payload = [0u8; 1000];
    let mut sent = 0;
    while conn.send_datagram(p.now, &payload).is_ok() {
        sent += 1;
        assert!(sent < 100, "never refused");
    }
    // Four 1 008-byte frames fit below 4 096; the fifth crosses it.
    assert_eq!(sent, 5);
    assert!(matches!(
        conn.send_datagram(p.now, &payload),
        Err(SessionError::NotReading { queued }) if queued == 5 * 1008
    ));
    // Taken by the transport: room again.
    assert_eq!(conn.poll_transmit().unwrap().len(), 5 * 1008);
    conn.send_datagram(p.now, &payload).unwrap();
}
