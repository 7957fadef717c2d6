//! Initial seeding: a complete holder sends every chunk out once before it
//! sends any chunk twice.
//!
//! When many downloaders fetch one file at once, the seeder's upload is the
//! bottleneck of the whole swarm: every chunk it sends twice is time taken
//! from a chunk nobody has yet. Downloaders cannot avoid that on their own:
//! they pick rarest first, but they learn what the others fetch only from
//! the tracker or from their sources, a moment late, so two of them often
//! ask the seeder for the same chunk. The seeder sees every request, so it
//! keeps the ledger: how many times it has handed out each chunk, and to
//! which connection it handed it last.
//!
//! A request of connection `c` for chunk `x` is
//! - **served** if `x` was last handed to `c` itself (asked again);
//! - **deferred without suggestions** if `x` was handed to another
//!   connection and is still on its way there (for at most [`HOLD_BACK`]),
//!   or reached it less than [`SPREAD_GRACE`] ago: that downloader is about
//!   to pass it on;
//! - **served** if `x` is among the chunks handed out least often (in the
//!   first round: never);
//! - **deferred with suggestions** of least-handed chunks if `x` was handed
//!   to another connection less than [`HOLD_BACK`] ago and `c` did not ask
//!   for it before: the requester gets `x` from there and asks the seeder
//!   for chunks nobody has;
//! - **deferred with suggestions** in any case while some chunk has never
//!   gone out: a second copy of `x` would delay the seeder's first copy of
//!   the file, which every downloader waits for (a trace at N = 32 found
//!   second copies sent before every chunk had gone out once);
//! - **served** otherwise (`c` asks again after a deferral, or `x` went
//!   out long ago), so a chunk whose first downloader does not pass it on
//!   comes from the seeder again.
//!
//! A lone downloader never asks for a chunk twice, so it is never deferred;
//! a second wave of downloaders, hours later, starts a new round.
//! Pure state: no IO; the caller passes the clock.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use p2pfs_proto::limits::MAX_SUGGEST;

/// How long a chunk handed to one connection is kept from others while
/// less-handed chunks remain, counted from when it was written to that
/// connection.
pub const HOLD_BACK: Duration = Duration::from_secs(15);

/// How long after a chunk was written to one downloader a request of
/// another one is deferred in any case: time for the first one to verify
/// it and tell its own downloaders.
pub const SPREAD_GRACE: Duration = Duration::from_secs(2);

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

#[derive(Clone, Copy, Debug)]
struct Handed {
    conn: ConnId,
    at: Instant,
    written: bool,
}

/// The ledger of one complete holding.
#[derive(Debug)]
pub struct Spread {
    /// Per chunk: times handed out.
    sends: Vec<u32>,
    /// Per chunk: the last hand-out.
    last: Vec<Option<Handed>>,
    /// How many chunks were handed out how many times.
    levels: BTreeMap<u32, u32>,
    /// Where the next suggestion scan starts (moves on, so that concurrent
    /// requesters get different suggestions).
    cursor: usize,
}

impl Spread {
    /// A ledger for `n` chunks, none handed out.
    pub fn new(n: u32) -> Self {
        let mut levels = BTreeMap::new();
        if n > 0 {
            levels.insert(0, n);
        }
        Self {
            sends: vec![0; n as usize],
            last: vec![None; n as usize],
            levels,
            cursor: rand::random::<u32>() as usize % (n as usize).max(1),
        }
    }

    fn least(&self) -> u32 {
        self.levels.keys().next().copied().unwrap_or(0)
    }

    fn move_level(&mut self, index: usize, to: u32) {
        let from = self.sends[index];
        if let Some(c) = self.levels.get_mut(&from) {
            *c -= 1;
            if *c == 0 {
                self.levels.remove(&from);
            }
        }
        *self.levels.entry(to).or_insert(0) += 1;
        self.sends[index] = to;
    }

    fn hand(&mut self, conn: ConnId, index: usize, now: Instant) {
        self.move_level(index, self.sends[index] + 1);
        self.last[index] = Some(Handed {
            conn,
            at: now,
            written: false,
        });
    }

    /// Decides a request of `conn` for chunk `index` at time `now`;
    /// `asked_again`: this connection was deferred for this chunk before.
    pub fn decide(
        &mut self,
        conn: ConnId,
        index: u32,
        now: Instant,
        asked_again: bool,
    ) -> Decision {
        let i = index as usize;
        if i >= self.sends.len() {
            return Decision::Serve;
        }
        let other = self.last[i].filter(|h| h.conn != conn);
        if self.last[i].is_some() && other.is_none() {
            return Decision::Serve;
        }
        let since = |h: Handed| now.saturating_duration_since(h.at);
        if let Some(h) = other {
            let on_its_way = !h.written && since(h) < HOLD_BACK;
            if on_its_way || (h.written && since(h) < SPREAD_GRACE) {
                return Decision::Defer(Vec::new());
            }
        }
        if !asked_again
            && self.sends[i] > self.least()
            && other.is_some_and(|h| since(h) < HOLD_BACK)
        {
            return Decision::Defer(self.suggest(now));
        }
        if self.least() == 0 && self.sends[i] > 0 {
            // Some chunk has never gone out: a second copy of this one
            // would delay the seeder's first copy of the file, which every
            // downloader waits for.
            return Decision::Defer(self.suggest(now));
        }
        self.hand(conn, i, now);
        Decision::Serve
    }

