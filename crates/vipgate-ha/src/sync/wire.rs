//! The sync message on the wire: one UDP datagram, authenticated with HMAC-SHA-256.
//!
//! ```text
//!  0       4   5    6         8        16       24       32          40        42
//! +-------+---+----+---------+--------+--------+--------+-----------+---------+------+-----+
//! | VGS1  |ver|kind|reserved | epoch  |  seq   |  ack   | ack_epoch | body_len| body | MAC |
//! +-------+---+----+---------+--------+--------+--------+-----------+---------+------+-----+
//!                                                                              (body_len) (32)
//! ```
//!
//! All integers are big endian. The MAC is HMAC-SHA-256 over every byte before it, keyed by
//! the shared [`SyncKey`]. A datagram is at most [`MAX_DATAGRAM`] bytes.
//!
//! Bodies by [`Kind`]:
//! - `Data`: records, each a type byte and its fields (see [`Record`]), back to back;
//! - `Ack`, `BulkRequest`: empty;
//! - `Heartbeat`: role u8, flags u8 (bit 0: bulk complete), connections u32.
//!
//! Records:
//! - `Upsert` (1): orig key, reply key, state u8, flags u8, owner u8, backend u32,
//!   idle_secs u32, fin_seen u8, presence u8 (bit 0 mapping key, bit 1 peer mapping key),
//!   then the keys present; a key is src 4, dst 4, sport 2, dport 2, proto 1;
//! - `Delete` (2): orig key;
//! - `BulkBegin` (3): u32 estimated records; `BulkEnd` (4): u32 records offered.
//!
//! Decoding is strict: every field that can be wrong is checked, so whatever decodes encodes
//! back to the same bytes. Once the length checks passed, nothing indexes out of bounds: all
//! reads go through a checked reader.

use std::fmt;
use std::net::Ipv4Addr;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use vipgate_nat::engine::Exported;
use vipgate_nat::{ConnRecord, ConnState, FlowKey, Proto};

/// The first four bytes of every sync message.
pub const MAGIC: [u8; 4] = *b"VGS1";
/// The protocol version this code speaks.
pub const VERSION: u8 = 1;
/// The largest datagram sent or accepted: below a 1500-byte MTU with room for IP and UDP
/// headers and a tunnel or VLAN on the sync link, so a message is never fragmented.
pub const MAX_DATAGRAM: usize = 1400;
/// Bytes of the header, up to and including the body length.
pub const HEADER_LEN: usize = field::BODY;
/// Bytes of the HMAC-SHA-256 trailer.
pub const MAC_LEN: usize = 32;
/// The largest body that fits in [`MAX_DATAGRAM`].
pub const MAX_BODY: usize = MAX_DATAGRAM - HEADER_LEN - MAC_LEN;
/// The shortest key [`SyncKey::new`] takes: 128 bits.
pub const MIN_KEY_LEN: usize = 16;
/// Bytes of a flow key on the wire.
pub const FLOW_KEY_LEN: usize = 13;

/// Byte offsets of the header fields, so the layout reads in one place.
mod field {
    use std::ops::Range;

    pub(super) const MAGIC: Range<usize> = 0..4;
    pub(super) const VERSION: usize = 4;
    pub(super) const KIND: usize = 5;
    pub(super) const RESERVED: Range<usize> = 6..8;
    pub(super) const EPOCH: Range<usize> = 8..16;
    pub(super) const SEQ: Range<usize> = 16..24;
    pub(super) const ACK: Range<usize> = 24..32;
    pub(super) const ACK_EPOCH: Range<usize> = 32..40;
    pub(super) const BODY_LEN: Range<usize> = 40..42;
    pub(super) const BODY: usize = 42;
}

/// Record type bytes.
mod record_type {
    pub(super) const UPSERT: u8 = 1;
    pub(super) const DELETE: u8 = 2;
    pub(super) const BULK_BEGIN: u8 = 3;
    pub(super) const BULK_END: u8 = 4;
}

/// Presence bits of an upsert's optional mapping keys.
mod presence {
    pub(super) const MAPPING: u8 = 0x01;
    pub(super) const PEER_MAPPING: u8 = 0x02;
}

/// Heartbeat flag bits.
mod heartbeat_flags {
    pub(super) const BULK_COMPLETE: u8 = 0x01;
}

/// Bytes of an upsert with neither mapping key, type byte included.
const UPSERT_MIN_LEN: usize = 1 + 2 * FLOW_KEY_LEN + 3 + 4 + 4 + 1 + 1;
/// Bytes of a heartbeat body.
const HEARTBEAT_LEN: usize = 6;

type HmacSha256 = Hmac<Sha256>;

/// The key both boxes share, ready to sign and verify.
///
/// Keyed once: each message clones the keyed state instead of hashing the key again.
#[derive(Clone)]
pub struct SyncKey {
    mac: HmacSha256,
}

impl fmt::Debug for SyncKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material, not even derived state.
        f.write_str("SyncKey(..)")
    }
}

/// A key [`SyncKey::new`] refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyTooShort {
    /// Bytes given.
    pub len: usize,
}

impl fmt::Display for KeyTooShort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sync key of {} bytes, at least {MIN_KEY_LEN} needed",
            self.len
        )
    }
}

impl std::error::Error for KeyTooShort {}

