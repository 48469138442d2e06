//! The connection table: one fixed-capacity table shared by all workers, in which every
//! connection is found from its original tuple and from its reply tuple.
//!
//! # Layout
//! - a slab of 64-byte entries, one per connection of capacity; all fields atomic, read under
//!   a per-entry generation (seqlock), so lookups take no lock and never wait;
//! - an index of 64-byte buckets of eight slots (tag, entry, direction); each key has two
//!   candidate buckets and goes into the first unless it is nearly full; 7 slots per
//!   connection (load 0.29), so an established-flow lookup reads one bucket line and one
//!   entry line;
//! - free lists linked through the free entries (no memory of their own), one per group of
//!   workers, so that inserts on different cores do not share a cache line.
//!
//! All of it is allocated by [`ConnTable::new`]: 121.75 bytes per connection plus about 1 KiB.
//! Inserting, looking up, refreshing and removing allocate nothing.
//!
//! # Batches
//! For a batch of packets: [`ConnTable::hash`] and [`ConnTable::prefetch`] every key, then
//! [`ConnTable::prefetch_entry`] every hash, then [`ConnTable::lookup_hashed`]. In a large
//! table this overlaps the memory waits of the whole batch; in a small one, where everything
//! is in cache, the second pass costs more than it saves.
//!
//! # Concurrency
//! An insert claims index slots marked PENDING (invisible to lookups), then looks in both
//! candidate buckets of the key for another live connection with the same key. A committed
//! one makes it back out. Between two pending ones the slot at the lower position cancels
//! (marks KILLED) the other's and goes on; the higher one backs out and waits a bounded time
//! for the other to settle. Claims, scans, kills and commits are `SeqCst`, so of two inserts of
//! one key at least one sees the other: never two live connections with one key.
//!
//! Removal sets DEAD in the entry's `life` word (one CAS, so a remover, the reclaimer and
//! `acquire_ref` agree on who wins), unlinks both keys, then frees the entry with a new
//! generation: ids and hits of the old connection stop matching it.

mod entry;
mod free;
mod huge;
mod index;
#[cfg(test)]
mod tests;

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{fence, AtomicU16, Ordering};

use entry::{Entry, Life, Snapshot, DEAD, INSERTING, REFS_MASK};
use free::{FreeList, SHARDS};
use index::{Bucket, Place, KILLED, PENDING, SLOTS, SLOTS_PER_CONN};

use crate::key::FlowKey;
use crate::state::{next_tcp_state, ConnState, Dir};
use crate::timeouts::{SharedTimeouts, Timeouts};

/// A connection's handle: its entry and the generation of that entry when it was created, so
/// that a handle kept after the connection went never reaches the entry's next connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    /// Entry index.
    pub index: u32,
    /// Entry generation (odd for any connection).
    pub generation: u32,
}

/// A connection to insert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewConn {
    /// The tuple of the packet that opened it, as received.
    pub orig: FlowKey,
    /// The tuple of its replies as they arrive, i.e. after translation.
    pub reply: FlowKey,
    /// Initial state.
    pub state: ConnState,
    /// Opaque to the table (translation kind and the like).
    pub flags: u8,
    /// The worker that created it.
    pub owner: u8,
    /// The PAT mapping this connection holds a reference on (taken with
    /// [`ConnTable::acquire_ref`]). The table only keeps the id: whoever sees the connection
    /// go (the `reclaim` callback, the caller of `remove`) releases the reference, and the
    /// caller keeps it when the insert fails.
    pub mapping: Option<ConnId>,
    /// Opaque backend id, `u32::MAX` for none.
    pub backend: u32,
}

/// What a lookup found: a consistent snapshot of one connection, and the direction of the
/// looked-up key in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// The connection.
    pub id: ConnId,
    /// `Orig` if the key was the original tuple, `Reply` if it was the reply tuple.
    pub dir: Dir,
    /// Original tuple.
    pub orig: FlowKey,
    /// Reply tuple.
    pub reply: FlowKey,
    /// State when read.
    pub state: ConnState,
    /// Opaque flags.
    pub flags: u8,
    /// Creating worker.
    pub owner: u8,
    /// The PAT mapping the connection references.
    pub mapping: Option<ConnId>,
    /// Opaque backend id.
    pub backend: u32,
}

/// A connection as state sync carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnRecord {
    /// Original tuple.
    pub orig: FlowKey,
    /// Reply tuple.
    pub reply: FlowKey,
    /// State.
    pub state: ConnState,
    /// Opaque flags.
    pub flags: u8,
    /// Creating worker.
    pub owner: u8,
    /// The PAT mapping the connection references (an id of the table it was read from).
    pub mapping: Option<ConnId>,
    /// Opaque backend id.
    pub backend: u32,
    /// Seconds since the last packet.
    pub idle_secs: u32,
    /// Which directions have sent a FIN (bit per [`Dir`]), so a closing TCP connection goes
    /// on closing the same way after failover.
    pub fin_seen: u8,
}

