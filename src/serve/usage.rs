//! Last used (docs/last-used.md), in memory: per record of the state in use, when its token
//! was last granted or refused for a missing scope, how often, and the last client. The check
//! path only stores into atomics beside the index (no lock, no I/O, no allocation); the
//! reloader carries the figures over to each new state, and the sidecar writer reads them.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::index::TokenIndex;
use crate::seen::{Seen, SeenById};
use crate::when::Timestamp;

/// Who asked: the socket peer's uid, or the HTTP client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Client {
    /// Not known (a test, a peer whose credentials could not be read).
    Unknown,
    /// The uid of a Unix socket peer.
    Uid(u32),
    /// An HTTP client: from `X-Forwarded-For`/`X-Real-IP`, else the peer.
    Addr(IpAddr),
}

impl Client {
    /// As the sidecar and `list` show it.
    fn shown(self) -> Option<String> {
        match self {
            Client::Unknown => None,
            Client::Uid(uid) => Some(format!("uid {uid}")),
            Client::Addr(addr) => Some(addr.to_string()),
        }
    }

    /// The client in 2 × 64 bits and a tag: IPv4 as IPv6-mapped, a uid in the low word.
    fn encode(self) -> (u64, u64, u64) {
        match self {
            Client::Unknown => (0, 0, 0),
            Client::Uid(uid) => (1, 0, u64::from(uid)),
            Client::Addr(addr) => {
                let bits = match addr {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped().to_bits(),
                    IpAddr::V6(v6) => v6.to_bits(),
                };
                (2, (bits >> 64) as u64, bits as u64)
            }
        }
    }

    fn decode(tag: u64, high: u64, low: u64) -> Client {
        match tag {
            1 => Client::Uid(low as u32),
            2 => {
                let v6 = std::net::Ipv6Addr::from_bits((u128::from(high) << 64) | u128::from(low));
                Client::Addr(match v6.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => IpAddr::V6(v6),
                })
            }
            _ => Client::Unknown,
        }
    }
}

/// `last_used` of a record never used.
const NEVER: i64 = i64::MIN;

/// One record's figures. A client written by two checks at once may come out as a mix of
/// the two (three stores, not one): it is only shown, and the next use sets it whole. The
/// time and the count are single atomics and never torn.
#[derive(Debug)]
struct Slot {
    last_used: AtomicI64,
    uses: AtomicU64,
    client_tag: AtomicU64,
    client_high: AtomicU64,
    client_low: AtomicU64,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            last_used: AtomicI64::new(NEVER),
            uses: AtomicU64::new(0),
            client_tag: AtomicU64::new(0),
            client_high: AtomicU64::new(0),
            client_low: AtomicU64::new(0),
        }
    }

    fn set_client(&self, client: Client) {
        let (tag, high, low) = client.encode();
        self.client_tag.store(tag, Relaxed);
        self.client_high.store(high, Relaxed);
        self.client_low.store(low, Relaxed);
    }

    fn client(&self) -> Client {
        Client::decode(
            self.client_tag.load(Relaxed),
            self.client_high.load(Relaxed),
            self.client_low.load(Relaxed),
        )
    }

    fn seen(&self) -> Option<Seen> {
        let last_used = self.last_used.load(Relaxed);
        if last_used == NEVER {
            return None;
        }
        Some(Seen {
            last_used: Timestamp::from_unix_timestamp(last_used).ok()?,
            uses: self.uses.load(Relaxed),
            last_client: self.client().shown(),
        })
    }

    fn set(&self, seen: &Seen, client: Client) {
        self.last_used
            .store(seen.last_used.unix_timestamp(), Relaxed);
        self.uses.store(seen.uses, Relaxed);
        self.set_client(client);
    }
}

/// The figures of every record of one state, in the index's order.
#[derive(Debug)]
pub(crate) struct Usage {
    slots: Vec<Slot>,
    /// The clients of figures that came from a sidecar, as written there (an address or
    /// `uid N` that need not parse back), by position.
    shown_clients: std::sync::Mutex<Vec<(usize, String)>>,
    /// Set by every use; cleared by the sidecar writer when it takes the figures.
    changed: AtomicBool,
}

