//! Initial seeding: a complete holder sends every chunk out once before it
//! sends any chunk twice.
//!
//! When many downloaders fetch one file at once, the seeder's upload is the
//! bottleneck of the whole swarm: every chunk it sends twice is time taken
//! from a chunk nobody has yet. Downloaders cannot avoid that on their own:
//! they pick rarest first, but they learn what the others fetch only from
//! the tracker, seconds late, so two of them often ask the seeder for the
//! same chunk. The seeder sees every request, so it keeps the ledger:
//!
//! - a chunk nobody asked for recently is served and noted as handed to
//!   that connection;
//! - a request for a chunk handed to *another* connection within
//!   [`HOLD_BACK`] is deferred with [`Message::ReplyChunkDeferred`]
//!   (`p2pfs_proto::Message`), suggesting chunks not sent recently, as long
//!   as there are such chunks; the requester gets the deferred chunk from
//!   the peer it went to, once that peer has registered it;
//! - when every chunk has been sent recently, everything is served: the
//!   ledger never makes the seeder idle.
//!
//! A lone downloader never asks for a chunk twice, so it is never deferred.
//! Pure state: no IO; the caller passes the clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use p2pfs_proto::limits::MAX_SUGGEST;

/// How long a chunk handed to one connection is kept from others, counted
/// from when it was written to that connection. Long enough for it to reach
/// the tracker from its new holder and for the others to hear of it.
pub const HOLD_BACK: Duration = Duration::from_secs(15);

/// Identifies one serving connection.
pub type ConnId = u64;

/// What to do with a chunk request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send the chunk.
    Serve,
    /// Defer it; suggest these chunks instead.
    Defer(Vec<u32>),
}

/// The ledger of one complete holding.
#[derive(Debug)]
pub struct Spread {
    /// Per chunk: the connection it was last handed to and when, while
    /// that is within [`HOLD_BACK`].
    handed: Vec<Option<(ConnId, Instant)>>,
    /// (time, chunk) in the order they were handed; an entry whose time no
    /// longer matches `handed` is stale.
    recent: VecDeque<(Instant, u32)>,
    /// Chunks with `handed` set.
    recent_count: usize,
    /// Where the next suggestion scan starts (moves on, so that concurrent
    /// requesters get different suggestions).
    cursor: usize,
}

