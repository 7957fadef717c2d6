//! The chunk picker: which chunk to ask which source for next.
//!
//! Rules, as the best swarm clients do it:
//! - **Rarest first**: chunks held by the fewest known sources go first;
//!   ties are broken at random so downloaders spread over different chunks.
//! - **One request per chunk** in the normal phase.
//! - **Endgame**: once every missing chunk has a request out, a source
//!   with nothing in flight may ask for the chunk whose request has waited
//!   longest, if that was at least [`ENDGAME_AFTER`] ago (at most
//!   [`ENDGAME_DUPLICATES`] requests per chunk, one duplicate per idle source
//!   at a time); the first verified copy wins. Duplicating every request
//!   still out, as soon as all were out, sent a third more bytes than
//!   needed in a crowd of 100 downloaders.
//! - A source that fails, stalls or leaves gives its requests back.
//! - A seeder may **defer** a request (initial seeding, [`crate::spread`]):
//!   that chunk is not asked of it again until the deferral ends, and the
//!   chunks it suggested are asked of it first.
//!
//! This module is pure state: no IO; the caller passes the clock.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use p2pfs_proto::Bitfield;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Identifies a source within one download.
pub type SourceId = u32;

/// Most requests for one chunk at once during the endgame.
pub const ENDGAME_DUPLICATES: u8 = 2;

/// How long a chunk's request must have been out before an idle source
/// asks for it too.
pub const ENDGAME_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// How often at most the rarity order is rebuilt. News from up to 32
/// sources arrives many times a second and each changes some counts; a
/// slightly stale order only makes a pick a little less rare, never
/// wrong (each pick checks what the source holds).
pub const REORDER_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Debug)]
struct SourceView {
    have: Bitfield,
    inflight: HashSet<u32>,
    /// Chunks this source deferred, until when.
    deferred: HashMap<u32, Instant>,
    /// Chunks this source suggested, asked of it first.
    suggested: Vec<u32>,
}

impl SourceView {
    fn new(n: u32) -> Self {
        Self {
            have: Bitfield::new(n),
            inflight: HashSet::new(),
            deferred: HashMap::new(),
            suggested: Vec::new(),
        }
    }

    fn may_ask(&self, i: u32) -> bool {
        self.have.get(i) && !self.deferred.contains_key(&i)
    }
}

/// Picker state of one download.
#[derive(Debug)]
pub struct Scheduler {
    n: u32,
    done: Bitfield,
    outstanding: Vec<u8>,
    /// The chunks neither done nor asked for, in a bitfield's byte layout
    /// (bit `i % 8` of byte `i / 8`, most significant first), so that a
    /// pick can tell at once whether a source holds any of them.
    open: Vec<u8>,
    /// Chunks not done yet (every source task asks before each turn).
    missing: u32,
    /// When each chunk with a request out was last asked for (the newest
    /// request: once one of two is released, the other may be that recent).
    asked_at: Vec<Option<Instant>>,
    avail: Vec<u32>,
    /// Chunks not done when it was built, rarest first; ties in random
    /// order, or in index order from `start` while every source holds the
    /// whole file (see [`Scheduler::rebuild_order`]).
    order: Vec<u32>,
    order_dirty: bool,
    /// When `order` was last built.
    ordered_at: Option<Instant>,
    /// Every chunk before this position in `order` is done.
    scan_start: usize,
    sources: HashMap<SourceId, SourceView>,
    rng: StdRng,
    /// Where index order starts, at random per download.
    start: u32,
    /// A source deferred a chunk: it is seeding a swarm (see
    /// [`Scheduler::rebuild_order`]).
    deferred_once: bool,
}