/// Why an insert was refused. The table is unchanged in every case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertError {
    /// No free entry (the table holds `capacity` connections), or, rarely and only near
    /// capacity, both index buckets of a key are full.
    Full,
    /// A connection with the original tuple as one of its keys exists: the hit says which,
    /// and in which direction (the packet belongs to it). Under a concurrent insert of the same
    /// tuple the hit may be that competing connection while it is still being inserted.
    Exists(Hit),
    /// The reply tuple is a key of another connection (or equals the original tuple).
    Clash,
}

impl fmt::Display for InsertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InsertError::Full => f.write_str("connection table full"),
            InsertError::Exists(hit) => write!(
                f,
                "connection exists: {:?} is the {:?} tuple of entry {}",
                match hit.dir {
                    Dir::Orig => hit.orig,
                    Dir::Reply => hit.reply,
                },
                hit.dir,
                hit.id.index
            ),
            InsertError::Clash => f.write_str("reply tuple already used by another connection"),
        }
    }
}

impl std::error::Error for InsertError {}

/// Why a table could not be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableError {
    /// A capacity of 0.
    ZeroCapacity,
    /// A capacity above `max`, or whose memory could not be allocated.
    TooLarge {
        /// Requested capacity.
        capacity: u64,
        /// Largest capacity the table supports.
        max: u64,
    },
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::ZeroCapacity => f.write_str("connection table capacity must be at least 1"),
            TableError::TooLarge { capacity, max } => write!(
                f,
                "connection table capacity {capacity} too large: at most {max}, and {} bytes \
                 of memory must be available",
                capacity.saturating_mul(ConnTable::BYTES_PER_CONN)
            ),
        }
    }
}

impl std::error::Error for TableError {}

/// Where a reclaimer stopped in its share of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReclaimCursor {
    part: u32,
    parts: u32,
    next: u32,
}

impl ReclaimCursor {
    /// A cursor over share `part` of `parts` equal shares of the entries (`parts` 0 counts as
    /// 1, `part` is taken modulo `parts`). Reclaimers with distinct parts may run at once.
    pub fn new(part: u32, parts: u32) -> Self {
        let parts = parts.max(1);
        ReclaimCursor {
            part: part % parts,
            parts,
            next: 0,
        }
    }
}

/// Outcome of linking one key.
enum LinkError {
    /// Another live connection has the key.
    Exists(Hit),
    /// Both buckets of the key are full.
    Full,
}

/// What a scan of a key's buckets found besides the inserting entry itself.
enum Scan {
    /// No other connection with the key.
    Clear,
    /// A committed one.
    Committed(Hit),
    /// Only pending ones; the lowest slot position.
    Pending { pos: usize, value: u64, hit: Hit },
}

/// Rounds of claim-scan-commit before an insert that keeps losing to a pending insert of the
/// same key gives up and reports that one.
const LINK_ROUNDS: u32 = 8;
/// Kill-and-rescan steps within one round.
const RESCANS: u32 = 64;
/// Spins waiting for a competing pending slot to commit or go (a few microseconds).
const WAIT_SPINS: u32 = 1024;

/// The connection table. See the [module documentation](self).
pub struct ConnTable {
    entries: Box<[Entry]>,
    buckets: Box<[Bucket]>,
    /// Per bucket: how many keys whose first bucket it is live in their second (16 bits: with
    /// randomly seeded hashes a bucket never sees thousands of its keys spill). A lookup
    /// that misses in a first bucket whose count is 0 stops there instead of reading a second
    /// random line: nearly every miss (every new connection) saves a cache miss.
    spilled: Box<[AtomicU16]>,
    free: FreeList,
    hasher: ahash::RandomState,
    timeouts: SharedTimeouts,
    capacity: u32,
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<ConnTable>();
};

impl fmt::Debug for ConnTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnTable")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .field("buckets", &self.buckets.len())
            .finish_non_exhaustive()
    }
}

impl ConnTable {
    /// The largest capacity [`ConnTable::new`] accepts.
    pub const MAX_CAPACITY: u32 = 1 << 31;

    /// Bytes per connection of capacity, at most: the entry, its index slots and the spill
    /// counters (7/8 of a bucket's 2 bytes), plus about 1 KiB per table.
    pub const BYTES_PER_CONN: u64 = 64 + SLOTS_PER_CONN * 8 + 2;