impl SyncKey {
    /// A key from the shared secret's bytes.
    ///
    /// # Errors
    /// [`KeyTooShort`] for fewer than [`MIN_KEY_LEN`] bytes: HMAC would take them, but a
    /// short secret on a link that carries the whole connection table is a configuration
    /// mistake worth stopping for.
    pub fn new(secret: &[u8]) -> Result<SyncKey, KeyTooShort> {
        let short = KeyTooShort { len: secret.len() };
        if secret.len() < MIN_KEY_LEN {
            return Err(short);
        }
        // HMAC takes keys of any length, so this never fails; mapped rather than unwrapped.
        let mac = <HmacSha256 as Mac>::new_from_slice(secret).map_err(|_| short)?;
        Ok(SyncKey { mac })
    }

    /// The MAC of `signed`.
    fn sign(&self, signed: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = self.mac.clone();
        mac.update(signed);
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the MAC of `signed`, compared in constant time.
    fn verify(&self, signed: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        mac.update(signed);
        mac.verify_slice(tag).is_ok()
    }
}

/// What a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Records, in the sender's reliable stream: the only kind that consumes a sequence
    /// number.
    Data = 1,
    /// Only the acknowledgement fields.
    Ack = 2,
    /// Liveness and status, every heartbeat interval.
    Heartbeat = 3,
    /// The standby asks for a full copy of the table.
    BulkRequest = 4,
}

impl Kind {
    /// The kind for its wire byte.
    pub fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Data,
            2 => Kind::Ack,
            3 => Kind::Heartbeat,
            4 => Kind::BulkRequest,
            _ => return None,
        })
    }
}

/// The sender's role, as its heartbeat says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Role {
    /// Standby: receives the table.
    Backup = 0,
    /// Active: owns the addresses and sends the table.
    Master = 1,
    /// Neither (starting, gated off, faulty).
    Other = 2,
}

impl Role {
    /// The role for its wire byte.
    pub fn from_u8(v: u8) -> Option<Role> {
        Some(match v {
            0 => Role::Backup,
            1 => Role::Master,
            2 => Role::Other,
            _ => return None,
        })
    }
}

/// A heartbeat's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Heartbeat {
    /// The sender's role.
    pub role: Role,
    /// The sender has completed a bulk copy of our table (in our current epoch).
    pub bulk_complete: bool,
    /// Connections and mappings in the sender's table.
    pub conns: u32,
}

/// The fields every message carries besides its kind and body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Header {
    /// The sender's instance id, chosen at start so that it grows across restarts.
    pub epoch: u64,
    /// Data: this message's sequence number. Other kinds: the oldest sequence number the
    /// sender still holds for retransmission (its next one when it holds none), so a
    /// receiver can find where the stream stands.
    pub seq: u64,
    /// The highest sequence number of the receiver's stream the sender got in order; 0 for
    /// none.
    pub ack: u64,
    /// The receiver epoch `ack` refers to; 0 with `ack` 0.
    pub ack_epoch: u64,
}

/// One change to the connection table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// Create or replace a connection or PAT mapping. `record.mapping` is an id in the
    /// sender's table and never travels: it decodes as `None`, and [`Exported::mapping`]
    /// names the mapping by key instead.
    Upsert(Exported),
    /// Remove the connection or mapping whose original key this is.
    Delete(FlowKey),
    /// A bulk copy starts; about this many records follow.
    BulkBegin {
        /// Estimated records in the bulk.
        estimate: u32,
    },
    /// The bulk copy that began with the last `BulkBegin` is over.
    BulkEnd {
        /// Records offered between `BulkBegin` and `BulkEnd`, dropped ones included, so a
        /// receiver that counts fewer knows the copy has holes.
        sent: u32,
    },
}

impl Record {
    /// Bytes this record takes in a body, type byte included.
    pub fn wire_len(&self) -> usize {
        match self {
            Record::Upsert(e) => {
                UPSERT_MIN_LEN
                    + FLOW_KEY_LEN * (usize::from(e.mapping.is_some()))
                    + FLOW_KEY_LEN * (usize::from(e.peer_mapping.is_some()))
            }
            Record::Delete(_) => 1 + FLOW_KEY_LEN,
            Record::BulkBegin { .. } | Record::BulkEnd { .. } => 1 + 4,
        }
    }

    /// Appends the record to a body.
    fn emit(&self, out: &mut Vec<u8>) {
        match self {
            Record::Upsert(e) => {
                let r = &e.record;
                out.push(record_type::UPSERT);
                emit_key(&r.orig, out);
                emit_key(&r.reply, out);
                out.push(r.state as u8);
                out.push(r.flags);
                out.push(r.owner);
                out.extend_from_slice(&r.backend.to_be_bytes());
                out.extend_from_slice(&r.idle_secs.to_be_bytes());
                out.push(r.fin_seen);
                let mut bits = 0;
                if e.mapping.is_some() {
                    bits |= presence::MAPPING;
                }
                if e.peer_mapping.is_some() {
                    bits |= presence::PEER_MAPPING;
                }
                out.push(bits);
                for k in e.mapping.iter().chain(e.peer_mapping.iter()) {
                    emit_key(k, out);
                }
            }
            Record::Delete(k) => {
                out.push(record_type::DELETE);
                emit_key(k, out);
            }
            Record::BulkBegin { estimate } => {
                out.push(record_type::BULK_BEGIN);
                out.extend_from_slice(&estimate.to_be_bytes());
            }
            Record::BulkEnd { sent } => {
                out.push(record_type::BULK_END);
                out.extend_from_slice(&sent.to_be_bytes());
            }
        }
    }