impl Usage {
    /// No figures yet for the `records` of a state.
    pub(crate) fn new(records: usize) -> Usage {
        Usage {
            slots: (0..records).map(|_| Slot::new()).collect(),
            shown_clients: std::sync::Mutex::new(Vec::new()),
            changed: AtomicBool::new(false),
        }
    }

    /// A check of the record at `position` was decided at `now` for `client`.
    pub(crate) fn record(&self, position: usize, now: Timestamp, client: Client) {
        let Some(slot) = self.slots.get(position) else {
            return;
        };
        // Loads first: the time changes once a second and the client rarely, so most checks
        // write one counter and leave the rest of the line shared between cores.
        let at = now.unix_timestamp();
        if slot.last_used.load(Relaxed) < at {
            slot.last_used.fetch_max(at, Relaxed);
        }
        // A forged or ancient count at the top stays there rather than wrap to 0.
        if slot.uses.fetch_add(1, Relaxed) == u64::MAX {
            slot.uses.store(u64::MAX, Relaxed);
        }
        if slot.client() != client {
            slot.set_client(client);
        }
        if !self.changed.load(Relaxed) {
            self.changed.store(true, Relaxed);
        }
    }

    /// Says that figures are still to be written (a write that failed).
    pub(crate) fn mark_changed(&self) {
        self.changed.store(true, Relaxed);
    }

    /// Whether anything was used since the last [`Usage::take_changed`].
    pub(crate) fn take_changed(&self) -> bool {
        self.changed.swap(false, Relaxed)
    }

    /// The figures of `index`'s record at `position`, if it was ever used.
    fn seen_at(&self, position: usize) -> Option<Seen> {
        let mut seen = self.slots.get(position)?.seen()?;
        if seen.last_client.is_none()
            && let Ok(shown) = self.shown_clients.lock()
        {
            seen.last_client = shown
                .iter()
                .find(|(at, _)| *at == position)
                .map(|(_, client)| client.clone());
        }
        Some(seen)
    }

    /// When the record at `position` was last used, if ever.
    pub(crate) fn last_used(&self, position: usize) -> Option<Timestamp> {
        self.slots.get(position)?.seen().map(|seen| seen.last_used)
    }

    /// Every used record of `index` (whose usage this is) by ID.
    pub(crate) fn by_id(&self, index: &TokenIndex) -> SeenById {
        index
            .iter()
            .enumerate()
            .filter_map(|(position, (digest, _))| {
                Some((digest.id().to_string(), self.seen_at(position)?))
            })
            .collect()
    }

    /// Takes the figures of `older` (the usage of `older_index`) for the records `index`
    /// keeps: a reload loses no figure, and a record that is gone takes its figures with it.
    pub(crate) fn carry_over(&self, index: &TokenIndex, older: &Usage, older_index: &TokenIndex) {
        if !older.any_used() {
            return;
        }
        for (position, (digest, _)) in index.iter().enumerate() {
            let Some(old) = older_index.position(digest) else {
                continue;
            };
            if let Some(seen) = older.seen_at(old) {
                self.seed(position, &seen, older.slots[old].client());
            }
        }
        self.changed.store(older.changed.load(Relaxed), Relaxed);
    }

    /// Whether any record of this state has figures (most reloads of an idle `serve`: none).
    fn any_used(&self) -> bool {
        self.slots
            .iter()
            .any(|slot| slot.last_used.load(Relaxed) != NEVER)
    }

    /// The figures of the records of `index` (whose usage this is) that `newer` no longer
    /// has, by ID: what a reload would otherwise drop.
    pub(crate) fn departed(&self, index: &TokenIndex, newer: &TokenIndex) -> SeenById {
        if !self.any_used() {
            return SeenById::new();
        }
        index
            .iter()
            .enumerate()
            .filter(|(_, (digest, _))| newer.position(digest).is_none())
            .filter_map(|(position, (digest, _))| {
                Some((digest.id().to_string(), self.seen_at(position)?))
            })
            .collect()
    }