    /// A table for `capacity` connections with `timeouts`; allocates all its memory.
    ///
    /// # Errors
    /// [`TableError::ZeroCapacity`], or [`TableError::TooLarge`] above
    /// [`ConnTable::MAX_CAPACITY`] or when the memory can't be allocated.
    pub fn new(capacity: u32, timeouts: Timeouts) -> Result<ConnTable, TableError> {
        if capacity == 0 {
            return Err(TableError::ZeroCapacity);
        }
        let too_large = TableError::TooLarge {
            capacity: u64::from(capacity),
            max: u64::from(Self::MAX_CAPACITY),
        };
        if capacity > Self::MAX_CAPACITY {
            return Err(too_large);
        }
        let n_buckets = (u64::from(capacity) * SLOTS_PER_CONN).div_ceil(SLOTS as u64);
        let entries = alloc_with(capacity as usize, Entry::default).ok_or(too_large)?;
        let buckets = alloc_with(n_buckets as usize, Bucket::default).ok_or(too_large)?;
        let spilled = alloc_with(n_buckets as usize, AtomicU16::default).ok_or(too_large)?;
        let free = FreeList::new(&entries);
        let seeds = std::hash::RandomState::new();
        let hasher = ahash::RandomState::with_seeds(
            seeds.hash_one(0u64),
            seeds.hash_one(1u64),
            seeds.hash_one(2u64),
            seeds.hash_one(3u64),
        );
        Ok(ConnTable {
            entries,
            buckets,
            spilled,
            free,
            hasher,
            timeouts: SharedTimeouts::new(&timeouts),
            capacity,
        })
    }

    /// The number of connections the table holds at most.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Connections held (including inserts in flight); may lag concurrent changes.
    pub fn len(&self) -> u32 {
        self.free.taken().clamp(0, i64::from(self.capacity)) as u32
    }

