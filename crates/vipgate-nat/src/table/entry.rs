//! One connection's 64-byte slab entry and its `life` word.
//!
//! Every field is an atomic so that readers can read an entry while a writer reuses it; the
//! generation in the `life` word works as a seqlock: the key and metadata fields are written
//! only while the entry is free (even generation), and a reader keeps what it read only if
//! the generation was odd and unchanged across its reads.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use crate::state::{ConnState, Dir};

/// Bits 0..24 of `life`: references held on the entry (PAT mappings).
pub(super) const REFS_MASK: u64 = (1 << 24) - 1;
/// Bits 24..28: the [`ConnState`].
const STATE_SHIFT: u32 = 24;
/// Bits 28..30: the TCP `fin_seen` mask.
const FIN_SHIFT: u32 = 28;
/// Bit 30: the entry is allocated but its keys are not all committed to the index yet, so
/// lookups, expiry and removal leave it alone.
pub(super) const INSERTING: u64 = 1 << 30;
/// Bit 31: a remover or the reclaimer owns the entry and is unlinking it.
pub(super) const DEAD: u64 = 1 << 31;
/// Bits 32..64: generation; odd while allocated, even while free.
const GEN_SHIFT: u32 = 32;

/// A decoded copy of an entry's `life` word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Life(pub(super) u64);

impl Life {
    /// A freshly allocated entry's word.
    pub(super) fn allocated(generation: u32, state: ConnState, fin_seen: u8) -> Life {
        Life((u64::from(generation) << GEN_SHIFT) | INSERTING).with_state(state, fin_seen)
    }

    /// A free entry's word.
    pub(super) fn free(generation: u32) -> Life {
        Life(u64::from(generation) << GEN_SHIFT)
    }

    #[inline]
    pub(super) fn generation(self) -> u32 {
        (self.0 >> GEN_SHIFT) as u32
    }

    /// Allocated (odd generation), whatever its flags.
    #[inline]
    pub(super) fn is_allocated(self) -> bool {
        self.generation() & 1 == 1
    }

    /// Allocated, fully inserted and not being removed.
    #[inline]
    pub(super) fn is_live(self) -> bool {
        self.is_allocated() && self.0 & (DEAD | INSERTING) == 0
    }

    #[inline]
    pub(super) fn is_dead(self) -> bool {
        self.0 & DEAD != 0
    }

    #[inline]
    pub(super) fn refs(self) -> u32 {
        (self.0 & REFS_MASK) as u32
    }

    #[inline]
    pub(super) fn state(self) -> Option<ConnState> {
        ConnState::from_u8(((self.0 >> STATE_SHIFT) & 0xf) as u8)
    }

    #[inline]
    pub(super) fn fin_seen(self) -> u8 {
        ((self.0 >> FIN_SHIFT) & 0x3) as u8
    }

    #[inline]
    pub(super) fn with_state(self, state: ConnState, fin_seen: u8) -> Life {
        let cleared = self.0 & !((0xf << STATE_SHIFT) | (0x3 << FIN_SHIFT));
        Life(
            cleared
                | (u64::from(state as u8 & 0xf) << STATE_SHIFT)
                | (u64::from(fin_seen & 0x3) << FIN_SHIFT),
        )
    }
}

/// One connection. 64 bytes, aligned to a cache line, so that a lookup hit reads one line.
#[repr(C, align(64))]
#[derive(Default)]
pub(super) struct Entry {
    /// Generation, flags, state and references: see [`Life`].
    pub(super) life: AtomicU64,
    /// The original key, packed ([`crate::FlowKey::pack`]).
    pub(super) orig: [AtomicU64; 2],
    /// The reply key, packed.
    pub(super) reply: [AtomicU64; 2],
    /// Seconds of the last packet; the only field written on every refresh, and only when the
    /// second changes.
    pub(super) last_seen: AtomicU32,
    /// Opaque backend id.
    pub(super) backend: AtomicU32,
    /// The mapping's entry index.
    pub(super) mapping_index: AtomicU32,
    /// The mapping's generation; 0 (never a live generation) for no mapping.
    pub(super) mapping_gen: AtomicU32,
    /// `flags | owner << 8`.
    pub(super) meta: AtomicU32,
    /// The next entry on the free list, while free.
    pub(super) next_free: AtomicU32,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 64);

/// A consistent copy of an allocated entry.
#[derive(Clone, Copy, Debug)]
pub(super) struct Snapshot {
    pub(super) life: Life,
    pub(super) orig: [u64; 2],
    pub(super) reply: [u64; 2],
    pub(super) last_seen: u32,
    pub(super) backend: u32,
    pub(super) mapping_index: u32,
    pub(super) mapping_gen: u32,
    pub(super) meta: u32,
}

impl Entry {
    /// Reads the entry seqlock-style: `None` if it is free or was freed or reused while being
    /// read. Never waits.
    #[inline]
    pub(super) fn read(&self) -> Option<Snapshot> {
        let life = Life(self.life.load(Ordering::Acquire));
        if !life.is_allocated() {
            return None;
        }
        let snap = self.read_fields(life);
        // Pairs with the release fence an allocator issues before rewriting the fields: if any
        // field above came from a newer incarnation, the generation below has moved on.
        fence(Ordering::Acquire);
        let again = Life(self.life.load(Ordering::Relaxed));
        (again.generation() == life.generation()).then_some(snap)
    }

    /// Reads the fields without validation; for the thread that owns the entry (it set DEAD
    /// or is inserting it), for which they can't change.
    #[inline]
    pub(super) fn read_fields(&self, life: Life) -> Snapshot {
        Snapshot {
            life,
            orig: [
                self.orig[0].load(Ordering::Relaxed),
                self.orig[1].load(Ordering::Relaxed),
            ],
            reply: [
                self.reply[0].load(Ordering::Relaxed),
                self.reply[1].load(Ordering::Relaxed),
            ],
            last_seen: self.last_seen.load(Ordering::Relaxed),
            backend: self.backend.load(Ordering::Relaxed),
            mapping_index: self.mapping_index.load(Ordering::Relaxed),
            mapping_gen: self.mapping_gen.load(Ordering::Relaxed),
            meta: self.meta.load(Ordering::Relaxed),
        }
    }
}

impl Snapshot {
    /// The packed key of direction `dir`.
    #[inline]
    pub(super) fn key(&self, dir: Dir) -> [u64; 2] {
        match dir {
            Dir::Orig => self.orig,
            Dir::Reply => self.reply,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn life_fields_are_independent() {
        let l = Life::allocated(7, ConnState::TcpFinWait, 2);
        assert_eq!(l.generation(), 7);
        assert!(l.is_allocated() && !l.is_live() && !l.is_dead());
        assert_eq!(l.state(), Some(ConnState::TcpFinWait));
        assert_eq!(l.fin_seen(), 2);
        assert_eq!(l.refs(), 0);
        let l = Life((l.0 & !INSERTING) + 5);
        assert!(l.is_live());
        assert_eq!(l.refs(), 5);
        let l = l.with_state(ConnState::Mapping, 1);
        assert_eq!(
            (l.state(), l.fin_seen(), l.refs()),
            (Some(ConnState::Mapping), 1, 5)
        );
        assert_eq!(l.generation(), 7);
        let d = Life(l.0 | DEAD);
        assert!(d.is_dead() && !d.is_live());
        assert!(!Life::free(8).is_allocated());
        assert_eq!(Life::free(8).generation(), 8);
    }
}
