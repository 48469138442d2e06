//! Where the peer's stream stands: which peer instance (epoch) we follow, and how far we
//! have its Data messages in order. Decides, for each authenticated message, whether it is
//! new, old or early; the [`SyncChannel`](super::channel::SyncChannel) acts on the decision.
//!
//! Two facts drive it:
//! - Data messages carry their own sequence number; they are delivered only in order, so
//!   a receiver needs to know where the stream starts before it can take any.
//! - Every other message carries the sender's window base: the oldest sequence number it
//!   still holds for retransmission. That tells a receiver where to start (on a new peer
//!   instance), and whether messages it never received are gone for good (a gap: the
//!   receiver reports it and asks for a bulk copy instead of waiting forever).

/// Why a message is not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// From an older instance of the peer than the one we follow.
    Stale {
        /// The epoch we follow.
        current: u64,
    },
    /// Data already delivered, or a control message older than one already taken.
    Replayed,
    /// Data beyond the next expected (or before we know where the stream starts).
    OutOfOrder {
        /// The sequence number we wait for, if we know it yet.
        expected: Option<u64>,
    },
}

/// What taking a control message changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Control {
    /// The message started following a new peer instance; the one followed before, if any.
    pub(crate) new_peer: Option<Option<u64>>,
    /// Data messages the peer no longer holds that we never received.
    pub(crate) lost: u64,
}

/// The stream of one peer instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stream {
    epoch: u64,
    /// The highest sequence number delivered in order.
    delivered: u64,
    /// The highest window base seen, so an older control message is recognised.
    base: u64,
}

/// The receive side's position in the peer's stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Inbound {
    stream: Option<Stream>,
}

impl Inbound {
    /// The epoch we follow, if any.
    pub(crate) fn epoch(&self) -> Option<u64> {
        self.stream.map(|s| s.epoch)
    }

    /// What our messages acknowledge: (highest in-order seq, its epoch), or (0, 0).
    pub(crate) fn ack(&self) -> (u64, u64) {
        self.stream.map_or((0, 0), |s| (s.delivered, s.epoch))
    }

    /// Forgets the peer: the next control message from any epoch starts a new stream.
    pub(crate) fn forget(&mut self) {
        self.stream = None;
    }

    /// Takes Data message `seq` of `epoch` if it is the next in order; marks it delivered.
    ///
    /// A Data message never starts following a new epoch: only a control message says
    /// where that stream starts, and Data taken before it could leave a hole nobody sees.
    /// The sender retransmits, and its heartbeats come every interval.
    pub(crate) fn admit_data(&mut self, epoch: u64, seq: u64) -> Result<(), Refusal> {
        let Some(s) = self.stream.as_mut() else {
            return Err(Refusal::OutOfOrder { expected: None });
        };
        if epoch < s.epoch {
            return Err(Refusal::Stale { current: s.epoch });
        }
        if epoch > s.epoch {
            return Err(Refusal::OutOfOrder { expected: None });
        }
        if seq <= s.delivered {
            return Err(Refusal::Replayed);
        }
        let expected = s.delivered.saturating_add(1);
        if seq != expected {
            return Err(Refusal::OutOfOrder {
                expected: Some(expected),
            });
        }
        s.delivered = seq;
        Ok(())
    }

    /// Takes a control message (Ack, Heartbeat, BulkRequest) of `epoch` whose sender holds
    /// Data from `base` on.
    pub(crate) fn admit_control(&mut self, epoch: u64, base: u64) -> Result<Control, Refusal> {
        // Sequence numbers start at 1, so a base of 0 (never sent by us) means the same.
        let base = base.max(1);
        match self.stream.as_mut() {
            Some(s) if epoch < s.epoch => Err(Refusal::Stale { current: s.epoch }),
            Some(s) if epoch == s.epoch => {
                if base < s.base {
                    // The sender's base never goes back within an epoch: this message is
                    // older than one we took (replayed, or overtaken on the way).
                    return Err(Refusal::Replayed);
                }
                s.base = base;
                let lost = (base - 1).saturating_sub(s.delivered);
                s.delivered = s.delivered.max(base - 1);
                Ok(Control {
                    new_peer: None,
                    lost,
                })
            }
            _ => {
                let previous = self.epoch();
                self.stream = Some(Stream {
                    epoch,
                    delivered: base - 1,
                    base,
                });
                Ok(Control {
                    new_peer: Some(previous),
                    lost: 0,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(new_peer: Option<Option<u64>>, lost: u64) -> Result<Control, Refusal> {
        Ok(Control { new_peer, lost })
    }

    #[test]
    fn data_waits_for_a_control_message_to_start() {
        let mut i = Inbound::default();
        assert_eq!(i.ack(), (0, 0));
        assert_eq!(
            i.admit_data(10, 1),
            Err(Refusal::OutOfOrder { expected: None })
        );
        assert_eq!(i.admit_control(10, 5), control(Some(None), 0));
        assert_eq!(i.ack(), (4, 10));
        assert_eq!(i.admit_data(10, 4), Err(Refusal::Replayed));
        assert_eq!(
            i.admit_data(10, 6),
            Err(Refusal::OutOfOrder { expected: Some(5) })
        );
        assert_eq!(i.admit_data(10, 5), Ok(()));
        assert_eq!(i.admit_data(10, 5), Err(Refusal::Replayed));
        assert_eq!(i.admit_data(10, 6), Ok(()));
        assert_eq!(i.ack(), (6, 10));
    }

    #[test]
    fn epochs_older_are_stale_newer_restart() {
        let mut i = Inbound::default();
        assert_eq!(i.admit_control(10, 1), control(Some(None), 0));
        assert_eq!(i.admit_data(10, 1), Ok(()));
        assert_eq!(i.admit_data(9, 2), Err(Refusal::Stale { current: 10 }));
        assert_eq!(i.admit_control(9, 2), Err(Refusal::Stale { current: 10 }));
        // A newer instance's data waits for its control message.
        assert_eq!(
            i.admit_data(11, 1),
            Err(Refusal::OutOfOrder { expected: None })
        );
        assert_eq!(i.admit_control(11, 1), control(Some(Some(10)), 0));
        assert_eq!(i.admit_data(11, 1), Ok(()));
        assert_eq!(i.admit_data(10, 2), Err(Refusal::Stale { current: 11 }));
        assert_eq!(i.epoch(), Some(11));
        i.forget();
        assert_eq!(i.admit_control(3, 0), control(Some(None), 0));
        assert_eq!(i.ack(), (0, 3));
    }

    #[test]
    fn a_base_beyond_what_we_have_is_a_gap_and_a_base_going_back_a_replay() {
        let mut i = Inbound::default();
        assert_eq!(i.admit_control(1, 1), control(Some(None), 0));
        assert_eq!(i.admit_data(1, 1), Ok(()));
        // The sender freed 2..=4 without our acks: gone.
        assert_eq!(i.admit_control(1, 5), control(None, 3));
        assert_eq!(i.ack(), (4, 1));
        assert_eq!(i.admit_control(1, 5), control(None, 0));
        assert_eq!(i.admit_control(1, 4), Err(Refusal::Replayed));
        assert_eq!(i.admit_data(1, 5), Ok(()));
        // A base at or below what we have changes nothing.
        assert_eq!(i.admit_control(1, 6), control(None, 0));
        assert_eq!(i.ack(), (5, 1));
    }
}
