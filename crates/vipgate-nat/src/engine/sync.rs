//! The engine's side of state sync: a connection exported as the active box has it, and
//! installed or updated on the standby exactly so.

use super::{conn_flags, Engine, Exported};
use crate::table::{ConnId, InsertError};
use crate::{ConnState, FlowKey};

impl Engine {
    /// A connection or mapping as state sync sends it: its record, and for a connection
    /// that holds PAT mappings, their internal keys so the standby can resolve them.
    pub fn export(&self, id: ConnId, now: u32) -> Option<Exported> {
        let record = self.table.export(id, now)?;
        let key_of = |id: ConnId| self.table.export(id, now).map(|m| m.orig);
        let mapping = match record.mapping {
            Some(m) => Some(key_of(m)?),
            None => None,
        };
        let peer_mapping = if record.flags & conn_flags::PEER_MAPPING != 0 {
            Some(key_of(self.table.live_id(record.backend)?)?)
        } else {
            None
        };
        Some(Exported {
            record,
            mapping,
            peer_mapping,
        })
    }

    /// Installs a connection or mapping exactly as the active box has it (the standby side
    /// of state sync): a mapping claims its public port; a connection takes references on
    /// its mappings, found by their keys (install mappings first).
    ///
    /// # Errors
    /// [`InsertError`] from the table; `Clash` also when the port or a mapping is missing.
    pub fn install(&self, e: &Exported, now: u32) -> Result<ConnId, InsertError> {
        let mut rec = e.record;
        if rec.state == ConnState::Mapping {
            let ai = self
                .ports
                .addr_index(rec.reply.dst)
                .ok_or(InsertError::Clash)?;
            if !self.ports.claim(ai, rec.reply.proto, rec.reply.dport) {
                return Err(InsertError::Clash);
            }
            return self
                .table
                .install(&rec, now)
                .inspect(|_| {
                    // Counted, never refused: the active box admitted it.
                    self.hosts.take(rec.orig.src, 0);
                })
                .inspect_err(|_| {
                    self.ports.release(ai, rec.reply.proto, rec.reply.dport);
                });
        }
        let acquire = |k: &FlowKey| match self.table.lookup(k) {
            Some(m) if m.state == ConnState::Mapping && self.table.acquire_ref(m.id) => Some(m.id),
            _ => None,
        };
        rec.mapping = match &e.mapping {
            Some(k) => Some(acquire(k).ok_or(InsertError::Clash)?),
            None => None,
        };
        if rec.flags & conn_flags::PEER_MAPPING != 0 {
            let peer = e.peer_mapping.as_ref().and_then(acquire);
            match peer {
                Some(p) => rec.backend = p.index,
                None => {
                    self.release_refs(rec.mapping, 0, 0);
                    return Err(InsertError::Clash);
                }
            }
        }
        self.table.install(&rec, now).inspect_err(|_| {
            self.release_refs(rec.mapping, rec.flags, rec.backend);
        })
    }

    /// Installs `e` as [`Engine::install`] does, or brings the connection already there up
    /// to date (state, FIN bits, idle time): what the standby does with every record the
    /// active box sends, so a record sent twice (an update, a refresh, a bulk copy) is
    /// harmless. A connection of this box's own that holds one of the keys with other
    /// endpoints (left from before a partition healed) gives way to the active box's.
    ///
    /// # Errors
    /// As [`Engine::install`], after the retry.
    pub fn upsert(&self, e: &Exported, now: u32) -> Result<ConnId, InsertError> {
        let r = &e.record;
        // The same connection first: a mapping's install would trip over its own port.
        if let Some(hit) = self.table.lookup(&r.orig) {
            if hit.orig == r.orig && hit.reply == r.reply {
                let last_seen = now.saturating_sub(r.idle_secs);
                if self
                    .table
                    .sync_update(hit.id, r.state, r.fin_seen, last_seen)
                {
                    return Ok(hit.id);
                }
            }
        }
        match self.install(e, now) {
            Err(InsertError::Exists(_) | InsertError::Clash) => {
                let mut removed = false;
                for key in [r.orig, r.reply] {
                    if let Some(hit) = self.table.lookup(&key) {
                        removed |= self.flush(hit.id, now).is_some();
                    }
                }
                if removed {
                    self.install(e, now)
                } else {
                    // Nothing in the way: a mapping it needs is missing.
                    Err(InsertError::Clash)
                }
            }
            other => other,
        }
    }

    /// Removes the connection or mapping whose original tuple is `orig` (a deletion the
    /// active box sent); false if there was none.
    pub fn remove_synced(&self, orig: &FlowKey, now: u32) -> bool {
        match self.table.lookup(orig) {
            Some(hit) if hit.orig == *orig => self.flush(hit.id, now).is_some(),
            _ => false,
        }
    }
}