    /// Reads one record.
    fn parse(r: &mut Reader<'_>) -> Result<Record, DecodeError> {
        match r.u8()? {
            record_type::UPSERT => {
                let orig = r.key()?;
                let reply = r.key()?;
                let state = r.u8()?;
                let state = ConnState::from_u8(state).ok_or(DecodeError::BadField(Field::State))?;
                let flags = r.u8()?;
                let owner = r.u8()?;
                let backend = r.u32()?;
                let idle_secs = r.u32()?;
                let fin_seen = r.u8()?;
                let bits = r.u8()?;
                if bits & !(presence::MAPPING | presence::PEER_MAPPING) != 0 {
                    return Err(DecodeError::BadField(Field::Presence));
                }
                let mapping = if bits & presence::MAPPING != 0 {
                    Some(r.key()?)
                } else {
                    None
                };
                let peer_mapping = if bits & presence::PEER_MAPPING != 0 {
                    Some(r.key()?)
                } else {
                    None
                };
                Ok(Record::Upsert(Exported {
                    record: ConnRecord {
                        orig,
                        reply,
                        state,
                        flags,
                        owner,
                        mapping: None,
                        backend,
                        idle_secs,
                        fin_seen,
                    },
                    mapping,
                    peer_mapping,
                }))
            }
            record_type::DELETE => Ok(Record::Delete(r.key()?)),
            record_type::BULK_BEGIN => Ok(Record::BulkBegin { estimate: r.u32()? }),
            record_type::BULK_END => Ok(Record::BulkEnd { sent: r.u32()? }),
            other => Err(DecodeError::UnknownRecord(other)),
        }
    }
}

fn emit_key(k: &FlowKey, out: &mut Vec<u8>) {
    out.extend_from_slice(&k.src.octets());
    out.extend_from_slice(&k.dst.octets());
    out.extend_from_slice(&k.sport.to_be_bytes());
    out.extend_from_slice(&k.dport.to_be_bytes());
    out.push(k.proto.number());
}

/// A message's body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Records, in order.
    Data(Vec<Record>),
    /// Nothing: the header's ack is the point.
    Ack,
    /// Liveness and status.
    Heartbeat(Heartbeat),
    /// A request for a bulk copy.
    BulkRequest,
}

impl Body {
    /// The kind of message this body makes.
    pub fn kind(&self) -> Kind {
        match self {
            Body::Data(_) => Kind::Data,
            Body::Ack => Kind::Ack,
            Body::Heartbeat(_) => Kind::Heartbeat,
            Body::BulkRequest => Kind::BulkRequest,
        }
    }
}

/// A decoded (or to be encoded) sync message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncMessage {
    /// Epochs, sequence and acknowledgement.
    pub header: Header,
    /// The body, which also gives the kind.
    pub body: Body,
}

/// Which field held a value no message has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// The reserved header bytes are not zero.
    Reserved,
    /// A flow key's protocol is not one the engine translates.
    Proto,
    /// A connection state that does not exist.
    State,
    /// Unknown bits in an upsert's presence byte.
    Presence,
    /// A heartbeat role that does not exist.
    Role,
    /// Unknown bits in a heartbeat's flags.
    HeartbeatFlags,
    /// A body longer than its kind has (bytes left after the last field).
    BodyLength,
}

/// Why bytes are not a sync message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// The datagram, or a field inside the body, ends early.
    Truncated {
        /// Bytes (from the start of the datagram) needed.
        needed: usize,
        /// Bytes there are.
        available: usize,
    },
    /// More bytes than the header's body length and the MAC account for.
    TrailingBytes {
        /// Bytes the header accounts for.
        expected: usize,
        /// Bytes received.
        actual: usize,
    },
    /// Longer than [`MAX_DATAGRAM`].
    TooLong {
        /// Bytes received.
        len: usize,
    },
    /// Not a sync message (first four bytes are not `VGS1`).
    BadMagic,
    /// A version this code does not speak.
    BadVersion(u8),
    /// The MAC does not verify: wrong key, or bytes changed on the way.
    BadAuth,
    /// A message kind that does not exist.
    UnknownKind(u8),
    /// A record type that does not exist.
    UnknownRecord(u8),
    /// A field with an impossible value.
    BadField(Field),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { needed, available } => {
                write!(f, "truncated: {needed} bytes needed, {available} available")
            }
            DecodeError::TrailingBytes { expected, actual } => {
                write!(f, "{actual} bytes where the header accounts for {expected}")
            }
            DecodeError::TooLong { len } => {
                write!(f, "{len} bytes, more than the {MAX_DATAGRAM} a message has")
            }
            DecodeError::BadMagic => f.write_str("not a sync message (bad magic)"),
            DecodeError::BadVersion(v) => write!(f, "version {v}, expected {VERSION}"),
            DecodeError::BadAuth => f.write_str("authentication failed (HMAC)"),
            DecodeError::UnknownKind(k) => write!(f, "unknown message kind {k}"),
            DecodeError::UnknownRecord(t) => write!(f, "unknown record type {t}"),
            DecodeError::BadField(field) => write!(f, "impossible value in field {field:?}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A message that cannot be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TooLong {
    /// Bytes of the body.
    pub body: usize,
}

impl fmt::Display for TooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "body of {} bytes, at most {MAX_BODY} fit in a datagram",
            self.body
        )
    }
}

impl std::error::Error for TooLong {}