impl Scheduler {
    /// A scheduler for `n` chunks of which `done` are already verified.
    pub fn new(done: Bitfield) -> Self {
        let n = done.len();
        let mut rng = StdRng::from_os_rng();
        let start = if n == 0 {
            0
        } else {
            rand::Rng::random_range(&mut rng, 0..n)
        };
        let mut open = vec![0u8; (n as usize).div_ceil(8)];
        let mut missing = 0;
        for i in (0..n).filter(|&i| !done.get(i)) {
            open[(i / 8) as usize] |= 0x80 >> (i % 8);
            missing += 1;
        }
        Self {
            n,
            missing,
            done,
            outstanding: vec![0; n as usize],
            open,
            asked_at: vec![None; n as usize],
            avail: vec![0; n as usize],
            order: (0..n).collect(),
            order_dirty: true,
            ordered_at: None,
            scan_start: 0,
            sources: HashMap::new(),
            rng,
            start,
            deferred_once: false,
        }
    }

    /// Number of chunks.
    pub fn len(&self) -> u32 {
        self.n
    }

    /// True for a file without chunks.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Verified chunks.
    pub fn done(&self) -> &Bitfield {
        &self.done
    }

    /// True when every chunk is verified.
    pub fn is_complete(&self) -> bool {
        self.missing == 0
    }

    /// Adds a source or replaces what it is known to hold.
    pub fn set_source(&mut self, id: SourceId, have: Bitfield) {
        if have.len() != self.n {
            return;
        }
        let view = self
            .sources
            .entry(id)
            .or_insert_with(|| SourceView::new(have.len()));
        for i in have.ones_not_in(&view.have) {
            self.avail[i as usize] += 1;
        }
        for i in view.have.ones_not_in(&have) {
            self.avail[i as usize] -= 1;
        }
        view.have = have;
        self.order_dirty = true;
    }

    /// Adds chunks a source now holds (it told us, or the tracker did);
    /// what it was known to hold stays. Returns true when it added any.
    pub fn merge_source(&mut self, id: SourceId, have: &Bitfield) -> bool {
        let Some(view) = self.sources.get_mut(&id) else {
            return false;
        };
        if have.len() != self.n {
            return false;
        }
        let mut added = false;
        for i in have.ones_not_in(&view.have) {
            self.avail[i as usize] += 1;
            added = true;
        }
        if added {
            view.have.union_with(have);
            self.order_dirty = true;
        }
        added
    }

    /// Whether `have` holds a chunk not done yet.
    pub fn wants_any(&self, have: &Bitfield) -> bool {
        have.len() == self.n
            && have
                .as_bytes()
                .iter()
                .zip(self.done.as_bytes())
                .any(|(h, d)| h & !d != 0)
    }

    /// Whether source `id` is known to hold a chunk not done yet.
    pub fn source_has_wanted(&self, id: SourceId) -> bool {
        self.sources
            .get(&id)
            .is_some_and(|v| self.wants_any(&v.have))
    }

    /// Removes a source; its requests go back to the pool.
    pub fn remove_source(&mut self, id: SourceId) {
        self.release_all(id);
        if let Some(view) = self.sources.remove(&id) {
            for i in view.have.ones() {
                self.avail[i as usize] -= 1;
            }
            self.order_dirty = true;
        }
    }

    /// Gives back every request of a source (it stalled or left) and
    /// returns how many there were.
    pub fn release_all(&mut self, id: SourceId) -> usize {
        let Some(view) = self.sources.get_mut(&id) else {
            return 0;
        };
        let released: Vec<u32> = view.inflight.drain().collect();
        for &i in &released {
            self.drop_request(i);
        }
        released.len()
    }

    /// Requests of `id` in flight.
    pub fn inflight(&self, id: SourceId) -> usize {
        self.sources.get(&id).map_or(0, |v| v.inflight.len())
    }

    /// Marks that a source does not hold a chunk after all (it said so).
    pub fn source_lacks(&mut self, id: SourceId, index: u32) {
        self.release(id, index);
        if let Some(view) = self.sources.get_mut(&id) {
            if view.have.get(index) {
                let mut have = view.have.clone();
                have = {
                    let mut b = Bitfield::new(have.len());
                    for i in have.ones().filter(|&i| i != index) {
                        b.set(i);
                    }
                    b
                };
                self.set_source(id, have);
            }
        }
    }