    /// Whether the table holds no connection.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of memory the table holds, all included.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val::<[Entry]>(&self.entries)
            + std::mem::size_of_val::<[Bucket]>(&self.buckets)
            + std::mem::size_of_val::<[AtomicU16]>(&self.spilled)
            + std::mem::size_of::<Self>()
    }

    /// The timeouts in force.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts.load()
    }

    /// Changes the timeouts (a reload): each connection's next expiry check uses the new
    /// value of its state, measured from its last packet as before.
    pub fn set_timeouts(&self, t: &Timeouts) {
        self.timeouts.store(t);
    }

    /// The hash of a key, for [`ConnTable::prefetch`] and [`ConnTable::lookup_hashed`].
    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        self.hash_words(key.pack())
    }

    #[inline]
    fn hash_words(&self, words: [u64; 2]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write_u64(words[0]);
        h.write_u64(words[1]);
        h.finish()
    }

    #[inline]
    fn n_buckets(&self) -> u64 {
        self.buckets.len() as u64
    }

    /// Starts loading the first candidate bucket of a key (where nearly all keys are), so
    /// that a batch can hash all its keys, prefetch, then look them up.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        if let Some(bucket) = self
            .buckets
            .get(index::first_bucket(hash, self.n_buckets()))
        {
            prefetch_line((bucket as *const Bucket).cast());
        }
    }

    /// Starts loading the entries the first candidate bucket of a key points to (normally
    /// the one entry of the key). Call it after [`ConnTable::prefetch`] has had time to bring
    /// the bucket in, e.g. in a second pass over a batch, so that the lookups that follow find
    /// both lines of a hit in cache: at a million flows a lookup otherwise waits for the
    /// entry after the bucket.
    #[inline]
    pub fn prefetch_entry(&self, hash: u64) {
        let n = self.n_buckets();
        let tag = index::tag(hash, n);
        let Some(bucket) = self.buckets.get(index::first_bucket(hash, n)) else {
            return;
        };
        for slot in &bucket.slots {
            let v = slot.load(Ordering::Relaxed);
            if index::is_committed_with(v, tag) {
                if let Some(e) = self.entries.get(index::slot_index(v) as usize) {
                    prefetch_line((e as *const Entry).cast());
                }
            }
        }
    }

    /// The connection `key` belongs to, if any.
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<Hit> {
        self.lookup_hashed(key, self.hash(key))
    }

    /// [`ConnTable::lookup`] with the key's hash already computed by [`ConnTable::hash`].
    ///
    /// Wait-free: reads a bucket, then the entry of each slot whose tag matches, and keeps a
    /// hit only if the entry's generation did not move while reading and its key equals `key`.
    #[inline]
    pub fn lookup_hashed(&self, key: &FlowKey, hash: u64) -> Option<Hit> {
        let words = key.pack();
        let n = self.n_buckets();
        let first = index::first_bucket(hash, n);
        let tag = index::tag(hash, n);
        if let Some(hit) = self.find_in(first, tag, words, key) {
            return Some(hit);
        }
        if self
            .spilled
            .get(first)
            .is_none_or(|c| c.load(Ordering::Acquire) == 0)
        {
            return None;
        }
        let second = index::second_bucket(hash, n, first);
        if second == first {
            return None;
        }
        self.find_in(second, tag, words, key)
    }

    #[inline]
    fn find_in(&self, b: usize, tag: u64, words: [u64; 2], key: &FlowKey) -> Option<Hit> {
        let bucket = self.buckets.get(b)?;
        for slot in &bucket.slots {
            let v = slot.load(Ordering::Acquire);
            if !index::is_committed_with(v, tag) {
                continue;
            }
            let idx = index::slot_index(v);
            let dir = index::slot_dir(v);
            let Some(snap) = self.entries.get(idx as usize).and_then(Entry::read) else {
                continue;
            };
            if !snap.life.is_live() || snap.key(dir) != words {
                continue;
            }
            if let Some(hit) = hit_from(idx, dir, &snap, Some(key)) {
                return Some(hit);
            }
        }
        None
    }

    /// Inserts a connection, found afterwards from `conn.orig` (as `Orig`) and `conn.reply`
    /// (as `Reply`); `now` is its last-seen time. See [`NewConn::mapping`] for the mapping
    /// reference.
    ///
    /// # Errors
    /// [`InsertError::Full`], [`InsertError::Exists`] if `conn.orig` is a key of a live
    /// connection, [`InsertError::Clash`] if `conn.reply` is (or equals `conn.orig`).
    pub fn insert(&self, conn: &NewConn, now: u32) -> Result<ConnId, InsertError> {
        self.insert_entry(
            &Fields {
                orig: conn.orig,
                reply: conn.reply,
                state: conn.state,
                fin_seen: 0,
                flags: conn.flags,
                owner: conn.owner,
                mapping: conn.mapping,
                backend: conn.backend,
            },
            now,
        )
    }

    /// Standby side of state sync: inserts the connection exactly as the active box had it,
    /// with `last_seen = now - rec.idle_secs` (saturating).
    ///
    /// `rec.mapping` must be an id of *this* table on which the caller holds a reference (the
    /// active box's id translated), or `None`, as for [`NewConn::mapping`].
    ///
    /// # Errors
    /// As [`ConnTable::insert`]; on `Exists` the caller may `remove` the hit and retry.
    pub fn install(&self, rec: &ConnRecord, now: u32) -> Result<ConnId, InsertError> {
        // Only the two direction bits mean anything; the rest of a synced byte is ignored.
        let fin_seen = rec.fin_seen & (Dir::Orig.bit() | Dir::Reply.bit());
        self.insert_entry(
            &Fields {
                orig: rec.orig,
                reply: rec.reply,
                state: rec.state,
                fin_seen,
                flags: rec.flags,
                owner: rec.owner,
                mapping: rec.mapping,
                backend: rec.backend,
            },
            now.saturating_sub(rec.idle_secs),
        )
    }

    fn insert_entry(&self, f: &Fields, last_seen: u32) -> Result<ConnId, InsertError> {
        let orig = f.orig.pack();
        let reply = f.reply.pack();
        if orig == reply {
            return Err(InsertError::Clash);
        }
        let n = self.n_buckets();
        let orig_place = Place::new(self.hash_words(orig), n);
        let reply_place = Place::new(self.hash_words(reply), n);
        // The four candidate buckets are read one after the other below; loading them at once
        // makes an insert into a large table wait for memory about once instead of four times.
        for b in orig_place.buckets().chain(reply_place.buckets()) {
            if let Some(bucket) = self.buckets.get(b) {
                prefetch_line((bucket as *const Bucket).cast());
            }
        }
        let home = usize::from(f.owner) % SHARDS;
        let (idx, shard) = self
            .free
            .pop(&self.entries, home)
            .ok_or(InsertError::Full)?;
        let Some(e) = self.entries.get(idx as usize) else {
            return Err(InsertError::Full);
        };
        let generation = Life(e.life.load(Ordering::Relaxed)).generation() | 1;
        // Readers that still hold this entry's old slots must see the generation move before
        // any new field value: pairs with the acquire fence in `Entry::read`.
        fence(Ordering::Release);
        for (a, w) in e.orig.iter().zip(orig) {
            a.store(w, Ordering::Relaxed);
        }
        for (a, w) in e.reply.iter().zip(reply) {
            a.store(w, Ordering::Relaxed);
        }
        e.last_seen.store(last_seen, Ordering::Relaxed);
        e.backend.store(f.backend, Ordering::Relaxed);
        let (m_index, m_gen) = f.mapping.map_or((0, 0), |m| (m.index, m.generation));
        e.mapping_index.store(m_index, Ordering::Relaxed);
        e.mapping_gen.store(m_gen, Ordering::Relaxed);
        e.meta.store(
            u32::from(f.flags) | u32::from(f.owner) << 8,
            Ordering::Relaxed,
        );
        e.life.store(
            Life::allocated(generation, f.state, f.fin_seen).0,
            Ordering::Release,
        );

        let abandon = |e: &Entry| {
            e.life
                .store(Life::free(generation.wrapping_add(1)).0, Ordering::Release);
            self.free.push(&self.entries, idx, shard);
        };
        let orig_pos = match self.link(idx, Dir::Orig, orig, &orig_place) {
            Ok(pos) => pos,
            Err(err) => {
                abandon(e);
                return Err(match err {
                    LinkError::Exists(hit) => InsertError::Exists(hit),
                    LinkError::Full => InsertError::Full,
                });
            }
        };
        if let Err(err) = self.link(idx, Dir::Reply, reply, &reply_place) {
            self.clear_own(orig_pos, &orig_place);
            abandon(e);
            return Err(match err {
                LinkError::Exists(_) => InsertError::Clash,
                LinkError::Full => InsertError::Full,
            });
        }
        e.life.fetch_and(!INSERTING, Ordering::Release);
        Ok(ConnId {
            index: idx,
            generation,
        })
    }

    /// Links key `dir` (packed `words`) of entry `idx` into the index, unless another live
    /// connection has that key; the committed slot's position.
    fn link(&self, idx: u32, dir: Dir, words: [u64; 2], place: &Place) -> Result<usize, LinkError> {
        let committed = place.slot_value(idx, dir);
        let pending = committed | PENDING;
        let mut rival: Option<Hit> = None;
        for round in 0..LINK_ROUNDS {
            if round > 0 {
                // Lost a tie last round: let the winner settle before competing again.
                match self.scan(place, idx, words) {
                    Scan::Committed(hit) => return Err(LinkError::Exists(hit)),
                    Scan::Pending { pos, value, hit } => {
                        rival = Some(hit);
                        self.wait_settled(pos, value);
                    }
                    Scan::Clear => {}
                }
            }
            let pos = index::claim(&self.buckets, place, pending).ok_or(LinkError::Full)?;
            let Some(own) = index::slot_at(&self.buckets, pos) else {
                return Err(LinkError::Full);
            };
            // Counted before the slot can commit, so a lookup that finds the count at 0
            // cannot miss a committed key in the second bucket.
            if index::is_spilled(place, pos) {
                if let Some(c) = self.spilled.get(place.first) {
                    c.fetch_add(1, Ordering::SeqCst);
                }
            }
            for _ in 0..RESCANS {
                match self.scan(place, idx, words) {
                    Scan::Committed(hit) => {
                        self.clear_own(pos, place);
                        return Err(LinkError::Exists(hit));
                    }
                    Scan::Pending {
                        pos: theirs,
                        value,
                        hit,
                    } => {
                        rival = Some(hit);
                        if pos < theirs {
                            // Cancel theirs; whatever the CAS finds, rescan.
                            if let Some(slot) = index::slot_at(&self.buckets, theirs) {
                                let _ = slot.compare_exchange(
                                    value,
                                    value | KILLED,
                                    Ordering::SeqCst,
                                    Ordering::SeqCst,
                                );
                            }
                        } else {
                            break;
                        }
                    }
                    Scan::Clear => {
                        if own
                            .compare_exchange(
                                pending,
                                committed,
                                Ordering::SeqCst,
                                Ordering::SeqCst,
                            )
                            .is_ok()
                        {
                            return Ok(pos);
                        }
                        // Killed by a lower competitor.
                        break;
                    }
                }
            }
            // Only this thread writes a pending or killed slot of its own back to empty.
            self.clear_own(pos, place);
        }
        match self.scan(place, idx, words) {
            Scan::Committed(hit) | Scan::Pending { hit, .. } => Err(LinkError::Exists(hit)),
            Scan::Clear => Err(rival.map_or(LinkError::Full, LinkError::Exists)),
        }
    }

    /// Empties a slot this thread claimed for a key of `place`, and uncounts it if it spilled.
    fn clear_own(&self, pos: usize, place: &Place) {
        if let Some(slot) = index::slot_at(&self.buckets, pos) {
            slot.store(0, Ordering::SeqCst);
        }
        self.uncount_spill(pos, place);
    }

    fn uncount_spill(&self, pos: usize, place: &Place) {
        if index::is_spilled(place, pos) {
            if let Some(c) = self.spilled.get(place.first) {
                c.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Looks in the key's buckets for another allocated, not dying connection with key
    /// `words`: committed slots first, else the lowest pending one.
    fn scan(&self, place: &Place, own: u32, words: [u64; 2]) -> Scan {
        let mut lowest: Option<(usize, u64, Hit)> = None;
        for b in place.buckets() {
            let Some(bucket) = self.buckets.get(b) else {
                continue;
            };
            for (i, slot) in bucket.slots.iter().enumerate() {
                let v = slot.load(Ordering::SeqCst);
                if !index::is_claimed_with(v, place.tag) || index::slot_index(v) == own {
                    continue;
                }
                let idx = index::slot_index(v);
                let dir = index::slot_dir(v);
                let Some(snap) = self.entries.get(idx as usize).and_then(Entry::read) else {
                    continue;
                };
                if snap.life.is_dead() || snap.key(dir) != words {
                    continue;
                }
                let Some(hit) = hit_from(idx, dir, &snap, None) else {
                    continue;
                };
                if v & PENDING == 0 {
                    return Scan::Committed(hit);
                }
                let pos = b * SLOTS + i;
                if lowest.is_none_or(|(p, _, _)| pos < p) {
                    lowest = Some((pos, v, hit));
                }
            }
        }
        match lowest {
            Some((pos, value, hit)) => Scan::Pending { pos, value, hit },
            None => Scan::Clear,
        }
    }

    /// Spins (bounded) until the slot at `pos` no longer holds `value`.
    fn wait_settled(&self, pos: usize, value: u64) {
        let Some(slot) = index::slot_at(&self.buckets, pos) else {
            return;
        };
        for _ in 0..WAIT_SPINS {
            if slot.load(Ordering::Acquire) != value {
                return;
            }
            std::hint::spin_loop();
        }
    }

    /// Records a packet of `hit`'s connection at `now`: sets its last-seen time (written only
    /// when it changes, to keep the shared entry line clean) and advances its TCP state with
    /// `tcp_flags` (0 for other protocols). The new state if it changed; nothing happens if
    /// the connection is gone, even if its entry was reused.
    #[inline]
    pub fn refresh(&self, hit: &Hit, now: u32, tcp_flags: u8) -> Option<ConnState> {
        let e = self.entries.get(hit.id.index as usize)?;
        let mut cur = Life(e.life.load(Ordering::Acquire));
        if cur.generation() != hit.id.generation || !cur.is_live() {
            return None;
        }
        if e.last_seen.load(Ordering::Relaxed) != now {
            e.last_seen.store(now, Ordering::Relaxed);
        }
        loop {
            let state = cur.state()?;
            let (next, fin_seen) = next_tcp_state(state, cur.fin_seen(), hit.dir, tcp_flags);
            if next == state && fin_seen == cur.fin_seen() {
                return None;
            }
            let new = cur.with_state(next, fin_seen);
            match e
                .life
                .compare_exchange_weak(cur.0, new.0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return (next != state).then_some(next),
                Err(v) => {
                    cur = Life(v);
                    if cur.generation() != hit.id.generation || !cur.is_live() {
                        return None;
                    }
                }
            }
        }
    }

    /// Standby side of state sync: sets connection `id`'s state, FIN bits and last-seen time
    /// to what the active box has. False if the connection is gone.
    pub fn sync_update(&self, id: ConnId, state: ConnState, fin_seen: u8, last_seen: u32) -> bool {
        let Some(e) = self.entries.get(id.index as usize) else {
            return false;
        };
        let fin_seen = fin_seen & (Dir::Orig.bit() | Dir::Reply.bit());
        let mut cur = Life(e.life.load(Ordering::Acquire));
        loop {
            if cur.generation() != id.generation || !cur.is_live() {
                return false;
            }
            let new = cur.with_state(state, fin_seen);
            if new.0 == cur.0 {
                break;
            }
            match e
                .life
                .compare_exchange_weak(cur.0, new.0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(v) => cur = Life(v),
            }
        }
        e.last_seen.store(last_seen, Ordering::Relaxed);
        true
    }

    /// The id of the connection live at entry `index`, if any. For a holder of a reference on
    /// that connection (which keeps it from going) this is the id it referenced.
    pub fn live_id(&self, index: u32) -> Option<ConnId> {
        let life = Life(
            self.entries
                .get(index as usize)?
                .life
                .load(Ordering::Acquire),
        );
        life.is_live().then_some(ConnId {
            index,
            generation: life.generation(),
        })
    }

    /// Takes a reference on connection `id` (a PAT mapping, for a connection that uses it):
    /// it does not expire while referenced. `false` if it is gone (or holds 2^24 - 1
    /// references already).
    pub fn acquire_ref(&self, id: ConnId) -> bool {
        let Some(e) = self.entries.get(id.index as usize) else {
            return false;
        };
        let mut cur = Life(e.life.load(Ordering::Acquire));
        loop {
            if cur.generation() != id.generation
                || !cur.is_live()
                || u64::from(cur.refs()) == REFS_MASK
            {
                return false;
            }
            match e.life.compare_exchange_weak(
                cur.0,
                cur.0 + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(v) => cur = Life(v),
            }
        }
    }

    /// Moves entry `id`'s last use forward to `last_used` (never back): a PAT mapping's
    /// timeout counts from the last packet of any connection through it, which its
    /// connections report as they go. Nothing if `id` is stale.
    pub fn note_use(&self, id: ConnId, last_used: u32) {
        let Some(e) = self.entries.get(id.index as usize) else {
            return;
        };
        if Life(e.life.load(Ordering::Acquire)).generation() == id.generation {
            e.last_seen.fetch_max(last_used, Ordering::Relaxed);
        }
    }

    /// Drops a reference taken with [`ConnTable::acquire_ref`]; nothing if `id` is stale.
    pub fn release_ref(&self, id: ConnId) {
        let Some(e) = self.entries.get(id.index as usize) else {
            return;
        };
        let mut cur = Life(e.life.load(Ordering::Acquire));
        while cur.generation() == id.generation && cur.refs() > 0 {
            match e.life.compare_exchange_weak(
                cur.0,
                cur.0 - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(v) => cur = Life(v),
            }
        }
    }

    /// Removes connection `id` whatever its references (ids of it held elsewhere just stop
    /// matching); the connection as it was at `now` (the caller releases its `mapping`
    /// reference), or `None` if it was already gone.
    pub fn remove(&self, id: ConnId, now: u32) -> Option<ConnRecord> {
        let e = self.entries.get(id.index as usize)?;
        let mut cur = Life(e.life.load(Ordering::Acquire));
        loop {
            if cur.generation() != id.generation || !cur.is_live() {
                return None;
            }
            match e.life.compare_exchange_weak(
                cur.0,
                cur.0 | DEAD,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(v) => cur = Life(v),
            }
        }
        self.retire(id.index, e, Life(cur.0 | DEAD), now, None)
    }

    /// Unlinks and frees an entry this thread marked DEAD; its record at `now`, idle since
    /// `last_seen` if given (the value expiry decided on) else since the entry's.
    fn retire(
        &self,
        idx: u32,
        e: &Entry,
        life: Life,
        now: u32,
        last_seen: Option<u32>,
    ) -> Option<ConnRecord> {
        let mut snap = e.read_fields(life);
        snap.last_seen = last_seen.unwrap_or(snap.last_seen);
        let n = self.n_buckets();
        for dir in [Dir::Orig, Dir::Reply] {
            let words = snap.key(dir);
            let place = Place::new(self.hash_words(words), n);
            let found = index::unlink(&self.buckets, &place, place.slot_value(idx, dir));
            debug_assert!(found.is_some(), "entry {idx} had no {dir:?} slot");
            if let Some(pos) = found {
                self.uncount_spill(pos, &place);
            }
        }
        let record = record_from(&snap, now);
        e.life.store(
            Life::free(life.generation().wrapping_add(1)).0,
            Ordering::Release,
        );
        let owner = (snap.meta >> 8) as u8;
        self.free
            .push(&self.entries, idx, usize::from(owner) % SHARDS);
        record
    }

    /// Connection `id` as it is at `now`, for state sync; `None` if it is gone.
    pub fn export(&self, id: ConnId, now: u32) -> Option<ConnRecord> {
        let snap = self.entries.get(id.index as usize)?.read()?;
        if snap.life.generation() != id.generation || !snap.life.is_live() {
            return None;
        }
        record_from(&snap, now)
    }

    /// Calls `f` for every live connection (a snapshot of each; connections inserted or
    /// removed during the walk may or may not be seen). For bulk sync and listings.
    pub fn for_each_live(&self, now: u32, mut f: impl FnMut(ConnId, &ConnRecord)) {
        self.walk(0, now, |id, rec| {
            f(id, rec);
            true
        });
    }

    /// Walks live connections from entry `start` on, calling `f` until it returns false;
    /// returns the entry to resume from then, or `None` when the walk reached the end. Lets
    /// an operator page through a table of millions.
    pub fn walk(
        &self,
        start: u32,
        now: u32,
        mut f: impl FnMut(ConnId, &ConnRecord) -> bool,
    ) -> Option<u32> {
        let entries = self.entries.get(start as usize..)?;
        for (i, e) in entries.iter().enumerate() {
            let Some(snap) = e.read() else {
                continue;
            };
            if !snap.life.is_live() {
                continue;
            }
            if let Some(rec) = record_from(&snap, now) {
                let index = start + i as u32;
                let id = ConnId {
                    index,
                    generation: snap.life.generation(),
                };
                if !f(id, &rec) {
                    return Some(index + 1).filter(|n| *n < self.capacity);
                }
            }
        }
        None
    }

    /// Examines up to `budget` entries of the cursor's share, continuing where it stopped,
    /// and removes each connection that nothing references and that has been idle at least
    /// its state's timeout at `now`; `on_removed` sees each (and releases its `mapping`
    /// reference, which a mapping needs to expire in turn). The number removed.
    pub fn reclaim(
        &self,
        now: u32,
        cursor: &mut ReclaimCursor,
        budget: u32,
        mut on_removed: impl FnMut(ConnId, &ConnRecord),
    ) -> u32 {
        let cap = u64::from(self.capacity);
        let parts = u64::from(cursor.parts.max(1));
        let part = u64::from(cursor.part) % parts;
        let start = (cap * part / parts) as u32;
        let share = (cap * (part + 1) / parts) as u32 - start;
        if share == 0 {
            return 0;
        }
        let mut removed = 0;
        for _ in 0..budget.min(share) {
            let offset = cursor.next % share;
            cursor.next = (offset + 1) % share;
            let idx = start + offset;
            if let Some((id, rec)) = self.expire(idx, now) {
                removed += 1;
                on_removed(id, &rec);
            }
        }
        removed
    }

    fn expire(&self, idx: u32, now: u32) -> Option<(ConnId, ConnRecord)> {
        let e = self.entries.get(idx as usize)?;
        let life = Life(e.life.load(Ordering::Acquire));
        if !life.is_live() || life.refs() != 0 {
            return None;
        }
        let timeout = self.timeouts.for_state(life.state()?);
        let last_seen = e.last_seen.load(Ordering::Relaxed);
        if now.saturating_sub(last_seen) < timeout {
            return None;
        }
        // Fails if a packet changed the state, a reference was taken or the entry moved on.
        // A packet that only refreshed `last_seen` since the load above does not stop the
        // expiry: it arrived at the timeout, and its connection goes as the packet passes.
        e.life
            .compare_exchange(life.0, life.0 | DEAD, Ordering::AcqRel, Ordering::Relaxed)
            .ok()?;
        let id = ConnId {
            index: idx,
            generation: life.generation(),
        };
        Some((
            id,
            self.retire(idx, e, Life(life.0 | DEAD), now, Some(last_seen))?,
        ))
    }
}

/// The fields an insert writes.
struct Fields {
    orig: FlowKey,
    reply: FlowKey,
    state: ConnState,
    fin_seen: u8,
    flags: u8,
    owner: u8,
    mapping: Option<ConnId>,
    backend: u32,
}

/// Asks the CPU to start loading the cache line at `p` (a no-op off x86_64).
#[inline(always)]
fn prefetch_line(p: *const i8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is part of the x86_64 baseline, and a prefetch never faults (whatever
        // the address) nor changes memory.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Allocates `n` values without aborting on failure.
fn alloc_with<T>(n: usize, make: impl Fn() -> T) -> Option<Box<[T]>> {
    let mut v: Vec<T> = Vec::new();
    v.try_reserve_exact(n).ok()?;
    huge::advise(
        v.as_ptr().cast(),
        n.saturating_mul(std::mem::size_of::<T>()),
    );
    v.extend((0..n).map(|_| make()));
    Some(v.into_boxed_slice())
}

fn mapping_of(snap: &Snapshot) -> Option<ConnId> {
    (snap.mapping_gen != 0).then_some(ConnId {
        index: snap.mapping_index,
        generation: snap.mapping_gen,
    })
}

/// A hit on key `dir` of entry `idx`; `key` is that key unpacked, when the caller has it.
#[inline]
fn hit_from(idx: u32, dir: Dir, snap: &Snapshot, key: Option<&FlowKey>) -> Option<Hit> {
    let unpack = |d: Dir| match key {
        Some(k) if d == dir => Some(*k),
        _ => FlowKey::unpack(snap.key(d)),
    };
    Some(Hit {
        id: ConnId {
            index: idx,
            generation: snap.life.generation(),
        },
        dir,
        orig: unpack(Dir::Orig)?,
        reply: unpack(Dir::Reply)?,
        state: snap.life.state()?,
        flags: snap.meta as u8,
        owner: (snap.meta >> 8) as u8,
        mapping: mapping_of(snap),
        backend: snap.backend,
    })
}

fn record_from(snap: &Snapshot, now: u32) -> Option<ConnRecord> {
    Some(ConnRecord {
        orig: FlowKey::unpack(snap.orig)?,
        reply: FlowKey::unpack(snap.reply)?,
        state: snap.life.state()?,
        flags: snap.meta as u8,
        owner: (snap.meta >> 8) as u8,
        mapping: mapping_of(snap),
        backend: snap.backend,
        idle_secs: now.saturating_sub(snap.last_seen),
        fin_seen: snap.life.fin_seen(),
    })
}
