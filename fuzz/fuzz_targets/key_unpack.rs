//! `FlowKey::unpack` decodes the two words a key is stored as; words that may have come from
//! outside (state sync from the peer box) must give either `None` or a key that packs back to
//! exactly those words.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vipgate_nat::FlowKey;

fuzz_target!(|data: &[u8]| {
    let (Some(a), Some(b)) = (word(data, 0), word(data, 8)) else {
        return;
    };
    if let Some(k) = FlowKey::unpack([a, b]) {
        assert_eq!(FlowKey::unpack(k.pack()), Some(k));
        // Two different stored words must never decode to the same key, or the table would
        // hold one flow twice: whatever unpack accepts, pack gives back bit for bit.
        assert_eq!(k.pack(), [a, b]);
    }
});

/// The little-endian word at `at`, if the input is long enough.
fn word(data: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = data.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}