impl SyncMessage {
    /// Decodes and authenticates a datagram.
    ///
    /// The MAC is checked (in constant time) right after the framing (magic, version,
    /// lengths) and before any other field is read, so nothing of a forged message is
    /// interpreted. Never panics, whatever the bytes.
    ///
    /// # Errors
    /// [`DecodeError::BadAuth`] for a forged or corrupted message; the others for bytes
    /// that are not a well-formed message.
    pub fn decode(bytes: &[u8], key: &SyncKey) -> Result<SyncMessage, DecodeError> {
        if bytes.len() > MAX_DATAGRAM {
            return Err(DecodeError::TooLong { len: bytes.len() });
        }
        let min = HEADER_LEN + MAC_LEN;
        if bytes.len() < min {
            return Err(DecodeError::Truncated {
                needed: min,
                available: bytes.len(),
            });
        }
        let at = Reader::new(bytes);
        if at.array::<4>(field::MAGIC.start)? != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = at.byte(field::VERSION)?;
        if version != VERSION {
            return Err(DecodeError::BadVersion(version));
        }
        let body_len = usize::from(u16::from_be_bytes(at.array(field::BODY_LEN.start)?));
        let expected = HEADER_LEN + body_len + MAC_LEN;
        if bytes.len() < expected {
            return Err(DecodeError::Truncated {
                needed: expected,
                available: bytes.len(),
            });
        }
        if bytes.len() > expected {
            return Err(DecodeError::TrailingBytes {
                expected,
                actual: bytes.len(),
            });
        }
        let (signed, tag) = bytes
            .split_at_checked(HEADER_LEN + body_len)
            .ok_or(DecodeError::BadAuth)?;
        if !key.verify(signed, tag) {
            return Err(DecodeError::BadAuth);
        }

        let kind = at.byte(field::KIND)?;
        let kind = Kind::from_u8(kind).ok_or(DecodeError::UnknownKind(kind))?;
        if at.array::<2>(field::RESERVED.start)? != [0, 0] {
            return Err(DecodeError::BadField(Field::Reserved));
        }
        let header = Header {
            epoch: u64::from_be_bytes(at.array(field::EPOCH.start)?),
            seq: u64::from_be_bytes(at.array(field::SEQ.start)?),
            ack: u64::from_be_bytes(at.array(field::ACK.start)?),
            ack_epoch: u64::from_be_bytes(at.array(field::ACK_EPOCH.start)?),
        };
        // The body reader ends where the MAC starts, so a record can't read into it.
        let mut r = Reader::new(signed);
        r.pos = field::BODY;
        let body = match kind {
            Kind::Data => {
                let mut records = Vec::new();
                while !r.at_end() {
                    records.push(Record::parse(&mut r)?);
                }
                Body::Data(records)
            }
            Kind::Ack => Body::Ack,
            Kind::BulkRequest => Body::BulkRequest,
            Kind::Heartbeat => {
                let role = r.u8()?;
                let role = Role::from_u8(role).ok_or(DecodeError::BadField(Field::Role))?;
                let flags = r.u8()?;
                if flags & !heartbeat_flags::BULK_COMPLETE != 0 {
                    return Err(DecodeError::BadField(Field::HeartbeatFlags));
                }
                Body::Heartbeat(Heartbeat {
                    role,
                    bulk_complete: flags & heartbeat_flags::BULK_COMPLETE != 0,
                    conns: r.u32()?,
                })
            }
        };
        if !r.at_end() {
            return Err(DecodeError::BadField(Field::BodyLength));
        }
        Ok(SyncMessage { header, body })
    }

    /// Encodes and signs the message.
    ///
    /// # Errors
    /// [`TooLong`] when the records do not fit in one datagram (use a [`Batch`] to pack
    /// records into as many messages as they need).
    pub fn encode(&self, key: &SyncKey) -> Result<Vec<u8>, TooLong> {
        let mut body = Vec::new();
        match &self.body {
            Body::Data(records) => {
                for r in records {
                    r.emit(&mut body);
                }
            }
            Body::Ack | Body::BulkRequest => {}
            Body::Heartbeat(h) => {
                body.push(h.role as u8);
                body.push(if h.bulk_complete {
                    heartbeat_flags::BULK_COMPLETE
                } else {
                    0
                });
                body.extend_from_slice(&h.conns.to_be_bytes());
                debug_assert_eq!(body.len(), HEARTBEAT_LEN);
            }
        }
        seal(self.body.kind(), &self.header, &body, key)
    }
}

/// Frames and signs a body of `kind` as is. [`SyncMessage::encode`] and [`Batch`] build valid
/// bodies; this lower level is public so tests and fuzzing can authenticate malformed ones
/// and reach the body parser.
///
/// # Errors
/// [`TooLong`] for a body over [`MAX_BODY`].
pub fn seal(kind: Kind, header: &Header, body: &[u8], key: &SyncKey) -> Result<Vec<u8>, TooLong> {
    let too_long = TooLong { body: body.len() };
    if body.len() > MAX_BODY {
        return Err(too_long);
    }
    let body_len = u16::try_from(body.len()).map_err(|_| too_long)?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + MAC_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&header.epoch.to_be_bytes());
    out.extend_from_slice(&header.seq.to_be_bytes());
    out.extend_from_slice(&header.ack.to_be_bytes());
    out.extend_from_slice(&header.ack_epoch.to_be_bytes());
    out.extend_from_slice(&body_len.to_be_bytes());
    out.extend_from_slice(body);
    let mac = key.sign(&out);
    out.extend_from_slice(&mac);
    Ok(out)
}