    /// Records that chunk `index` has been written to `conn`.
    pub fn written(&mut self, conn: ConnId, index: u32, now: Instant) {
        if let Some(Some(h)) = self.last.get_mut(index as usize) {
            if h.conn == conn {
                h.at = now;
                h.written = true;
            }
        }
    }

    /// Takes back chunk `index` from `conn` (it could not be sent): unless
    /// already written, it counts as never handed to it.
    pub fn unhand(&mut self, conn: ConnId, index: u32) {
        let i = index as usize;
        if let Some(h) = self.last.get(i).copied().flatten() {
            if h.conn == conn && !h.written {
                self.last[i] = None;
                self.move_level(i, self.sends[i].saturating_sub(1));
            }
        }
    }

    /// Releases what `conn` was handed (it closed): a chunk not written to
    /// it yet counts as never handed to it.
    pub fn forget(&mut self, conn: ConnId) {
        for i in 0..self.last.len() {
            if let Some(h) = self.last[i].filter(|h| h.conn == conn) {
                self.last[i] = None;
                if !h.written {
                    self.move_level(i, self.sends[i].saturating_sub(1));
                }
            }
        }
    }

    /// Up to [`MAX_SUGGEST`] of the least-handed chunks not handed out in
    /// the last [`HOLD_BACK`], scanning on from where the last scan
    /// stopped.
    fn suggest(&mut self, now: Instant) -> Vec<u32> {
        let n = self.sends.len();
        let least = self.least();
        let mut out = Vec::new();
        let mut i = self.cursor;
        for _ in 0..n {
            if i >= n {
                i = 0;
            }
            let idle =
                self.last[i].is_none_or(|h| now.saturating_duration_since(h.at) >= HOLD_BACK);
            if self.sends[i] == least && idle {
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

    fn sorted(d: Decision) -> Vec<u32> {
        let Decision::Defer(mut v) = d else {
            panic!("expected a deferral, got {d:?}")
        };
        v.sort_unstable();
        v
    }

    #[test]
    fn a_lone_downloader_is_never_deferred() {
        let mut s = Spread::new(100);
        let t = Instant::now();
        for i in 0..100 {
            assert_eq!(s.decide(1, i, t, false), Decision::Serve);
        }
        // Asking again (a chunk that failed to verify) is served too.
        assert_eq!(s.decide(1, 5, t, false), Decision::Serve);
    }

    #[test]
    fn a_chunk_on_its_way_to_another_is_deferred() {
        let mut s = Spread::new(10);
        let t = Instant::now();
        assert_eq!(s.decide(1, 3, t, false), Decision::Serve);
        assert_eq!(s.decide(2, 3, t, false), Decision::Defer(Vec::new()));
        s.written(1, 3, t);
        let later = t + SPREAD_GRACE;
        assert_eq!(
            sorted(s.decide(2, 3, later, false)),
            vec![0, 1, 2, 4, 5, 6, 7, 8, 9]
        );
        // The suggestions are served to the second connection.
        assert_eq!(s.decide(2, 0, later, false), Decision::Serve);
    }

    #[test]
    fn once_every_chunk_went_out_a_spread_chunk_is_served_again() {
        let mut s = Spread::new(3);
        let t = Instant::now();
        for i in 0..3 {
            assert_eq!(s.decide(1, i, t, false), Decision::Serve);
        }
        s.written(1, 0, t);
        assert_eq!(s.decide(2, 0, t, false), Decision::Defer(Vec::new()));
        assert_eq!(
            s.decide(2, 1, t + SPREAD_GRACE, false),
            Decision::Defer(Vec::new()),
            "not written yet"
        );
        assert_eq!(
            s.decide(2, 0, t + SPREAD_GRACE, false),
            Decision::Serve,
            "every chunk went out once"
        );
        assert_eq!(
            s.decide(3, 0, t + SPREAD_GRACE, false),
            Decision::Defer(Vec::new())
        );
    }

    #[test]
    fn a_chunk_handed_long_ago_is_not_suggested_while_fresh_ones_remain() {
        let mut s = Spread::new(4);
        let t = Instant::now();
        assert_eq!(s.decide(1, 0, t, false), Decision::Serve);
        s.written(1, 0, t);
        let late = t + HOLD_BACK;
        // Past the hold-back the suggestions are still the chunks never
        // handed out, and chunk 0 is not sent twice while they remain.
        assert_eq!(s.decide(1, 1, late, false), Decision::Serve);
        s.written(1, 1, late);
        assert_eq!(
            sorted(s.decide(2, 1, late + SPREAD_GRACE, false)),
            vec![2, 3]
        );
        assert_eq!(sorted(s.decide(2, 0, late, false)), vec![2, 3]);
        assert_eq!(s.decide(2, 2, late, false), Decision::Serve);
        assert_eq!(s.decide(2, 3, late, false), Decision::Serve);
        // Every chunk went out: chunk 0, handed out long ago, is sent again.
        assert_eq!(s.decide(2, 0, late, false), Decision::Serve);
    }

    #[test]
    fn a_closed_connection_releases_its_chunks() {
        let mut s = Spread::new(4);
        let t = Instant::now();
        assert_eq!(s.decide(1, 0, t, false), Decision::Serve);
        assert!(matches!(s.decide(2, 0, t, false), Decision::Defer(_)));
        s.forget(1);
        assert_eq!(s.decide(2, 0, t, false), Decision::Serve);
        assert!(matches!(s.decide(1, 0, t, false), Decision::Defer(_)));
    }

    #[test]
    fn a_second_wave_starts_a_new_round() {
        let mut s = Spread::new(2);
        let t = Instant::now();
        for i in 0..2 {
            assert_eq!(s.decide(1, i, t, false), Decision::Serve);
            s.written(1, i, t);
        }
        s.forget(1);
        let later = t + HOLD_BACK * 100;
        assert_eq!(s.decide(2, 0, later, false), Decision::Serve);
        s.written(2, 0, later);
        assert_eq!(
            sorted(s.decide(3, 0, later + SPREAD_GRACE, false)),
            vec![1],
            "chunk 1 went out fewer times"
        );
    }

    #[test]
    fn suggestions_move_on_between_requesters() {
        let mut s = Spread::new(1000);
        let t = Instant::now();
        assert_eq!(s.decide(1, 0, t, false), Decision::Serve);
        s.written(1, 0, t);
        let later = t + SPREAD_GRACE;
        let (Decision::Defer(a), Decision::Defer(b)) =
            (s.decide(2, 0, later, false), s.decide(3, 0, later, false))
        else {
            panic!("expected deferrals")
        };
        assert_eq!(a.len(), MAX_SUGGEST);
        assert!(a.iter().all(|i| !b.contains(i)), "{a:?} / {b:?}");
    }

    #[test]
    fn asking_again_after_a_deferral_is_served_once_every_chunk_went_out() {
        let mut s = Spread::new(3);
        let t = Instant::now();
        assert_eq!(s.decide(1, 0, t, false), Decision::Serve);
        s.written(1, 0, t);
        let later = t + SPREAD_GRACE;
        assert_eq!(sorted(s.decide(2, 0, later, false)), vec![1, 2]);
        assert_eq!(
            sorted(s.decide(2, 0, later, true)),
            vec![1, 2],
            "chunks 1 and 2 never went out"
        );
        assert_eq!(s.decide(2, 1, later, false), Decision::Serve);
        assert_eq!(s.decide(3, 2, later, false), Decision::Serve);
        assert_eq!(s.decide(2, 0, later, true), Decision::Serve);
    }

    #[test]
    fn a_chunk_that_could_not_be_sent_is_taken_back() {
        let mut s = Spread::new(3);
        let t = Instant::now();
        assert_eq!(s.decide(1, 0, t, false), Decision::Serve);
        assert_eq!(s.decide(2, 0, t, false), Decision::Defer(Vec::new()));
        s.unhand(1, 0);
        assert_eq!(s.decide(2, 0, t, false), Decision::Serve);
        // An unwritten hand-out does not hold the chunk back for ever (once
        // every chunk went out).
        assert_eq!(s.decide(3, 1, t, false), Decision::Serve);
        assert_eq!(s.decide(3, 2, t, false), Decision::Serve);
        assert_eq!(s.decide(1, 1, t + HOLD_BACK, false), Decision::Serve);
    }

    #[test]
    fn a_closed_connection_gives_back_what_it_was_not_sent() {
        let mut s = Spread::new(2);
        let t = Instant::now();
        assert_eq!(s.decide(1, 0, t, false), Decision::Serve);
        s.forget(1);
        assert_eq!(s.decide(2, 1, t, false), Decision::Serve);
        s.written(2, 1, t);
        assert_eq!(
            sorted(s.decide(3, 1, t + SPREAD_GRACE, false)),
            vec![0],
            "chunk 0 was never sent"
        );
    }
}
