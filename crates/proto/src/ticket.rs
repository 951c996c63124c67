//! Tickets and credential proofs (HMAC-SHA256).
//!
//! A **ticket** is what the allocation service hands a client and what every
//! relay checks before binding. It is self-verifying: any node holding the
//! ticket key named by its key id checks it without shared state. Keys rotate
//! by key id: a [`TicketKeyRing`] signs with its current key and verifies with
//! any key it holds.
//!
//! ```text
//! offset  size  field
//!  0       1    version = 1
//!  1       4    key_id      (u32, BE)
//!  5       8    session_id  (u64, BE)
//! 13       8    created_at  (unix seconds: when the session was first allocated)
//! 21       8    expires_at  (unix seconds)
//! 29       1    transports  (bit set)
//! 30       1    app_id length n (1..=64)
//! 31       n    app_id
//! 31+n    32    mac = HMAC-SHA256(key[key_id], "cloudproxy-ticket-v1" || bytes[0 .. 31+n])
//! ```
//!
//! A **credential proof** is how a client shows it knows its app secret without
//! sending it: `HMAC-SHA256(secret, "cloudproxy-alloc-v1" || len(app_id) ||
//! app_id || nonce(16) || timestamp(u64 BE))`.
//!
//! ```
//! use cloudproxy_proto::ticket::{Ticket, TicketKeyRing};
//! use cloudproxy_proto::{AppId, Transports};
//!
//! let keys = TicketKeyRing::new(1, b"a 32-byte or longer random secret!".to_vec());
//! let ticket = Ticket {
//!     key_id: 0, // filled in by seal
//!     session_id: 42,
//!     app_id: AppId::new("demo").unwrap(),
//!     transports: Transports::ALL,
//!     created_at: 1_700_000_000,
//!     expires_at: 1_700_000_600,
//! };
//! let sealed = keys.seal(&ticket);
//! let opened = keys.open(&sealed, 1_700_000_100).unwrap();
//! assert_eq!(opened.session_id, 42);
//! assert!(keys.open(&sealed, 1_700_000_600).is_err()); // expired
//! ```

use bytes::{BufMut, Bytes};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::error::{CodecError, TicketError};
use crate::types::{AppId, SealedTicket, Transports};
use crate::wire::Reader;

type HmacSha256 = Hmac<Sha256>;

/// Domain-separation prefix of the ticket MAC.
pub const TICKET_MAC_CONTEXT: &[u8] = b"cloudproxy-ticket-v1";
/// Domain-separation prefix of the credential proof.
pub const PROOF_CONTEXT: &[u8] = b"cloudproxy-alloc-v1";
/// Ticket format version.
pub const TICKET_VERSION: u8 = 1;
/// Length of the MAC at the end of a ticket.
pub const MAC_LEN: usize = 32;

fn hmac(key: &[u8]) -> HmacSha256 {
    // HMAC is defined for keys of every length; `new_from_slice` cannot fail.
    match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

/// The contents of a ticket.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Ticket {
    /// Id of the key that signs it ([`TicketKeyRing::seal`] sets it).
    pub key_id: u32,
    /// The session this ticket belongs to.
    pub session_id: u64,
    /// The app that owns the session.
    pub app_id: AppId,
    /// Transports the holder may bind.
    pub transports: Transports,
    /// Unix seconds when the session was first allocated (kept on refresh).
    pub created_at: u64,
    /// Unix seconds after which the ticket is refused.
    pub expires_at: u64,
}

impl Ticket {
    /// Length of the signed part.
    fn body_len(&self) -> usize {
        31 + self.app_id.as_str().len()
    }

    /// Length of the sealed ticket (body and MAC).
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        self.body_len() + MAC_LEN
    }

    fn encode_body(&self, dst: &mut impl BufMut) {
        dst.put_u8(TICKET_VERSION);
        dst.put_u32(self.key_id);
        dst.put_u64(self.session_id);
        dst.put_u64(self.created_at);
        dst.put_u64(self.expires_at);
        dst.put_u8(self.transports.bits());
        let app = self.app_id.as_str().as_bytes();
        dst.put_u8(app.len() as u8);
        dst.put_slice(app);
    }

    /// Parses a sealed ticket's fields and returns them with the MAC bytes,
    /// **without verifying** the MAC. Only for diagnostics and fuzzing; use
    /// [`TicketKeyRing::open`] to accept a ticket.
    pub fn parse_unverified(data: &[u8]) -> Result<(Self, [u8; MAC_LEN]), CodecError> {
        let mut r = Reader::new(data, 0);
        let offset = r.offset();
        let version = r.u8("ticket.version")?;
        if version != TICKET_VERSION {
            return Err(CodecError::UnsupportedVersion {
                offset,
                expected: TICKET_VERSION,
                found: version,
            });
        }
        let key_id = r.u32("ticket.key_id")?;
        let session_id = r.u64("ticket.session_id")?;
        let created_at = r.u64("ticket.created_at")?;
        let expires_at = r.u64("ticket.expires_at")?;
        let transports = Transports::from_bits_truncate(r.u8("ticket.transports")?);
        let app_id = AppId::read(&mut r)?;
        let mac = r.array("ticket.mac")?;
        r.finish("ticket")?;
        Ok((
            Self {
                key_id,
                session_id,
                app_id,
                transports,
                created_at,
                expires_at,
            },
            mac,
        ))
    }

    /// Encodes the fields followed by `mac` (fuzzing and tests; real tickets
    /// come from [`TicketKeyRing::seal`]).
    #[must_use]
    pub fn encode_with_mac(&self, mac: &[u8; MAC_LEN]) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode_body(&mut v);
        v.extend_from_slice(mac);
        v
    }
}