    /// Gives one request back (bad data, error reply).
    pub fn release(&mut self, id: SourceId, index: u32) {
        if let Some(view) = self.sources.get_mut(&id) {
            if view.inflight.remove(&index) {
                self.drop_request(index);
            }
        }
    }

    /// One request for chunk `i` ended.
    fn drop_request(&mut self, i: u32) {
        let n = &mut self.outstanding[i as usize];
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.asked_at[i as usize] = None;
            if !self.done.get(i) {
                self.open[(i / 8) as usize] |= 0x80 >> (i % 8);
            }
        }
    }

    /// Records a verified chunk from `id`. Returns false when it was
    /// already done (a duplicate from the endgame or a late stalled reply).
    pub fn complete(&mut self, id: SourceId, index: u32) -> bool {
        self.release(id, index);
        if index >= self.n || self.done.get(index) {
            return false;
        }
        self.done.set(index);
        self.missing -= 1;
        self.open[(index / 8) as usize] &= !(0x80 >> (index % 8));
        true
    }

    /// Orders the chunks not done by how many sources hold them, fewest
    /// first (a counting sort: stable, and linear, as the counts are at
    /// most the number of sources).
    ///
    /// Ties go in random order in a swarm: downloaders of one file then ask
    /// for different chunks and have different ones to pass on (index
    /// order from a random start made a swarm of 32 end at 1.15–1.19 of
    /// its bound instead of 1.12–1.13). A download counts as part of a
    /// swarm once a source holds only part of the file or a seeder
    /// deferred a chunk (it does so only while it seeds several
    /// downloaders). Otherwise ties go in index order from a random place:
    /// a seeder then reads its file in runs, which the kernel reads ahead,
    /// where random chunks from a file that is not in memory were read one
    /// at a time (1 GiB from a seeder whose file was not cached: 0.36–0.44 s
    /// instead of 0.83–1.03 s).
    fn rebuild_order(&mut self, now: Instant) {
        let done = &self.done;
        if !self.deferred_once && self.sources.values().all(|v| v.have.is_full()) {
            let (n, start) = (self.n, self.start);
            self.order = (0..n)
                .map(|k| (start + k) % n)
                .filter(|&i| !done.get(i))
                .collect();
        } else {
            self.order.retain(|&i| !done.get(i));
            self.order.shuffle(&mut self.rng);
        }
        let avail = &self.avail;
        let most = self
            .order
            .iter()
            .map(|&i| avail[i as usize])
            .max()
            .unwrap_or(0) as usize;
        // starts[a]: where the chunks held by `a` sources begin.
        let mut starts = vec![0usize; most + 2];
        for &i in &self.order {
            starts[avail[i as usize] as usize + 1] += 1;
        }
        for a in 1..starts.len() {
            starts[a] += starts[a - 1];
        }
        let mut sorted = vec![0u32; self.order.len()];
        for &i in &self.order {
            let slot = &mut starts[avail[i as usize] as usize];
            sorted[*slot] = i;
            *slot += 1;
        }
        self.order = sorted;
        self.order_dirty = false;
        self.ordered_at = Some(now);
        self.scan_start = 0;
    }

    /// The source deferred chunk `index` until `until` and suggested
    /// other chunks: the request goes back to the pool, `index` is not
    /// asked of this source before `until`, and the suggestions are asked
    /// of it first.
    pub fn defer(&mut self, id: SourceId, index: u32, suggest: &[u32], until: Instant) {
        self.release(id, index);
        if !self.deferred_once {
            self.deferred_once = true;
            self.order_dirty = true;
        }
        let n = self.n;
        if let Some(view) = self.sources.get_mut(&id) {
            if index < n {
                view.deferred.insert(index, until);
            }
            if !suggest.is_empty() {
                view.suggested = suggest.iter().copied().filter(|&i| i < n).collect();
                view.suggested.dedup();
            }
        }
    }

    /// Picks up to `max` chunks for source `id` to request at time `now`,
    /// marks them in flight and returns them.
    pub fn pick(&mut self, id: SourceId, max: usize, now: Instant) -> Vec<u32> {
        let mut out = Vec::new();
        if max == 0 || !self.sources.contains_key(&id) {
            return out;
        }
        let due = self
            .ordered_at
            .is_none_or(|at| now.saturating_duration_since(at) >= REORDER_EVERY);
        if self.order_dirty && due {
            self.rebuild_order(now);
        }
        while self.scan_start < self.order.len() && self.done.get(self.order[self.scan_start]) {
            self.scan_start += 1;
        }
        let Some(view) = self.sources.get_mut(&id) else {
            return out;
        };
        view.deferred.retain(|_, until| *until > now);
        let (done, outstanding, asked_at, open) = (
            &self.done,
            &mut self.outstanding,
            &self.asked_at,
            &mut self.open,
        );
        // Suggestions first: the chunks this seeder has sent to nobody.
        let deferred = &view.deferred;
        let have = &view.have;
        view.suggested.retain(|&i| {
            let usable = !done.get(i)
                && outstanding[i as usize] == 0
                && have.get(i)
                && !deferred.contains_key(&i);
            if usable && out.len() < max {
                take(&mut out, outstanding, open, i);
                return false;
            }
            usable
        });
        let all_requested = open.iter().all(|&b| b == 0);
        // The chunks nobody was asked for that this source holds, counted a
        // byte at a time: a source with none of them (common in a crowd,
        // where each source task looks for work whenever it wakes) costs no
        // walk of the order, and a walk ends at the last of them (200
        // downloaders of 1,024 chunks spent about 5 % of their CPU time
        // walking the order).
        let mut left: u32 = open
            .iter()
            .zip(have.as_bytes())
            .map(|(o, h)| (o & h).count_ones())
            .sum();
        if out.len() < max && left > 0 {
            for &i in &self.order[self.scan_start..] {
                if done.get(i) || outstanding[i as usize] != 0 || !have.get(i) {
                    continue;
                }
                if !deferred.contains_key(&i) {
                    take(&mut out, outstanding, open, i);
                    if out.len() == max {
                        break;
                    }
                }
                left -= 1;
                if left == 0 {
                    break;
                }
            }
        }
        if out.is_empty() && all_requested && view.inflight.is_empty() {
            // Endgame: this idle source takes on the straggler asked longest ago.
            let straggler = self.order[self.scan_start..]
                .iter()
                .copied()
                .filter(|&i| {
                    !done.get(i) && outstanding[i as usize] < ENDGAME_DUPLICATES && view.may_ask(i)
                })
                .filter_map(|i| asked_at[i as usize].map(|at| (at, i)))
                .filter(|&(at, _)| now.saturating_duration_since(at) >= ENDGAME_AFTER)
                .min();
            if let Some((_, i)) = straggler {
                out.push(i);
                outstanding[i as usize] += 1;
            }
        }
        for &i in &out {
            view.inflight.insert(i);
            self.asked_at[i as usize] = Some(now);
        }
        out
    }

    /// Missing chunks that no known source holds.
    pub fn missing_without_source(&self) -> u32 {
        (0..self.n)
            .filter(|&i| !self.done.get(i) && self.avail[i as usize] == 0)
            .count() as u32
    }

    /// Number of sources.
    pub fn source_count(&self) -> usize {
        self.sources.len()
    }
}