/// A record did not fit in the batch; start another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchFull;

/// The body of a Data message being filled: records go in until the next one would make the
/// datagram longer than [`MAX_DATAGRAM`]; [`Batch::seal`] then makes the datagram. Holding
/// at most [`MAX_BODY`] bytes is its invariant, so sealing cannot fail.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    body: Vec<u8>,
    records: u32,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Appends `record`.
    ///
    /// # Errors
    /// [`BatchFull`] when it does not fit; the batch is unchanged. Any record fits an
    /// empty batch.
    pub fn push(&mut self, record: &Record) -> Result<(), BatchFull> {
        if self.body.len() + record.wire_len() > MAX_BODY {
            return Err(BatchFull);
        }
        record.emit(&mut self.body);
        self.records += 1;
        Ok(())
    }

    /// Records in the batch.
    pub fn records(&self) -> u32 {
        self.records
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// The body bytes so far.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The signed Data datagram of these records, under `header`.
    pub fn seal(&self, header: &Header, key: &SyncKey) -> Vec<u8> {
        // Push keeps the body within MAX_BODY, so seal's one error cannot happen; an empty
        // datagram (never sent) would stand for it rather than a panic.
        seal(Kind::Data, header, &self.body, key).unwrap_or_default()
    }
}

/// Checked big-endian reads over a datagram: each read either returns the bytes or a
/// [`DecodeError::Truncated`] that says how far it needed to go.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    /// `N` bytes at `at`, without moving.
    fn array<const N: usize>(&self, at: usize) -> Result<[u8; N], DecodeError> {
        self.bytes
            .get(at..)
            .and_then(<[u8]>::first_chunk::<N>)
            .copied()
            .ok_or(DecodeError::Truncated {
                needed: at.saturating_add(N),
                available: self.bytes.len(),
            })
    }

    /// The byte at `at`, without moving.
    fn byte(&self, at: usize) -> Result<u8, DecodeError> {
        let [b] = self.array::<1>(at)?;
        Ok(b)
    }

    /// The next `N` bytes.
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let a = self.array::<N>(self.pos)?;
        self.pos += N;
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let [b] = self.take::<1>()?;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take()?))
    }

    fn key(&mut self) -> Result<FlowKey, DecodeError> {
        let src = Ipv4Addr::from(self.take::<4>()?);
        let dst = Ipv4Addr::from(self.take::<4>()?);
        let sport = self.u16()?;
        let dport = self.u16()?;
        let proto = Proto::from_number(self.u8()?).ok_or(DecodeError::BadField(Field::Proto))?;
        Ok(FlowKey {
            src,
            dst,
            sport,
            dport,
            proto,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::testing::{exported, flow, key, SECRET};
    use proptest::prelude::*;

    const EPOCH: u64 = 1_767_225_600_000_000;
    const PEER_EPOCH: u64 = 1_767_225_500_000_000;

    /// A heartbeat, MAC computed independently (Python's hmac module).
    #[rustfmt::skip]
    const HEARTBEAT: [u8; 80] = [
        b'V', b'G', b'S', b'1', 1, 3, 0, 0,                     // magic, version, kind, reserved
        0x00, 0x06, 0x47, 0x48, 0x46, 0x20, 0x40, 0x00,         // epoch
        0, 0, 0, 0, 0, 0, 0, 7,                                 // seq (base)
        0, 0, 0, 0, 0, 0, 0, 3,                                 // ack
        0x00, 0x06, 0x47, 0x48, 0x40, 0x2a, 0x5f, 0x00,         // ack epoch
        0, 6,                                                   // body length
        1, 1, 0, 0, 0x03, 0xe8,                                 // master, bulk complete, 1000
        0x7b, 0xe6, 0xdc, 0xea, 0xda, 0xe1, 0x41, 0xc3, 0xe9, 0xf3, 0x80, 0x78, 0x67, 0x84,
        0xcb, 0x0a, 0xc3, 0xa2, 0xa2, 0x25, 0x48, 0xf0, 0x0f, 0xb6, 0x97, 0xe0, 0x8a, 0x48,
        0xbc, 0x17, 0x80, 0xc7,
    ];

    fn heartbeat() -> SyncMessage {
        SyncMessage {
            header: Header {
                epoch: EPOCH,
                seq: 7,
                ack: 3,
                ack_epoch: PEER_EPOCH,
            },
            body: Body::Heartbeat(Heartbeat {
                role: Role::Master,
                bulk_complete: true,
                conns: 1000,
            }),
        }
    }

    /// A Data message with an upsert that names its mapping and a delete; MAC from Python.
    #[rustfmt::skip]
    const DATA: [u8; 141] = [
        b'V', b'G', b'S', b'1', 1, 1, 0, 0,
        0x00, 0x06, 0x47, 0x48, 0x46, 0x20, 0x40, 0x00,         // epoch
        0, 0, 0, 0, 0, 0, 0, 42,                                // seq
        0, 0, 0, 0, 0, 0, 0, 0,                                 // ack: none
        0, 0, 0, 0, 0, 0, 0, 0,                                 // ack epoch: none
        0, 67,                                                  // body length
        1,                                                      // upsert
        198, 18, 0, 10, 203, 0, 113, 7, 0x9c, 0x40, 0x01, 0xbb, 6, // orig
        10, 0, 0, 5, 198, 18, 0, 10, 0x20, 0xfb, 0x9c, 0x40, 6,    // reply
        2, 0x04, 3,                                             // established, flags, owner
        0, 0, 0, 7,                                             // backend
        0, 0, 0, 12,                                            // idle seconds
        0,                                                      // fin seen
        1,                                                      // mapping key present
        10, 0, 0, 5, 0, 0, 0, 0, 0x20, 0xfb, 0, 0, 6,           // mapping key
        2,                                                      // delete
        192, 0, 2, 1, 203, 0, 113, 9, 0xcf, 0x08, 0, 53, 17,    // its key
        0x1c, 0xb6, 0x9b, 0xcc, 0x57, 0x2c, 0x59, 0x1b, 0xe5, 0x70, 0xf6, 0xb1, 0x94, 0xe9,
        0x90, 0xab, 0x3d, 0xb1, 0x20, 0x38, 0x77, 0xcf, 0xbc, 0x37, 0x64, 0x30, 0x15, 0xa0,
        0x4a, 0xc1, 0x6d, 0x4e,
    ];

    fn data() -> SyncMessage {
        let up = Exported {
            record: ConnRecord {
                orig: FlowKey {
                    src: Ipv4Addr::new(198, 18, 0, 10),
                    dst: Ipv4Addr::new(203, 0, 113, 7),
                    sport: 40000,
                    dport: 443,
                    proto: Proto::Tcp,
                },
                reply: FlowKey {
                    src: Ipv4Addr::new(10, 0, 0, 5),
                    dst: Ipv4Addr::new(198, 18, 0, 10),
                    sport: 8443,
                    dport: 40000,
                    proto: Proto::Tcp,
                },
                state: ConnState::TcpEstablished,
                flags: 0x04,
                owner: 3,
                mapping: None,
                backend: 7,
                idle_secs: 12,
                fin_seen: 0,
            },
            mapping: Some(FlowKey {
                src: Ipv4Addr::new(10, 0, 0, 5),
                dst: Ipv4Addr::UNSPECIFIED,
                sport: 8443,
                dport: 0,
                proto: Proto::Tcp,
            }),
            peer_mapping: None,
        };
        let del = FlowKey {
            src: Ipv4Addr::new(192, 0, 2, 1),
            dst: Ipv4Addr::new(203, 0, 113, 9),
            sport: 53000,
            dport: 53,
            proto: Proto::Udp,
        };
        SyncMessage {
            header: Header {
                epoch: EPOCH,
                seq: 42,
                ack: 0,
                ack_epoch: 0,
            },
            body: Body::Data(vec![Record::Upsert(up), Record::Delete(del)]),
        }
    }

    fn encode(m: &SyncMessage) -> Vec<u8> {
        m.encode(&key()).unwrap()
    }

    #[test]
    fn fixtures_encode_and_decode_byte_for_byte() {
        assert_eq!(encode(&heartbeat()), HEARTBEAT);
        assert_eq!(SyncMessage::decode(&HEARTBEAT, &key()), Ok(heartbeat()));
        assert_eq!(encode(&data()), DATA);
        assert_eq!(SyncMessage::decode(&DATA, &key()), Ok(data()));
    }

    /// Every record form: upserts with each combination of mapping keys, and the rest.
    fn every_record() -> Vec<Record> {
        let mut both = exported(9);
        both.mapping = Some(flow(100));
        both.peer_mapping = Some(flow(101));
        let mut peer_only = exported(10);
        peer_only.peer_mapping = Some(flow(102));
        let mut mapping = exported(11);
        mapping.record.state = ConnState::Mapping;
        mapping.record.fin_seen = 3;
        mapping.record.backend = u32::MAX;
        vec![
            Record::Upsert(exported(8)),
            Record::Upsert(both),
            Record::Upsert(peer_only),
            Record::Upsert(mapping),
            Record::Delete(flow(12)),
            Record::BulkBegin { estimate: 70_000 },
            Record::BulkEnd { sent: u32::MAX },
        ]
    }

    #[test]
    fn every_kind_and_record_round_trips() {
        let header = Header {
            epoch: u64::MAX,
            seq: 1,
            ack: u64::MAX - 1,
            ack_epoch: 5,
        };
        let bodies = [
            Body::Data(every_record()),
            Body::Data(Vec::new()),
            Body::Ack,
            Body::BulkRequest,
            Body::Heartbeat(Heartbeat {
                role: Role::Backup,
                bulk_complete: false,
                conns: 0,
            }),
            Body::Heartbeat(Heartbeat {
                role: Role::Other,
                bulk_complete: true,
                conns: u32::MAX,
            }),
        ];
        for body in bodies {
            let m = SyncMessage { header, body };
            let bytes = encode(&m);
            assert!(bytes.len() <= MAX_DATAGRAM);
            assert_eq!(SyncMessage::decode(&bytes, &key()), Ok(m));
        }
        for r in every_record() {
            let mut body = Vec::new();
            r.emit(&mut body);
            assert_eq!(body.len(), r.wire_len(), "{r:?}");
        }
    }

    #[test]
    fn the_sent_mapping_id_never_travels() {
        let mut e = exported(1);
        e.record.mapping = Some(vipgate_nat::ConnId {
            index: 5,
            generation: 7,
        });
        let m = SyncMessage {
            header: Header::default(),
            body: Body::Data(vec![Record::Upsert(e)]),
        };
        e.record.mapping = None;
        let decoded = SyncMessage::decode(&encode(&m), &key());
        assert_eq!(
            decoded.map(|m| m.body),
            Ok(Body::Data(vec![Record::Upsert(e)]))
        );
    }

    /// Bytes the framing reads before the MAC: a flip there is malformed, anywhere else
    /// forged.
    fn framing(byte: usize) -> bool {
        field::MAGIC.contains(&byte) || byte == field::VERSION || field::BODY_LEN.contains(&byte)
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        for fixture in [&HEARTBEAT[..], &DATA[..]] {
            for bit in 0..fixture.len() * 8 {
                let mut b = fixture.to_vec();
                b[bit / 8] ^= 1 << (bit % 8);
                let got = SyncMessage::decode(&b, &key());
                if framing(bit / 8) {
                    assert!(
                        matches!(
                            got,
                            Err(DecodeError::BadMagic
                                | DecodeError::BadVersion(_)
                                | DecodeError::Truncated { .. }
                                | DecodeError::TrailingBytes { .. }
                                | DecodeError::TooLong { .. })
                        ),
                        "bit {bit}: {got:?}"
                    );
                } else {
                    assert_eq!(got, Err(DecodeError::BadAuth), "bit {bit}");
                }
            }
        }
    }

    #[test]
    fn every_truncation_and_extension_is_rejected() {
        for fixture in [&HEARTBEAT[..], &DATA[..]] {
            for len in 0..fixture.len() {
                let got = SyncMessage::decode(&fixture[..len], &key());
                assert!(
                    matches!(got, Err(DecodeError::Truncated { .. })),
                    "{len}: {got:?}"
                );
            }
            let mut longer = fixture.to_vec();
            longer.push(0);
            assert_eq!(
                SyncMessage::decode(&longer, &key()),
                Err(DecodeError::TrailingBytes {
                    expected: fixture.len(),
                    actual: fixture.len() + 1
                })
            );
        }
        assert_eq!(
            SyncMessage::decode(&[0; MAX_DATAGRAM + 1], &key()),
            Err(DecodeError::TooLong {
                len: MAX_DATAGRAM + 1
            })
        );
        assert_eq!(
            SyncMessage::decode(&[0; 80], &key()),
            Err(DecodeError::BadMagic)
        );
    }

    #[test]
    fn wrong_key_is_forged() {
        let other = SyncKey::new(b"another-sixteen-byte-key").unwrap();
        assert_eq!(
            SyncMessage::decode(&DATA, &other),
            Err(DecodeError::BadAuth)
        );
        assert_eq!(
            SyncMessage::decode(&HEARTBEAT, &other),
            Err(DecodeError::BadAuth)
        );
    }

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(
            SyncKey::new(&SECRET[..15]).map(|_| ()),
            Err(KeyTooShort { len: 15 })
        );
        assert!(SyncKey::new(&SECRET[..16]).is_ok());
        assert_eq!(format!("{:?}", key()), "SyncKey(..)");
    }

    /// `body` under `kind`, authenticated, so the body parser is what decides.
    fn decode_body(kind: Kind, body: &[u8]) -> Result<SyncMessage, DecodeError> {
        let bytes = seal(kind, &Header::default(), body, &key()).unwrap();
        SyncMessage::decode(&bytes, &key())
    }

    fn upsert_bytes(e: &Exported) -> Vec<u8> {
        let mut b = Vec::new();
        Record::Upsert(*e).emit(&mut b);
        b
    }

    #[test]
    fn authenticated_but_impossible_fields_are_refused() {
        use DecodeError::*;
        let good = upsert_bytes(&exported(1));
        let with = |at: usize, v: u8| {
            let mut b = good.clone();
            b[at] = v;
            b
        };
        // Offsets in an upsert: type 0, orig 1..14 (proto 13), reply 14..27, state 27,
        // presence 39.
        assert_eq!(decode_body(Kind::Data, &with(0, 9)), Err(UnknownRecord(9)));
        assert_eq!(decode_body(Kind::Data, &with(0, 0)), Err(UnknownRecord(0)));
        assert_eq!(
            decode_body(Kind::Data, &with(13, 2)),
            Err(BadField(Field::Proto))
        );
        assert_eq!(
            decode_body(Kind::Data, &with(26, 0)),
            Err(BadField(Field::Proto))
        );
        assert_eq!(
            decode_body(Kind::Data, &with(27, 11)),
            Err(BadField(Field::State))
        );
        assert_eq!(
            decode_body(Kind::Data, &with(39, 4)),
            Err(BadField(Field::Presence))
        );
        // A presence bit without its key: the key's first field runs past the body.
        assert_eq!(
            decode_body(Kind::Data, &with(39, 1)),
            Err(Truncated {
                needed: HEADER_LEN + good.len() + 4,
                available: HEADER_LEN + good.len()
            })
        );
        for len in 1..good.len() {
            let got = decode_body(Kind::Data, &good[..len]);
            assert!(matches!(got, Err(Truncated { .. })), "{len}: {got:?}");
        }
        assert_eq!(
            decode_body(Kind::Ack, &[0]),
            Err(BadField(Field::BodyLength))
        );
        assert_eq!(
            decode_body(Kind::BulkRequest, &[0]),
            Err(BadField(Field::BodyLength))
        );
        assert_eq!(
            decode_body(Kind::Heartbeat, &[1, 0, 0, 0, 0, 0, 0]),
            Err(BadField(Field::BodyLength))
        );
        assert_eq!(
            decode_body(Kind::Heartbeat, &[3, 0, 0, 0, 0, 0]),
            Err(BadField(Field::Role))
        );
        assert_eq!(
            decode_body(Kind::Heartbeat, &[1, 2, 0, 0, 0, 0]),
            Err(BadField(Field::HeartbeatFlags))
        );
        assert!(matches!(
            decode_body(Kind::Heartbeat, &[1, 0, 0, 0, 0]),
            Err(Truncated { .. })
        ));
        // Kind and reserved bytes are read after authentication: sign them as they are.
        let mut raw = HEARTBEAT.to_vec();
        raw.truncate(HEARTBEAT.len() - MAC_LEN);
        for (at, v, want) in [
            (field::KIND, 0, UnknownKind(0)),
            (field::KIND, 5, UnknownKind(5)),
            (field::RESERVED.start, 1, BadField(Field::Reserved)),
            (field::RESERVED.end - 1, 0x80, BadField(Field::Reserved)),
        ] {
            let mut b = raw.clone();
            b[at] = v;
            let mac = key().sign(&b);
            b.extend_from_slice(&mac);
            assert_eq!(SyncMessage::decode(&b, &key()), Err(want));
        }
    }

    #[test]
    fn a_batch_fills_one_datagram_and_no_more() {
        let mut batch = Batch::new();
        assert!(batch.is_empty());
        let mut n = 0;
        while batch.push(&Record::Upsert(exported(n))).is_ok() {
            n += 1;
        }
        let before = batch.clone();
        assert_eq!(batch.push(&Record::Upsert(exported(n))), Err(BatchFull));
        assert_eq!(batch, before);
        assert_eq!(batch.records(), n);
        let per = Record::Upsert(exported(0)).wire_len();
        assert_eq!(n as usize, MAX_BODY / per);
        // A smaller record may still fit.
        let _ = batch.push(&Record::BulkEnd { sent: n });
        let header = Header {
            epoch: 1,
            seq: 1,
            ..Header::default()
        };
        let bytes = batch.seal(&header, &key());
        assert!(bytes.len() <= MAX_DATAGRAM);
        let Ok(SyncMessage {
            body: Body::Data(records),
            ..
        }) = SyncMessage::decode(&bytes, &key())
        else {
            panic!("the batch does not decode");
        };
        assert_eq!(records.len(), batch.records() as usize);
        assert_eq!(records.first(), Some(&Record::Upsert(exported(0))));
        assert_eq!(
            seal(Kind::Data, &header, &[0; MAX_BODY + 1], &key()),
            Err(TooLong { body: MAX_BODY + 1 })
        );
    }

    fn arb_key() -> impl Strategy<Value = FlowKey> {
        (
            any::<u32>(),
            any::<u32>(),
            any::<u16>(),
            any::<u16>(),
            0..3u8,
        )
            .prop_map(|(s, d, sp, dp, p)| FlowKey {
                src: Ipv4Addr::from(s),
                dst: Ipv4Addr::from(d),
                sport: sp,
                dport: dp,
                proto: [Proto::Icmp, Proto::Tcp, Proto::Udp][usize::from(p)],
            })
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        let upsert = (
            (arb_key(), arb_key(), 0..=10u8, any::<u8>(), any::<u8>()),
            (any::<u32>(), any::<u32>(), any::<u8>()),
            (
                proptest::option::of(arb_key()),
                proptest::option::of(arb_key()),
            ),
        )
            .prop_map(
                |((orig, reply, state, flags, owner), (backend, idle_secs, fin_seen), (m, p))| {
                    Record::Upsert(Exported {
                        record: ConnRecord {
                            orig,
                            reply,
                            state: ConnState::from_u8(state).unwrap(),
                            flags,
                            owner,
                            mapping: None,
                            backend,
                            idle_secs,
                            fin_seen,
                        },
                        mapping: m,
                        peer_mapping: p,
                    })
                },
            );
        prop_oneof![
            upsert,
            arb_key().prop_map(Record::Delete),
            any::<u32>().prop_map(|estimate| Record::BulkBegin { estimate }),
            any::<u32>().prop_map(|sent| Record::BulkEnd { sent }),
        ]
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_any_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..1500),
        ) {
            let _ = SyncMessage::decode(&bytes, &key());
        }

        /// Authenticated bodies of any bytes reach the parser; whatever it accepts encodes
        /// back to the same datagram.
        #[test]
        fn decode_of_authenticated_bytes_is_canonical(
            kind in 1..=4u8,
            seq in any::<u64>(),
            body in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let kind = Kind::from_u8(kind).unwrap();
            let header = Header { epoch: 1, seq, ack: 0, ack_epoch: 0 };
            let bytes = seal(kind, &header, &body, &key()).unwrap();
            match SyncMessage::decode(&bytes, &key()) {
                Ok(m) => prop_assert_eq!(m.encode(&key()).ok(), Some(bytes)),
                Err(e) => prop_assert_ne!(e, DecodeError::BadAuth),
            }
        }

        #[test]
        fn records_round_trip(
            records in proptest::collection::vec(arb_record(), 0..20),
            seq in any::<u64>(),
        ) {
            let m = SyncMessage {
                header: Header { epoch: 2, seq, ack: 1, ack_epoch: 3 },
                body: Body::Data(records),
            };
            let bytes = m.encode(&key()).unwrap();
            prop_assert_eq!(SyncMessage::decode(&bytes, &key()), Ok(m));
        }
    }
}