/// One ticket-signing key.
#[derive(Clone)]
pub struct TicketKey {
    id: u32,
    secret: Vec<u8>,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TicketKey {{ id: {}, secret: <redacted> }}", self.id)
    }
}

/// The ticket keys a node holds: one current key that signs, any number that
/// still verify (for rotation: add the new key everywhere, then make it
/// current, then remove the old one after the longest ticket lifetime).
#[derive(Clone, Debug)]
pub struct TicketKeyRing {
    current: u32,
    keys: Vec<TicketKey>,
}

impl TicketKeyRing {
    /// A ring with one key, which is current. Use at least 32 random bytes.
    #[must_use]
    pub fn new(key_id: u32, secret: Vec<u8>) -> Self {
        Self {
            current: key_id,
            keys: vec![TicketKey { id: key_id, secret }],
        }
    }

    /// Adds (or replaces) a verification key.
    pub fn insert(&mut self, key_id: u32, secret: Vec<u8>) {
        self.keys.retain(|k| k.id != key_id);
        self.keys.push(TicketKey { id: key_id, secret });
    }

    /// Removes a key; the current key cannot be removed.
    pub fn remove(&mut self, key_id: u32) -> bool {
        if key_id == self.current {
            return false;
        }
        let before = self.keys.len();
        self.keys.retain(|k| k.id != key_id);
        before != self.keys.len()
    }

    /// Makes a held key the signing key; fails when the ring lacks it.
    pub fn set_current(&mut self, key_id: u32) -> Result<(), TicketError> {
        if self.key(key_id).is_none() {
            return Err(TicketError::UnknownKey(key_id));
        }
        self.current = key_id;
        Ok(())
    }

    /// The id of the signing key.
    #[must_use]
    pub fn current_id(&self) -> u32 {
        self.current
    }

    fn key(&self, id: u32) -> Option<&TicketKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Signs a ticket with the current key (its `key_id` is overwritten).
    #[must_use]
    pub fn seal(&self, ticket: &Ticket) -> SealedTicket {
        let mut t = ticket.clone();
        t.key_id = self.current;
        let key = match self.key(self.current) {
            Some(k) => k,
            None => unreachable!("the current key is always held"),
        };
        let mut buf = Vec::with_capacity(t.encoded_len());
        t.encode_body(&mut buf);
        let mut mac = hmac(&key.secret);
        mac.update(TICKET_MAC_CONTEXT);
        mac.update(&buf);
        buf.extend_from_slice(&mac.finalize().into_bytes());
        match SealedTicket::new(Bytes::from(buf)) {
            Ok(s) => s,
            Err(_) => unreachable!("a ticket is at most 31 + 64 + 32 bytes"),
        }
    }

    /// Verifies a sealed ticket: parses it, finds its key, checks the MAC in
    /// constant time, then checks `expires_at > now_unix`.
    pub fn open(&self, sealed: &SealedTicket, now_unix: u64) -> Result<Ticket, TicketError> {
        let data = sealed.as_bytes();
        let (ticket, mac) = Ticket::parse_unverified(data).map_err(TicketError::Malformed)?;
        let key = self
            .key(ticket.key_id)
            .ok_or(TicketError::UnknownKey(ticket.key_id))?;
        let mut m = hmac(&key.secret);
        m.update(TICKET_MAC_CONTEXT);
        m.update(&data[..data.len() - MAC_LEN]);
        m.verify_slice(&mac)
            .map_err(|_| TicketError::BadSignature)?;
        if now_unix >= ticket.expires_at {
            return Err(TicketError::Expired {
                expires_at: ticket.expires_at,
                now: now_unix,
            });
        }
        Ok(ticket)
    }
}

/// The proof an `AllocateRequest` carries instead of the app secret.
#[must_use]
pub fn credential_proof(
    secret: &[u8],
    app_id: &AppId,
    nonce: &[u8; 16],
    timestamp: u64,
) -> [u8; 32] {
    let mut m = hmac(secret);
    m.update(PROOF_CONTEXT);
    m.update(&[app_id.as_str().len() as u8]);
    m.update(app_id.as_str().as_bytes());
    m.update(nonce);
    m.update(&timestamp.to_be_bytes());
    m.finalize().into_bytes().into()
}

/// Checks a credential proof in constant time.
#[must_use]
pub fn verify_credential_proof(
    secret: &[u8],
    app_id: &AppId,
    nonce: &[u8; 16],
    timestamp: u64,
    proof: &[u8; 32],
) -> bool {
    let expected = credential_proof(secret, app_id, nonce, timestamp);
    expected.ct_eq(proof).into()
}

/// Constant-time equality of two binding tokens.
#[must_use]
pub fn tokens_equal(a: u64, b: u64) -> bool {
    a.to_be_bytes().ct_eq(&b.to_be_bytes()).into()
}