/// Marks chunk `i` asked for by one more request and adds it to `out`: a
/// chunk picked counts as outstanding at once, so that it is not picked
/// twice in one call.
fn take(out: &mut Vec<u32>, outstanding: &mut [u8], open: &mut [u8], i: u32) {
    out.push(i);
    outstanding[i as usize] += 1;
    open[(i / 8) as usize] &= !(0x80 >> (i % 8));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn now() -> Instant {
        Instant::now()
    }

    fn have(n: u32, idx: &[u32]) -> Bitfield {
        let mut b = Bitfield::new(n);
        for &i in idx {
            b.set(i);
        }
        b
    }

    /// `open` is exactly the chunks neither done nor asked for, whatever
    /// happens, and a pick never misses an open chunk its source holds.
    #[test]
    fn open_chunks_stay_in_step_with_requests() {
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(7);
        for round in 0..40 {
            let n = rng.random_range(1..300);
            let mut done = Bitfield::new(n);
            for i in 0..n {
                if rng.random_bool(0.2) {
                    done.set(i);
                }
            }
            let mut s = Scheduler::new(done);
            let mut t = now();
            for id in 1..=4 {
                let idx: Vec<u32> = (0..n).filter(|_| rng.random_bool(0.5)).collect();
                s.set_source(id, have(n, &idx));
            }
            for _ in 0..400 {
                t += Duration::from_millis(rng.random_range(0..300));
                let id = rng.random_range(1..=4);
                match rng.random_range(0..10) {
                    0..=3 => {
                        let got = s.pick(id, rng.random_range(1..8), t);
                        let mut seen = std::collections::HashSet::new();
                        for &i in &got {
                            assert!(seen.insert(i), "round {round}: {i} picked twice");
                            assert!(!s.done.get(i) && s.sources[&id].have.get(i));
                        }
                        if got.is_empty() {
                            let view = &s.sources[&id];
                            assert!(
                                (0..n).all(|i| s.done.get(i)
                                    || s.outstanding[i as usize] > 0
                                    || !view.may_ask(i)),
                                "round {round}: an open chunk of source {id} was not picked"
                            );
                        }
                    }
                    4..=6 => {
                        let inflight: Vec<u32> = s.sources[&id].inflight.iter().copied().collect();
                        if let Some(&i) = inflight.first() {
                            s.complete(id, i);
                        }
                    }
                    7 => {
                        let inflight: Vec<u32> = s.sources[&id].inflight.iter().copied().collect();
                        if let Some(&i) = inflight.first() {
                            s.release(id, i);
                        }
                    }
                    8 => {
                        s.release_all(id);
                    }
                    _ => {
                        let i = rng.random_range(0..n);
                        s.defer(id, i, &[], t + Duration::from_secs(1));
                    }
                }
                assert_eq!(s.is_complete(), s.done.is_full());
                for i in 0..n {
                    let open = s.open[(i / 8) as usize] & (0x80 >> (i % 8)) != 0;
                    assert_eq!(
                        open,
                        !s.done.get(i) && s.outstanding[i as usize] == 0,
                        "round {round}: chunk {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn rarest_first() {
        let mut s = Scheduler::new(Bitfield::new(4));
        s.set_source(1, Bitfield::full(4));
        s.set_source(2, have(4, &[0, 1, 2]));
        s.set_source(3, have(4, &[0, 1]));
        // chunk 3 is held by one source, 2 by two, 0 and 1 by three.
        assert_eq!(s.pick(1, 2, now()), vec![3, 2]);
        let next = s.pick(1, 2, now());
        assert!(next.contains(&0) && next.contains(&1));
    }

    #[test]
    fn ties_go_in_runs_from_seeders_and_at_random_in_a_swarm() {
        let n = 256;
        let consecutive = |picks: &[u32]| picks.windows(2).all(|w| w[1] == (w[0] + 1) % n);
        // Seeders only: index order from a random place, wrapping around,
        // and the done chunks skipped.
        let mut done = Bitfield::new(n);
        done.set(100);
        let mut s = Scheduler::new(done);
        s.set_source(1, Bitfield::full(n));
        s.set_source(2, Bitfield::full(n));
        let picks = s.pick(1, (n - 1) as usize, now());
        assert_eq!(picks.len(), (n - 1) as usize);
        let mut around = picks.clone();
        around.insert(((100 + n - picks[0]) % n) as usize, 100);
        assert!(consecutive(&around), "{picks:?}");
        // A source with part of the file: ties at random (64 chunks in a
        // row by chance: about 1 in 10^87).
        let mut s = Scheduler::new(Bitfield::new(n));
        s.set_source(1, Bitfield::full(n));
        s.set_source(2, have(n, &(0..n / 2).collect::<Vec<_>>()));
        let rarest = s.pick(1, 64, now());
        assert!(rarest.iter().all(|&i| i >= n / 2), "the rarest first");
        assert!(!consecutive(&rarest), "{rarest:?}");
        // Seeders only, but one deferred a chunk: it seeds a swarm.
        let mut s = Scheduler::new(Bitfield::new(n));
        s.set_source(1, Bitfield::full(n));
        let first = s.pick(1, 1, now())[0];
        s.defer(1, first, &[], now() + Duration::from_secs(3));
        let picks = s.pick(1, 64, now() + REORDER_EVERY);
        assert!(!consecutive(&picks), "{picks:?}");
    }

    #[test]
    fn the_rarity_order_follows_news_at_most_every_reorder_every() {
        let mut s = Scheduler::new(Bitfield::new(6));
        s.set_source(1, Bitfield::full(6));
        s.set_source(2, have(6, &[0, 1, 2, 3]));
        let t = now();
        // Chunks 4 and 5 are the rarest.
        let mut first = s.pick(1, 2, t);
        first.sort_unstable();
        assert_eq!(first, vec![4, 5]);
        // News: source 2 now holds 4 and 5 too, and a third source holds
        // only chunk 0 and 1, so 2 and 3 are now the rarest left.
        assert!(s.merge_source(2, &have(6, &[4, 5])));
        s.set_source(3, have(6, &[0, 1]));
        assert!(!s.merge_source(2, &have(6, &[4])), "nothing new");
        // Within REORDER_EVERY the old order stands (all four are ties in
        // it), but a pick never returns a chunk twice or one out already.
        let soon = s.pick(1, 4, t + REORDER_EVERY / 2);
        assert_eq!(soon.len(), 4);
        assert!(soon.iter().all(|i| !first.contains(i)));
        for &i in &soon {
            s.release(1, i);
        }
        let mut later = s.pick(1, 2, t + REORDER_EVERY);
        later.sort_unstable();
        assert_eq!(later, vec![2, 3], "rebuilt: rarest first again");
    }

    #[test]
    fn one_request_per_chunk_then_endgame() {
        let mut s = Scheduler::new(Bitfield::new(3));
        s.set_source(1, Bitfield::full(3));
        s.set_source(2, Bitfield::full(3));
        let t = now();
        let a = s.pick(1, 2, t);
        let t1 = t + Duration::from_millis(300);
        let b = s.pick(2, 2, t1);
        assert_eq!(a.len(), 2);
        assert_eq!(b.len(), 1);
        assert!(!a.contains(&b[0]));
        // Everything is requested, but source 2 is busy: no duplicates.
        assert!(s.pick(2, 5, t + ENDGAME_AFTER * 2).is_empty());
        assert!(s.complete(2, b[0]));
        // Idle now, but the requests out are too young.
        assert!(s.pick(2, 5, t + ENDGAME_AFTER / 2).is_empty());
        // Old enough: one duplicate, of a chunk source 1 is fetching.
        let later = t + ENDGAME_AFTER;
        let dup = s.pick(2, 5, later);
        assert_eq!(dup.len(), 1, "one straggler at a time");
        assert!(a.contains(&dup[0]));
        assert!(s.pick(2, 5, later).is_empty(), "busy again");
        assert!(s.complete(1, dup[0]));
        assert!(!s.complete(2, dup[0]), "second copy is a duplicate");
        let other = a.iter().copied().find(|&i| i != dup[0]).unwrap();
        assert_eq!(s.pick(2, 5, later), vec![other]);
    }

    #[test]
    fn the_endgame_takes_the_oldest_request_first() {
        let mut s = Scheduler::new(Bitfield::new(3));
        s.set_source(1, Bitfield::full(3));
        s.set_source(2, Bitfield::full(3));
        s.set_source(3, Bitfield::full(3));
        let t = now();
        let first = s.pick(1, 1, t)[0];
        let rest = s.pick(1, 5, t + Duration::from_millis(500));
        assert_eq!(rest.len(), 2);
        let t2 = t + ENDGAME_AFTER * 3;
        assert_eq!(s.pick(2, 5, t2), vec![first]);
        // Source 1 lets go: source 2's request of `first` is the one out
        // now, and it is too recent for source 3 to duplicate.
        s.release_all(1);
        assert_eq!(s.asked_at[first as usize], Some(t2));
        assert!(rest.iter().all(|&i| s.asked_at[i as usize].is_none()));
        for &i in &rest {
            assert!(s.complete(1, i), "a late reply still counts");
        }
        assert!(s.pick(3, 5, t2 + ENDGAME_AFTER / 2).is_empty());
        assert_eq!(s.pick(3, 5, t2 + ENDGAME_AFTER), vec![first]);
    }

    #[test]
    fn released_requests_go_to_others() {
        let mut s = Scheduler::new(Bitfield::new(2));
        s.set_source(1, Bitfield::full(2));
        s.set_source(2, Bitfield::full(2));
        assert_eq!(s.pick(1, 2, now()).len(), 2);
        s.remove_source(1);
        let mut got = s.pick(2, 2, now());
        got.sort();
        assert_eq!(got, vec![0, 1]);
    }

    #[test]
    fn missing_chunks_without_source_are_counted() {
        let mut s = Scheduler::new(have(5, &[0]));
        s.set_source(1, have(5, &[1, 2]));
        assert_eq!(s.missing_without_source(), 2);
        s.remove_source(1);
        assert_eq!(s.missing_without_source(), 4);
        assert!(s.pick(1, 3, now()).is_empty());
    }

    #[test]
    fn lacking_source_is_not_asked_again() {
        let mut s = Scheduler::new(Bitfield::new(2));
        s.set_source(1, Bitfield::full(2));
        let first = s.pick(1, 1, now());
        s.source_lacks(1, first[0]);
        let second = s.pick(1, 5, now());
        assert_eq!(second.len(), 1);
        assert_ne!(second[0], first[0]);
        assert_eq!(s.missing_without_source(), 1);
    }

    #[test]
    fn a_deferred_chunk_waits_and_suggestions_go_first() {
        let mut s = Scheduler::new(Bitfield::new(10));
        s.set_source(1, Bitfield::full(10));
        let t = now();
        let first = s.pick(1, 1, t)[0];
        let suggest: Vec<u32> = (0..10).filter(|&i| i != first).rev().take(3).collect();
        s.defer(1, first, &suggest, t + Duration::from_secs(2));
        assert_eq!(s.pick(1, 3, t), suggest, "suggestions first, in order");
        let rest = s.pick(1, 10, t);
        assert_eq!(rest.len(), 6, "everything else but the deferred chunk");
        assert!(!rest.contains(&first));
        assert!(
            s.pick(1, 10, t).is_empty(),
            "no endgame on a deferred chunk"
        );
        assert_eq!(
            s.pick(1, 10, t + Duration::from_secs(2)),
            vec![first],
            "asked again once the deferral ends"
        );
    }

    #[test]
    fn a_deferred_chunk_goes_to_another_source() {
        let mut s = Scheduler::new(Bitfield::new(2));
        s.set_source(1, Bitfield::full(2));
        s.set_source(2, Bitfield::full(2));
        let t = now();
        let first = s.pick(1, 1, t)[0];
        s.defer(1, first, &[1 - first], t + Duration::from_secs(3));
        assert_eq!(s.pick(1, 2, t), vec![1 - first]);
        assert_eq!(s.pick(2, 2, t), vec![first]);
    }

    #[test]
    fn merged_news_adds_and_keeps() {
        let mut s = Scheduler::new(Bitfield::new(4));
        s.set_source(1, have(4, &[0]));
        assert!(s.merge_source(1, &have(4, &[2])));
        assert!(!s.merge_source(1, &have(4, &[0, 2])), "nothing new");
        assert!(!s.merge_source(2, &have(4, &[1])), "unknown source");
        assert!(!s.merge_source(1, &have(5, &[4])), "wrong length");
        let mut got = s.pick(1, 4, now());
        got.sort_unstable();
        assert_eq!(got, vec![0, 2]);
        assert_eq!(s.missing_without_source(), 2);
    }
}
