//! The buffer pool shared by a worker's ports: a stack of free chunks and one owner byte per
//! chunk.
//!
//! The owner byte is what makes the [`crate::Ports`] contract safe to misuse: a frame that is
//! released twice, sent after release, or invented by the caller is refused instead of ending
//! up twice in a ring (which would hand one buffer to two owners, the kernel among them).

/// Who holds a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Owner {
    /// On the free stack.
    Free,
    /// Handed to the caller by `recv` or `alloc`.
    App,
    /// In a port: a fill, RX or TX ring, or a `MemPorts` sent queue.
    Port,
}

pub(crate) struct FramePool {
    /// Free chunk indices; capacity `frames`, so pushes never reallocate.
    free: Vec<u32>,
    owner: Vec<Owner>,
    /// log2 of the frame size: chunk index = addr >> shift.
    shift: u32,
}

impl FramePool {
    /// All chunks start free. `frame_size` must be a power of two (callers check).
    pub(crate) fn new(frames: u32, frame_size: u32) -> Self {
        // Popping from the end hands out low chunks first, which keeps a lightly loaded worker
        // on few pages.
        let free = (0..frames).rev().collect();
        FramePool {
            free,
            owner: vec![Owner::Free; frames as usize],
            shift: frame_size.trailing_zeros(),
        }
    }

    pub(crate) fn frames(&self) -> u32 {
        // The owner table was built from a u32 count.
        u32::try_from(self.owner.len()).unwrap_or(u32::MAX)
    }

    pub(crate) fn free_count(&self) -> usize {
        self.free.len()
    }

    /// The chunk holding `addr`, if `addr` lies in the pool.
    #[inline]
    pub(crate) fn chunk_of(&self, addr: u64) -> Option<u32> {
        let chunk = u32::try_from(addr >> self.shift).ok()?;
        (chunk < self.frames()).then_some(chunk)
    }

    /// The address of a chunk's first byte.
    #[inline]
    pub(crate) fn base(&self, chunk: u32) -> u64 {
        u64::from(chunk) << self.shift
    }

    #[inline]
    pub(crate) fn owner(&self, chunk: u32) -> Option<Owner> {
        self.owner.get(chunk as usize).copied()
    }

    /// Takes a free chunk for `to`; returns its base address.
    #[inline]
    pub(crate) fn take(&mut self, to: Owner) -> Option<u64> {
        let chunk = self.free.pop()?;
        if let Some(o) = self.owner.get_mut(chunk as usize) {
            *o = to;
        }
        Some(self.base(chunk))
    }

    /// Moves the chunk holding `addr` from `from` to `to` (not to `Free`: use `put`).
    /// Returns false, changing nothing, when `addr` is outside the pool or not held by `from`.
    #[inline]
    pub(crate) fn transfer(&mut self, addr: u64, from: Owner, to: Owner) -> bool {
        let Some(chunk) = self.chunk_of(addr) else {
            return false;
        };
        match self.owner.get_mut(chunk as usize) {
            Some(o) if *o == from => {
                *o = to;
                true
            }
            _ => false,
        }
    }

    /// Returns the chunk holding `addr` to the free stack if `from` holds it.
    #[inline]
    pub(crate) fn put(&mut self, addr: u64, from: Owner) -> bool {
        let Some(chunk) = self.chunk_of(addr) else {
            return false;
        };
        match self.owner.get_mut(chunk as usize) {
            Some(o) if *o == from => {
                *o = Owner::Free;
                // Cannot exceed capacity: a chunk is pushed only on its way from a non-free
                // owner, and there are `frames` chunks.
                self.free.push(chunk);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_is_enforced() {
        let mut pool = FramePool::new(4, 2048);
        assert_eq!(pool.free_count(), 4);
        let a = pool.take(Owner::App).unwrap();
        assert_eq!(a, 0, "low chunks first");
        assert_eq!(pool.chunk_of(a + 100), Some(0));
        assert_eq!(pool.chunk_of(4 * 2048), None);
        assert!(!pool.put(a, Owner::Port), "wrong owner");
        assert!(pool.transfer(a + 7, Owner::App, Owner::Port));
        assert!(!pool.transfer(a, Owner::App, Owner::Port), "already moved");
        assert!(pool.put(a, Owner::Port));
        assert!(!pool.put(a, Owner::Port), "double free refused");
        assert_eq!(pool.free_count(), 4);
        for _ in 0..4 {
            assert!(pool.take(Owner::App).is_some());
        }
        assert_eq!(pool.take(Owner::App), None);
    }
}