    /// Starts the records of `index` (whose usage this is) from the figures `known` has for
    /// their IDs — a sidecar's (`serve` restarted) or those of records back in the file;
    /// returns the IDs it took figures for.
    pub(crate) fn load<'k>(
        &self,
        index: &TokenIndex,
        known: impl Fn(&str) -> Option<&'k Seen>,
    ) -> Vec<String> {
        let mut taken = Vec::new();
        for (position, (digest, _)) in index.iter().enumerate() {
            let id = digest.id().to_string();
            if let Some(figures) = known(&id) {
                self.seed(position, figures, Client::Unknown);
                taken.push(id);
            }
        }
        taken
    }

    fn seed(&self, position: usize, seen: &Seen, client: Client) {
        self.slots[position].set(seen, client);
        if client == Client::Unknown
            && let Some(shown) = &seen.last_client
            && let Ok(mut clients) = self.shown_clients.lock()
        {
            clients.push((position, shown.clone()));
        }
    }
}

/// The figures of records that left the file, kept in memory for [`Departed::KEPT`]: a file
/// caught empty or cut short by an in-place writer, or missing for a moment, takes its records
/// away and brings them back, and their figures must come back with them — while a revoked
/// record's figures are not written to the sidecar again (docs/last-used.md).
#[derive(Debug, Default)]
pub(crate) struct Departed {
    /// By ID: the figures, and when the record left.
    kept: std::collections::HashMap<String, (Seen, Timestamp)>,
}

impl Departed {
    /// How long the figures of a record that left are kept for its return.
    const KEPT: time::Duration = time::Duration::days(1);

    /// The figures kept, by ID.
    pub(crate) fn figures(&self) -> SeenById {
        self.kept
            .iter()
            .map(|(id, (seen, _))| (id.clone(), seen.clone()))
            .collect()
    }

    /// Keeps `figures` of records that left at `now`.
    pub(crate) fn add(&mut self, figures: SeenById, now: Timestamp) {
        self.kept
            .extend(figures.into_iter().map(|(id, seen)| (id, (seen, now))));
    }

    /// Gives the figures of the records of `index` that came back to `usage` (which marks
    /// them to be written), and forgets those gone for longer than [`Departed::KEPT`].
    pub(crate) fn restore(&mut self, usage: &Usage, index: &TokenIndex, now: Timestamp) {
        if self.kept.is_empty() {
            return;
        }
        let back = usage.load(index, |id| self.kept.get(id).map(|(seen, _)| seen));
        if !back.is_empty() {
            usage.mark_changed();
        }
        for id in back {
            self.kept.remove(&id);
        }
        let cutoff = now - Self::KEPT;
        self.kept.retain(|_, (_, left)| *left >= cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Secret;
    use crate::when::parse_timestamp;

    fn at(text: &str) -> Timestamp {
        parse_timestamp(text.as_bytes()).unwrap()
    }

    #[test]
    fn figures_follow_the_records_across_a_reload() {
        let (old_index, _) = TokenIndex::load(b"a\tread\nb\tread\n");
        let old = Usage::new(old_index.len());
        let a = old_index
            .position(&Secret::new(b"a".to_vec()).digest())
            .unwrap();
        old.record(a, at("2026-12-01T00:00:00Z"), Client::Uid(1000));
        old.record(
            a,
            at("2026-12-02T00:00:00Z"),
            Client::Addr("10.0.0.7".parse().unwrap()),
        );
        assert!(old.take_changed());
        assert!(!old.take_changed());
        let seen = old.by_id(&old_index);
        assert_eq!(seen.len(), 1);
        let figures = seen.values().next().unwrap();
        assert_eq!(figures.uses, 2);
        assert_eq!(figures.last_client.as_deref(), Some("10.0.0.7"));
        assert_eq!(figures.last_used, at("2026-12-02T00:00:00Z"));

        // `a` moved, `b` went: the figures move with `a`.
        let (new_index, _) = TokenIndex::load(b"c\tread\na\twrite\n");
        let new = Usage::new(new_index.len());
        new.carry_over(&new_index, &old, &old_index);
        assert_eq!(new.by_id(&new_index), seen);

        // From a sidecar: the client as it was written.
        let restarted = Usage::new(new_index.len());
        restarted.load(&new_index, |id| seen.get(id));
        assert_eq!(restarted.by_id(&new_index), seen);
    }

    #[test]
    fn clients_round_trip() {
        for client in [
            Client::Unknown,
            Client::Uid(0),
            Client::Uid(u32::MAX),
            Client::Addr("192.0.2.1".parse().unwrap()),
            Client::Addr("2001:db8::1".parse().unwrap()),
        ] {
            let (tag, high, low) = client.encode();
            assert_eq!(Client::decode(tag, high, low), client);
        }
    }
}