impl Spread {
    /// A ledger for `n` chunks, none handed out.
    pub fn new(n: u32) -> Self {
        Self {
            handed: vec![None; n as usize],
            recent: VecDeque::new(),
            recent_count: 0,
            cursor: rand::random::<u32>() as usize % (n as usize).max(1),
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, i)) = self.recent.front() {
            if now.saturating_duration_since(at) < HOLD_BACK {
                break;
            }
            self.recent.pop_front();
            let slot = &mut self.handed[i as usize];
            if slot.is_some_and(|(_, t)| t == at) {
                *slot = None;
                self.recent_count -= 1;
            }
        }
    }

    fn hand(&mut self, conn: ConnId, index: u32, now: Instant) {
        let slot = &mut self.handed[index as usize];
        if slot.is_none() {
            self.recent_count += 1;
        }
        *slot = Some((conn, now));
        self.recent.push_back((now, index));
    }

    /// Decides a request of `conn` for chunk `index` (in range).
    pub fn decide(&mut self, conn: ConnId, index: u32, now: Instant) -> Decision {
        self.expire(now);
        let Some(slot) = self.handed.get(index as usize) else {
            return Decision::Serve;
        };
        match *slot {
            Some((owner, _)) if owner != conn && self.recent_count < self.handed.len() => {
                Decision::Defer(self.suggest())
            }
            Some(_) => Decision::Serve,
            None => {
                self.hand(conn, index, now);
                Decision::Serve
            }
        }
    }

    /// Records that chunk `index` has been written to `conn`: the hold-back
    /// runs from now (unless another connection has it by now).
    pub fn written(&mut self, conn: ConnId, index: u32, now: Instant) {
        self.expire(now);
        match self.handed.get(index as usize) {
            Some(Some((owner, _))) if *owner != conn => {}
            Some(_) => self.hand(conn, index, now),
            None => {}
        }
    }

    /// Releases what `conn` was handed (it closed): those chunks may go to
    /// anyone again.
    pub fn forget(&mut self, conn: ConnId) {
        for slot in &mut self.handed {
            if slot.is_some_and(|(owner, _)| owner == conn) {
                *slot = None;
                self.recent_count -= 1;
            }
        }
    }

    /// Up to [`MAX_SUGGEST`] chunks not handed out recently, scanning on
    /// from where the last scan stopped.
    fn suggest(&mut self) -> Vec<u32> {
        let n = self.handed.len();
        let mut out = Vec::new();
        let mut i = self.cursor;
        for _ in 0..n {
            if i >= n {
                i = 0;
            }
            if self.handed[i].is_none() {
                out.push(i as u32);
                if out.len() == MAX_SUGGEST {
                    i += 1;
                    break;
                }
            }
            i += 1;
        }
        self.cursor = i % n.max(1);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_downloader_is_never_deferred() {
        let mut s = Spread::new(100);
        let t = Instant::now();
        for i in 0..100 {
            assert_eq!(s.decide(1, i, t), Decision::Serve);
        }
        // Asking again (a chunk that failed to verify) is served too.
        assert_eq!(s.decide(1, 5, t), Decision::Serve);
    }

    #[test]
    fn a_chunk_handed_to_another_is_deferred_with_fresh_suggestions() {
        let mut s = Spread::new(10);
        let t = Instant::now();
        assert_eq!(s.decide(1, 3, t), Decision::Serve);
        assert_eq!(s.decide(1, 4, t), Decision::Serve);
        let Decision::Defer(sug) = s.decide(2, 3, t) else {
            panic!("expected a deferral")
        };
        assert_eq!(sug.len(), 8);
        assert!(!sug.contains(&3) && !sug.contains(&4));
        // The suggestions are served to the second connection.
        assert_eq!(s.decide(2, sug[0], t), Decision::Serve);
    }

    #[test]
    fn everything_is_served_once_every_chunk_went_out() {
        let mut s = Spread::new(3);
        let t = Instant::now();
        for i in 0..3 {
            assert_eq!(s.decide(1, i, t), Decision::Serve);
        }
        assert_eq!(s.decide(2, 0, t), Decision::Serve, "nothing fresh left");
    }

    #[test]
    fn the_hold_back_expires_from_the_write() {
        let mut s = Spread::new(4);
        let t = Instant::now();
        assert_eq!(s.decide(1, 0, t), Decision::Serve);
        let later = t + HOLD_BACK - Duration::from_secs(1);
        s.written(1, 0, later);
        assert!(matches!(s.decide(2, 0, t + HOLD_BACK), Decision::Defer(_)));
        assert_eq!(s.decide(2, 0, later + HOLD_BACK), Decision::Serve);
    }

    #[test]
    fn a_closed_connection_releases_its_chunks() {
        let mut s = Spread::new(4);
        let t = Instant::now();
        assert_eq!(s.decide(1, 0, t), Decision::Serve);
        assert!(matches!(s.decide(2, 0, t), Decision::Defer(_)));
        s.forget(1);
        assert_eq!(s.decide(2, 0, t), Decision::Serve);
        assert!(matches!(s.decide(1, 0, t), Decision::Defer(_)));
    }

    #[test]
    fn suggestions_move_on_between_requesters() {
        let mut s = Spread::new(1000);
        let t = Instant::now();
        assert_eq!(s.decide(1, 0, t), Decision::Serve);
        let (Decision::Defer(a), Decision::Defer(b)) = (s.decide(2, 0, t), s.decide(3, 0, t))
        else {
            panic!("expected deferrals")
        };
        assert_eq!(a.len(), MAX_SUGGEST);
        assert!(a.iter().all(|i| !b.contains(i)), "{a:?} / {b:?}");
    }
}
