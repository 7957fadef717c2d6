//! The tracker's soft state: online peers, publications and holdings.
//! Everything here can be rebuilt from what peers announce; nothing is
//! persisted. All methods are synchronous and quick, so callers hold the
//! state's mutex only for the call (never across an await).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use p2pfs_proto::limits::{HOLDERS_REPLY_BYTES, HOLDER_MAX_LEN};
use p2pfs_proto::message::{name_problem, ChunkInfo, FileInfo, HolderRef, PeerInfo, PublishedInfo};
use p2pfs_proto::{Bitfield, ContentId, ErrorCode, Manifest, Message, PeerId};

/// Hash maps with foldhash, seeded per process: the keys are ids, hashes
/// and names that peers choose, and SipHash showed up in profiles.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// An online peer.
#[derive(Debug, Clone)]
struct PeerEntry {
    addr: SocketAddr,
    conn_id: u64,
    since: u64,
    /// Contents it holds at least part of (index of `Content::holders`).
    holds: HashSet<ContentId>,
}

/// One publisher's publications (index of `State::publications`): they
/// outlive the publisher while someone else holds the content.
#[derive(Debug, Default)]
struct Published {
    /// Name -> local path.
    names: BTreeMap<String, String>,
    /// Local path -> name.
    paths: HashMap<String, String>,
}

/// A (name, publisher) entry.
#[derive(Debug, Clone)]
struct Publication {
    content_id: ContentId,
    local_path: String,
    publisher_addr: SocketAddr,
}

/// Every publication, by name then publisher: a file-location request is
/// one hash lookup of its name (a B-tree of `(name, publisher)` keys spent
/// most of its time comparing names).
#[derive(Debug, Default)]
struct Publications(HashMap<String, HashMap<PeerId, Publication>>);

impl Publications {
    fn get(&self, name: &str, publisher: PeerId) -> Option<&Publication> {
        self.0.get(name)?.get(&publisher)
    }

    fn get_mut(&mut self, name: &str, publisher: PeerId) -> Option<&mut Publication> {
        self.0.get_mut(name)?.get_mut(&publisher)
    }

    fn insert(&mut self, name: String, publisher: PeerId, p: Publication) {
        self.0.entry(name).or_default().insert(publisher, p);
    }

    fn remove(&mut self, name: &str, publisher: PeerId) -> Option<Publication> {
        let of_name = self.0.get_mut(name)?;
        let p = of_name.remove(&publisher)?;
        if of_name.is_empty() {
            self.0.remove(name);
        }
        Some(p)
    }

    /// The publications of `name`, by publisher.
    fn named(&self, name: &str) -> impl Iterator<Item = (&PeerId, &Publication)> {
        self.0.get(name).into_iter().flatten()
    }

    /// Every publication, in no particular order.
    fn iter(&self) -> impl Iterator<Item = (&String, &PeerId, &Publication)> {
        self.0
            .iter()
            .flat_map(|(name, of_name)| of_name.iter().map(move |(id, p)| (name, id, p)))
    }
}

/// What one online peer holds of a content.
#[derive(Debug)]
struct Holding {
    peer_id: PeerId,
    have: Bitfield,
}

/// A content's online holders, sorted by address: replies list them in
/// this order, and reading one needs no other lookup (a location reply with
/// tens of holders used to look each one up in the peer map, then sort).
/// A sorted vector rather than a B-tree: most contents have a few holders,
/// and a B-tree's first node takes about 900 bytes (tracker RSS in
/// benchmark 6 grew by about 10 %).
#[derive(Debug, Default)]
struct Holders(Vec<(SocketAddr, Holding)>);

impl Holders {
    fn find(&self, addr: &SocketAddr) -> Result<usize, usize> {
        self.0.binary_search_by(|(a, _)| a.cmp(addr))
    }

    #[cfg(test)]
    fn get(&self, addr: &SocketAddr) -> Option<&Holding> {
        self.find(addr).ok().map(|i| &self.0[i].1)
    }

    /// The holding at `addr`, made by `new` if there is none.
    fn entry(&mut self, addr: SocketAddr, new: impl FnOnce() -> Holding) -> &mut Holding {
        let i = match self.find(&addr) {
            Ok(i) => i,
            Err(i) => {
                self.insert_at(i, addr, new());
                i
            }
        };
        &mut self.0[i].1
    }

    fn insert(&mut self, addr: SocketAddr, holding: Holding) {
        match self.find(&addr) {
            Ok(i) => self.0[i].1 = holding,
            Err(i) => self.insert_at(i, addr, holding),
        }
    }

    fn insert_at(&mut self, i: usize, addr: SocketAddr, holding: Holding) {
        if self.0.capacity() == 0 {
            // Most contents keep their first holder alone: room for one.
            self.0.reserve_exact(1);
        }
        self.0.insert(i, (addr, holding));
    }

    fn remove(&mut self, addr: &SocketAddr) -> Option<Holding> {
        self.find(addr).ok().map(|i| self.0.remove(i).1)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = (&SocketAddr, &Holding)> {
        self.0.iter().map(|(a, h)| (a, h))
    }
}

#[derive(Debug)]
struct Content {
    manifest: Arc<Manifest>,
    holders: Holders,
    /// Its publications (index of `State::publications`).
    names: BTreeSet<(String, PeerId)>,
}

/// A published name's content, borrowed from the [`State`]: the parts of
/// a location reply (see [`p2pfs_proto::message::ReplyRef`]).
#[derive(Debug)]
pub struct Located<'s> {
    /// The publisher's address.
    pub publisher: SocketAddr,
    /// The content published under the name.
    pub content_id: ContentId,
    /// Its manifest.
    pub manifest: &'s Manifest,
    /// Its online holders, by address.
    pub holders: Vec<HolderRef<'s>>,
}

/// Most holders of a content one reply lists: as many as fit in
/// [`HOLDERS_REPLY_BYTES`] (127 for the largest bitfield, 17,000 for files
/// of up to 128 chunks).
fn listed_max(manifest: &Manifest) -> usize {
    let bits = manifest.chunk_count().div_ceil(8) as usize;
    (HOLDERS_REPLY_BYTES / (HOLDER_MAX_LEN + bits)).max(1)
}

fn holder_ref<'s>((addr, h): (&SocketAddr, &'s Holding)) -> HolderRef<'s> {
    HolderRef {
        peer_id: h.peer_id,
        addr: *addr,
        have: &h.have,
    }
}

/// Tracker state. See the module docs. Besides the maps themselves, it keeps
/// indexes (per peer: what it holds; per publisher: names and paths; per
/// content: its publications) so that no request scans the whole network.
#[derive(Debug, Default)]
pub struct State {
    peers: HashMap<PeerId, PeerEntry>,
    by_addr: HashMap<SocketAddr, PeerId>,
    publications: Publications,
    by_publisher: HashMap<PeerId, Published>,
    contents: HashMap<ContentId, Content>,
}

/// A request refused, as an error code and a human message.
pub type Refusal = (ErrorCode, String);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl State {
    /// The connection a peer is registered on, and its address.
    pub fn connection_of(&self, peer_id: PeerId) -> Option<(u64, SocketAddr)> {
        self.peers.get(&peer_id).map(|p| (p.conn_id, p.addr))
    }

    /// Registers (or re-registers) a peer on connection `conn_id`.
    /// A peer id or address already online is replaced: the newer wins.
    pub fn register(&mut self, peer_id: PeerId, addr: SocketAddr, conn_id: u64) {
        if let Some(old) = self.by_addr.get(&addr).copied() {
            if old != peer_id {
                self.remove_peer(old, None);
            }
        }
        if let Some(old) = self.peers.get_mut(&peer_id) {
            // The same peer on a new connection keeps what it holds.
            let old_addr = old.addr;
            old.addr = addr;
            old.conn_id = conn_id;
            self.by_addr.remove(&old_addr);
            if old_addr != addr {
                // Its holdings are keyed by address.
                for cid in &old.holds {
                    if let Some(c) = self.contents.get_mut(cid) {
                        if let Some(h) = c.holders.remove(&old_addr) {
                            c.holders.insert(addr, h);
                        }
                    }
                }
            }
        } else {
            self.peers.insert(
                peer_id,
                PeerEntry {
                    addr,
                    conn_id,
                    since: now_secs(),
                    holds: HashSet::default(),
                },
            );
        }
        self.by_addr.insert(addr, peer_id);
        if let Some(published) = self.by_publisher.get(&peer_id) {
            for name in published.names.keys() {
                if let Some(p) = self.publications.get_mut(name, peer_id) {
                    p.publisher_addr = addr;
                }
            }
        }
    }

    /// Removes a peer and everything it holds. With `conn_id`, only when the
    /// peer is still registered on that connection (a reconnect may already
    /// have replaced it). Returns whether anything was removed.
    pub fn remove_peer(&mut self, peer_id: PeerId, conn_id: Option<u64>) -> bool {
        match self.peers.get(&peer_id) {
            Some(p) if conn_id.is_none_or(|c| c == p.conn_id) => {}
            _ => return false,
        }
        let Some(p) = self.peers.remove(&peer_id) else {
            return false;
        };
        self.by_addr.remove(&p.addr);
        for cid in p.holds {
            self.drop_holder(cid, p.addr);
        }
        true
    }

    /// Forgets that the peer at `addr` holds `cid`; once nobody holds it,
    /// forgets the content and its publications.
    fn drop_holder(&mut self, cid: ContentId, addr: SocketAddr) {
        let Some(content) = self.contents.get_mut(&cid) else {
            return;
        };
        content.holders.remove(&addr);
        if !content.holders.is_empty() {
            return;
        }
        let Some(content) = self.contents.remove(&cid) else {
            return;
        };
        for key in content.names {
            self.remove_publication(&key);
        }
    }

    /// Removes a publication from the map and the publisher's index.
    fn remove_publication(&mut self, key: &(String, PeerId)) -> Option<Publication> {
        let publ = self.publications.remove(&key.0, key.1)?;
        if let Some(published) = self.by_publisher.get_mut(&key.1) {
            published.names.remove(&key.0);
            published.paths.remove(&publ.local_path);
            if published.names.is_empty() {
                self.by_publisher.remove(&key.1);
            }
        }
        Some(publ)
    }

    /// Number of online peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Whether a peer is online at `addr`.
    pub fn is_online(&self, addr: &SocketAddr) -> bool {
        self.by_addr.contains_key(addr)
    }

    /// Records a publication by `peer_id` and makes it a full holder.
    ///
    /// # Errors
    /// A refusal for bad names, taken names or paths, or an unregistered peer.
    pub fn publish(
        &mut self,
        peer_id: PeerId,
        name: String,
        local_path: String,
        manifest: Manifest,
    ) -> Result<ContentId, Refusal> {
        let Some(peer) = self.peers.get(&peer_id) else {
            return Err((
                ErrorCode::NotRegistered,
                "register before publishing".into(),
            ));
        };
        let addr = peer.addr;
        if let Some(why) = name_problem(&name) {
            return Err((ErrorCode::BadRequest, format!("invalid name: {why}")));
        }
        let content_id = manifest.content_id();
        if let Some(p) = self.publications.get(&name, peer_id) {
            if p.content_id != content_id {
                return Err((
                    ErrorCode::NameTaken,
                    format!("you already published a file named '{name}'"),
                ));
            }
        }
        if let Some(other) = self
            .by_publisher
            .get(&peer_id)
            .and_then(|p| p.paths.get(&local_path))
            .filter(|other| **other != name)
        {
            return Err((
                ErrorCode::PathTaken,
                format!("'{local_path}' is already published as '{other}'"),
            ));
        }
        let chunks = manifest.chunk_count();
        let content = self.contents.entry(content_id).or_insert_with(|| Content {
            manifest: Arc::new(manifest),
            holders: Holders::default(),
            names: BTreeSet::new(),
        });
        content.holders.insert(
            addr,
            Holding {
                peer_id,
                have: Bitfield::full(chunks),
            },
        );
        content.names.insert((name.clone(), peer_id));
        if let Some(e) = self.peers.get_mut(&peer_id) {
            e.holds.insert(content_id);
        }
        // The same name again means the same content (checked above): a
        // re-publish, maybe from another path.
        if let Some(old) = self.remove_publication(&(name.clone(), peer_id)) {
            debug_assert_eq!(old.content_id, content_id);
        }
        let published = self.by_publisher.entry(peer_id).or_default();
        published.names.insert(name.clone(), local_path.clone());
        published.paths.insert(local_path.clone(), name.clone());
        self.publications.insert(
            name,
            peer_id,
            Publication {
                content_id,
                local_path,
                publisher_addr: addr,
            },
        );
        Ok(content_id)
    }

    /// Withdraws `peer_id`'s publication `name`, and its holding of that
    /// content unless another of its publications has the same content.
    ///
    /// # Errors
    /// `NotFound` when the peer published no such name.
    pub fn unpublish(&mut self, peer_id: PeerId, name: &str) -> Result<(), Refusal> {
        let key = (name.to_string(), peer_id);
        let Some(publ) = self.remove_publication(&key) else {
            return Err((
                ErrorCode::NotFound,
                format!("you have not published a file named '{name}'"),
            ));
        };
        if let Some(c) = self.contents.get_mut(&publ.content_id) {
            c.names.remove(&key);
        }
        // Another name of the same peer for the same content? Only this
        // content's publications need a look.
        let still_published = self
            .contents
            .get(&publ.content_id)
            .is_some_and(|c| c.names.iter().any(|(_, p)| *p == peer_id));
        if !still_published {
            if let Some(e) = self.peers.get_mut(&peer_id) {
                e.holds.remove(&publ.content_id);
                let addr = e.addr;
                self.drop_holder(publ.content_id, addr);
            }
        }
        Ok(())
    }

    /// Records that `peer_id` holds the chunks in `have` of the content
    /// described by `manifest`, learning the content if it is new (a
    /// re-announcement that arrives before the publisher is back).
    ///
    /// # Errors
    /// Unregistered peer, or a bitfield that does not fit the manifest.
    pub fn have(
        &mut self,
        peer_id: PeerId,
        manifest: Manifest,
        have: &Bitfield,
    ) -> Result<ContentId, Refusal> {
        let Some(addr) = self.peers.get(&peer_id).map(|p| p.addr) else {
            return Err((
                ErrorCode::NotRegistered,
                "register before announcing chunks".into(),
            ));
        };
        let n = manifest.chunk_count();
        if have.len() != n {
            return Err((
                ErrorCode::BadRequest,
                format!(
                    "the bitfield has {} bits; the file has {n} chunks",
                    have.len()
                ),
            ));
        }
        let content_id = manifest.content_id();
        if have.count_ones() == 0 {
            return Ok(content_id);
        }
        let content = self.contents.entry(content_id).or_insert_with(|| Content {
            manifest: Arc::new(manifest),
            holders: Holders::default(),
            names: BTreeSet::new(),
        });
        content
            .holders
            .entry(addr, || Holding {
                peer_id,
                have: Bitfield::new(n),
            })
            .have
            .union_with(have);
        if let Some(e) = self.peers.get_mut(&peer_id) {
            e.holds.insert(content_id);
        }
        Ok(content_id)
    }

    /// Adds chunks to what `peer_id` holds of `content_id`.
    ///
    /// # Errors
    /// Unknown content, unregistered peer or out-of-range index.
    pub fn chunk_register(
        &mut self,
        peer_id: PeerId,
        content_id: ContentId,
        indexes: &[u32],
    ) -> Result<(), Refusal> {
        let Some(addr) = self.peers.get(&peer_id).map(|p| p.addr) else {
            return Err((
                ErrorCode::NotRegistered,
                "register before announcing chunks".into(),
            ));
        };
        let Some(content) = self.contents.get_mut(&content_id) else {
            return Err((
                ErrorCode::NotFound,
                format!("unknown content {}", content_id.short()),
            ));
        };
        let n = content.manifest.chunk_count();
        if let Some(bad) = indexes.iter().find(|&&i| i >= n) {
            return Err((
                ErrorCode::OutOfRange,
                format!("chunk {bad} out of range (file has {n} chunks)"),
            ));
        }
        let have = &mut content
            .holders
            .entry(addr, || Holding {
                peer_id,
                have: Bitfield::new(n),
            })
            .have;
        for &i in indexes {
            have.set(i);
        }
        if let Some(e) = self.peers.get_mut(&peer_id) {
            e.holds.insert(content_id);
        }
        Ok(())
    }

    /// Every holder of `content`, by address.
    fn holders_of<'s>(&'s self, content: &'s Content) -> Vec<HolderRef<'s>> {
        content.holders.iter().map(holder_ref).collect()
    }

    /// The holders a reply lists: all of them, or, when more than
    /// [`listed_max`] would not fit in [`HOLDERS_REPLY_BYTES`], that many
    /// chosen at random (a different choice per request), `include` (the
    /// publisher of a located name) among them, still by address. So
    /// downloaders spread over the holders, neighbouring addresses (many
    /// peers behind one host) are not listed together, and every holder
    /// gets listed. Bitfields are borrowed, not cloned: the reply is
    /// encoded from them while the state is locked.
    fn listed_holders<'s>(
        &'s self,
        content: &'s Content,
        include: Option<SocketAddr>,
    ) -> Vec<HolderRef<'s>> {
        let all = &content.holders.0;
        let max = listed_max(&content.manifest);
        if all.len() <= max {
            return self.holders_of(content);
        }
        let mut rng = rand::rng();
        let mut picked = rand::seq::index::sample(&mut rng, all.len(), max).into_vec();
        if let Some(i) = include.and_then(|a| content.holders.find(&a).ok()) {
            if !picked.contains(&i) {
                // It takes the place of one picked at random.
                picked[0] = i;
            }
        }
        picked.sort_unstable();
        picked
            .into_iter()
            .map(|i| holder_ref((&all[i].0, &all[i].1)))
            .collect()
    }

    /// The manifest and holders of a published name.
    ///
    /// # Errors
    /// Unknown name, or several publishers when `publisher` is `None`.
    pub fn locate(
        &self,
        name: &str,
        publisher: Option<SocketAddr>,
    ) -> Result<Located<'_>, Refusal> {
        let mut found = self
            .publications
            .named(name)
            .filter(|(_, publ)| publisher.is_none_or(|a| a == publ.publisher_addr));
        // Most names have one publisher: no list is built for them.
        let publ = match (found.next(), found.next()) {
            (None, _) => {
                let why = match publisher {
                    Some(a) => format!("no file named '{name}' published by {a}"),
                    None => format!("no file named '{name}' in the network"),
                };
                return Err((ErrorCode::NotFound, why));
            }
            (Some((_, one)), None) => one,
            (Some(a), Some(b)) => {
                let mut addrs: Vec<SocketAddr> = [a, b]
                    .into_iter()
                    .chain(found)
                    .map(|(_, p)| p.publisher_addr)
                    .collect();
                addrs.sort_unstable();
                let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                return Err((
                    ErrorCode::Ambiguous,
                    format!(
                        "'{name}' is published by several peers: {}; name one as 'peerIP peerPort'",
                        list.join(", ")
                    ),
                ));
            }
        };
        let content = self.contents.get(&publ.content_id).ok_or_else(|| {
            (
                ErrorCode::Internal,
                "publication without content".to_string(),
            )
        })?;
        Ok(Located {
            publisher: publ.publisher_addr,
            content_id: publ.content_id,
            manifest: &content.manifest,
            holders: self.listed_holders(content, Some(publ.publisher_addr)),
        })
    }

    /// Online holders of a content to list in a reply (empty when unknown;
    /// at most `listed_max`).
    pub fn holders(&self, content_id: &ContentId) -> Vec<HolderRef<'_>> {
        self.contents
            .get(content_id)
            .map(|c| self.listed_holders(c, None))
            .unwrap_or_default()
    }

    /// Every publication, sorted by name then publisher address.
    pub fn files(&self) -> Vec<FileInfo> {
        let mut files: Vec<FileInfo> = self
            .publications
            .iter()
            .filter_map(|(name, publisher_id, p)| {
                let c = self.contents.get(&p.content_id)?;
                let holders = c.holders.iter().map(|(_, h)| &h.have);
                let (sources, seeders) = holders.fold((0, 0), |(s, f), b| {
                    (
                        s + u32::from(b.count_ones() > 0 || b.is_empty()),
                        f + u32::from(b.is_full()),
                    )
                });
                Some(FileInfo {
                    name: name.clone(),
                    publisher: p.publisher_addr,
                    publisher_id: *publisher_id,
                    publisher_online: self.peers.contains_key(publisher_id),
                    content_id: p.content_id,
                    size: c.manifest.size,
                    chunk_size: c.manifest.chunk_size,
                    chunks: c.manifest.chunk_count(),
                    sources,
                    seeders,
                })
            })
            .collect();
        files.sort_by(|a, b| (&a.name, a.publisher).cmp(&(&b.name, b.publisher)));
        files
    }

    /// The publications of the peer online at `addr`.
    ///
    /// # Errors
    /// No peer online there.
    pub fn discover(&self, addr: SocketAddr) -> Result<Message, Refusal> {
        let Some(peer_id) = self.by_addr.get(&addr).copied() else {
            return Err((ErrorCode::NotFound, format!("no peer is online at {addr}")));
        };
        let names = self.by_publisher.get(&peer_id).map(|p| &p.names);
        let files = names
            .into_iter()
            .flat_map(|n| n.keys())
            .filter_map(|name| {
                let p = self.publications.get(name, peer_id)?;
                let c = self.contents.get(&p.content_id)?;
                Some(PublishedInfo {
                    name: name.clone(),
                    size: c.manifest.size,
                    chunks: c.manifest.chunk_count(),
                    local_path: p.local_path.clone(),
                    content_id: p.content_id,
                })
            })
            .collect();
        Ok(Message::ReplyDiscover {
            addr,
            peer_id,
            files,
        })
    }

    /// Online peers, sorted by address.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let mut peers: Vec<PeerInfo> = self
            .peers
            .iter()
            .map(|(id, p)| PeerInfo {
                peer_id: *id,
                addr: p.addr,
                connected_since: p.since,
                published: self.by_publisher.get(id).map_or(0, |b| b.names.len()) as u32,
                holding: p.holds.len() as u32,
            })
            .collect();
        peers.sort_by_key(|p| p.addr);
        peers
    }

    /// Per content: names, chunk count and online holders.
    pub fn chunk_info(&self) -> Vec<ChunkInfo> {
        let mut out: Vec<ChunkInfo> = self
            .contents
            .iter()
            .map(|(cid, c)| ChunkInfo {
                names: c
                    .names
                    .iter()
                    .filter_map(|key| {
                        let p = self.publications.get(&key.0, key.1)?;
                        Some((key.0.clone(), p.publisher_addr))
                    })
                    .collect(),
                content_id: *cid,
                chunks: c.manifest.chunk_count(),
                holders: self
                    .holders_of(c)
                    .iter()
                    .map(HolderRef::to_holder)
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.names.first().cmp(&b.names.first()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pfs_proto::limits::MIN_CHUNK_SIZE;
    use rand::{Rng, SeedableRng};

    impl State {
        /// Panics unless every index agrees with the maps it indexes.
        fn check_indexes(&self) {
            for (name, publisher, p) in self.publications.iter() {
                let idx = &self.by_publisher[publisher];
                assert_eq!(idx.names.get(name), Some(&p.local_path));
                assert_eq!(idx.paths.get(&p.local_path), Some(name));
                let c = &self.contents[&p.content_id];
                assert!(c.names.contains(&(name.clone(), *publisher)));
            }
            for (publisher, idx) in &self.by_publisher {
                assert!(!idx.names.is_empty());
                assert_eq!(idx.names.len(), idx.paths.len());
                for name in idx.names.keys() {
                    assert!(self.publications.get(name, *publisher).is_some());
                }
            }
            for (cid, c) in &self.contents {
                assert!(!c.holders.is_empty(), "a content nobody holds");
                assert!(
                    c.holders.0.windows(2).all(|w| w[0].0 < w[1].0),
                    "holders out of order"
                );
                for (addr, h) in c.holders.iter() {
                    let peer = &self.peers[&h.peer_id];
                    assert_eq!(peer.addr, *addr, "holder under another address");
                    assert!(peer.holds.contains(cid), "holder not indexed");
                }
                for key in &c.names {
                    let p = self.publications.get(&key.0, key.1).expect("indexed");
                    assert_eq!(p.content_id, *cid);
                }
            }
            for (id, e) in &self.peers {
                assert_eq!(self.by_addr[&e.addr], *id);
                for cid in &e.holds {
                    let h = self.contents[cid].holders.get(&e.addr).expect("held");
                    assert_eq!(h.peer_id, *id, "stale holds");
                }
            }
        }
    }

    /// Random operations from a handful of peers on a handful of files; the
    /// indexes must agree with the maps after every one of them.
    #[test]
    fn indexes_stay_consistent_under_random_operations() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let ids: Vec<PeerId> = (0..6u8).map(|i| PeerId([i; 16])).collect();
        let addr = |i: usize| -> SocketAddr { format!("10.0.0.{i}:7000").parse().unwrap() };
        let mut s = State::default();
        let (mut published, mut dropped) = (0, 0);
        for step in 0..5000 {
            let p = rng.random_range(0..ids.len());
            let f = rng.random_range(0..5u8);
            match rng.random_range(0..7) {
                0 => {
                    // Mostly its own two addresses (a move re-keys its
                    // holdings); sometimes another peer's (which replaces it).
                    let at = if rng.random_bool(0.2) {
                        rng.random_range(0..ids.len())
                    } else {
                        p + rng.random_range(0..2) * 10
                    };
                    s.register(ids[p], addr(at), step);
                }
                1 | 2 => {
                    let name = format!("f{}", rng.random_range(0..4));
                    let path = format!("/d/{}", rng.random_range(0..4));
                    published += usize::from(s.publish(ids[p], name, path, manifest(f, 3)).is_ok());
                }
                3 => {
                    let _ = s.unpublish(ids[p], &format!("f{}", rng.random_range(0..4)));
                }
                4 => {
                    let cid = manifest(f, 3).content_id();
                    let _ = s.chunk_register(ids[p], cid, &[rng.random_range(0..3)]);
                }
                5 => {
                    let mut have = Bitfield::new(3);
                    have.set(rng.random_range(0..3));
                    let _ = s.have(ids[p], manifest(f, 3), &have);
                }
                _ => dropped += usize::from(s.remove_peer(ids[p], None)),
            }
            s.check_indexes();
        }
        // The sequence really exercised publishing and leaving.
        assert!(published > 300 && dropped > 100, "{published} {dropped}");
    }

    /// Past the byte budget, a reply lists a random choice of holders: by
    /// address, no repeats, a different choice each time, every holder in
    /// some, and a location reply always lists the publisher.
    #[test]
    fn replies_list_a_random_choice_of_a_crowd() {
        let mut s = State::default();
        // The largest bitfield: 127 holders fit in a reply.
        let m = manifest(1, p2pfs_proto::limits::MAX_CHUNKS as usize);
        let max = listed_max(&m);
        assert_eq!(max, 127);
        let cid = m.content_id();
        let n = max + 50;
        let publisher = n / 2;
        let id = |i: usize| {
            PeerId([
                (i % 256) as u8,
                (i / 256) as u8,
                1,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ])
        };
        for i in 0..n {
            s.register(id(i), addr(10_000 + i as u16), i as u64);
        }
        s.publish(id(publisher), "crowd".into(), "/c".into(), m)
            .unwrap();
        for i in (0..n).filter(|&i| i != publisher) {
            s.chunk_register(id(i), cid, &[(i % 3) as u32]).unwrap();
        }
        let mut seen = std::collections::HashSet::new();
        let mut choices = std::collections::HashSet::new();
        let by_address = |l: &[HolderRef<'_>]| l.windows(2).all(|w| w[0].addr < w[1].addr);
        for _ in 0..60 {
            let listed = s.holders(&cid);
            assert_eq!(listed.len(), max);
            assert!(by_address(&listed), "by address, no repeats");
            choices.insert(listed.iter().map(|h| h.addr).collect::<Vec<_>>());
            seen.extend(listed.iter().map(|h| h.addr));
            let located = s.locate("crowd", None).unwrap();
            assert_eq!(located.holders.len(), max);
            assert!(by_address(&located.holders));
            assert!(
                located
                    .holders
                    .iter()
                    .any(|h| h.addr == addr(10_000 + publisher as u16)),
                "the publisher is listed"
            );
        }
        assert!(choices.len() > 1, "the choice changes");
        assert_eq!(seen.len(), n, "every holder gets listed");
        // The tracker's own view still shows them all.
        assert_eq!(s.chunk_info()[0].holders.len(), n);
        // A small file's crowd is listed whole.
        assert!(listed_max(&manifest(2, 3)) > 10_000);
    }

    fn manifest(seed: u8, chunks: usize) -> Manifest {
        Manifest {
            size: chunks as u64 * u64::from(MIN_CHUNK_SIZE),
            chunk_size: MIN_CHUNK_SIZE,
            hashes: vec![[seed; 32]; chunks],
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn publish_locate_and_leave() {
        let mut s = State::default();
        let (a, b) = (PeerId([1; 16]), PeerId([2; 16]));
        s.register(a, addr(1), 1);
        s.register(b, addr(2), 2);
        let cid = s
            .publish(a, "f".into(), "/x/f".into(), manifest(1, 4))
            .unwrap();
        assert!(
            s.publish(a, "f".into(), "/x/g".into(), manifest(2, 4))
                .is_err(),
            "name taken"
        );
        assert!(
            s.publish(a, "g".into(), "/x/f".into(), manifest(1, 4))
                .is_err(),
            "path taken"
        );
        assert!(
            s.publish(a, "f".into(), "/x/f".into(), manifest(1, 4))
                .is_ok(),
            "idempotent"
        );
        s.publish(b, "f".into(), "/y/f".into(), manifest(1, 4))
            .unwrap();
        assert_eq!(s.locate("f", None).unwrap_err().0, ErrorCode::Ambiguous);
        let found = s.locate("f", Some(addr(1))).unwrap();
        assert_eq!(found.publisher, addr(1));
        assert_eq!(found.holders.len(), 2, "same content, one swarm");
        assert_eq!(s.locate("nope", None).unwrap_err().0, ErrorCode::NotFound);
        s.chunk_register(b, cid, &[0]).unwrap();
        assert_eq!(
            s.chunk_register(b, cid, &[4]).unwrap_err().0,
            ErrorCode::OutOfRange
        );
        assert!(s.remove_peer(a, Some(1)));
        assert_eq!(s.files().len(), 2, "content still held by b");
        assert!(!s.files()[0].publisher_online || !s.files()[1].publisher_online);
        assert!(s.remove_peer(b, None));
        assert!(s.files().is_empty(), "no holder left");
        assert!(s.chunk_info().is_empty());
    }

    /// A peer back from another address is listed there, and only there.
    #[test]
    fn a_holder_that_moves_is_listed_at_its_new_address() {
        let mut s = State::default();
        let (a, b) = (PeerId([1; 16]), PeerId([2; 16]));
        s.register(a, addr(1), 1);
        s.register(b, addr(2), 2);
        let m = manifest(3, 3);
        let cid = m.content_id();
        s.publish(a, "f".into(), "/f".into(), m).unwrap();
        s.chunk_register(b, cid, &[1]).unwrap();
        s.register(b, addr(9), 3);
        let listed: Vec<_> = s
            .holders(&cid)
            .iter()
            .map(|h| (h.peer_id, h.addr))
            .collect();
        assert_eq!(listed, vec![(a, addr(1)), (b, addr(9))]);
        assert_eq!(
            s.holders(&cid)[1].have.count_ones(),
            1,
            "its chunks moved with it"
        );
        s.register(a, addr(10), 4);
        let located = s.locate("f", None).unwrap();
        assert_eq!(located.publisher, addr(10));
        let addrs: Vec<_> = located.holders.iter().map(|h| h.addr).collect();
        assert_eq!(addrs, vec![addr(9), addr(10)], "by address");
    }

    #[test]
    fn stale_connection_does_not_remove_a_reconnected_peer() {
        let mut s = State::default();
        let a = PeerId([1; 16]);
        s.register(a, addr(1), 1);
        s.register(a, addr(5), 2);
        assert!(!s.remove_peer(a, Some(1)));
        assert_eq!(s.peers().len(), 1);
        assert!(s.discover(addr(5)).is_ok());
        assert!(s.discover(addr(1)).is_err());
    }

    #[test]
    fn downloader_becomes_a_source() {
        let mut s = State::default();
        let (a, b) = (PeerId([1; 16]), PeerId([2; 16]));
        s.register(a, addr(1), 1);
        s.register(b, addr(2), 2);
        let cid = s
            .publish(a, "f".into(), "/f".into(), manifest(3, 10))
            .unwrap();
        assert_eq!(s.files()[0].sources, 1);
        s.chunk_register(b, cid, &[1, 2, 3]).unwrap();
        assert_eq!(s.files()[0].sources, 2);
        assert_eq!(s.files()[0].seeders, 1);
        assert_eq!(s.holders(&cid).len(), 2);
    }

    #[test]
    fn unpublish_withdraws_the_publication_and_the_holding() {
        let mut s = State::default();
        let (a, b) = (PeerId([1; 16]), PeerId([2; 16]));
        s.register(a, addr(1), 1);
        s.register(b, addr(2), 2);
        let cid = s
            .publish(a, "f".into(), "/f".into(), manifest(4, 3))
            .unwrap();
        s.publish(a, "g".into(), "/g".into(), manifest(4, 3))
            .unwrap();
        s.chunk_register(b, cid, &[0]).unwrap();
        assert_eq!(s.unpublish(b, "f").unwrap_err().0, ErrorCode::NotFound);
        s.unpublish(a, "f").unwrap();
        assert_eq!(s.holders(&cid).len(), 2, "still published as g");
        s.unpublish(a, "g").unwrap();
        let holders = s.holders(&cid);
        assert_eq!(holders.len(), 1, "only b's chunk is left");
        assert_eq!(holders[0].peer_id, b);
        assert!(s.files().is_empty(), "no publication left");
        assert!(s
            .publish(a, "f".into(), "/f".into(), manifest(4, 3))
            .is_ok());
    }

    #[test]
    fn have_teaches_the_tracker_a_content_before_its_publisher_returns() {
        let mut s = State::default();
        let (a, b) = (PeerId([1; 16]), PeerId([2; 16]));
        s.register(b, addr(2), 2);
        let mut have = Bitfield::new(3);
        have.set(1);
        assert_eq!(
            s.have(b, manifest(5, 3), &Bitfield::new(2)).unwrap_err().0,
            ErrorCode::BadRequest
        );
        let cid = s.have(b, manifest(5, 3), &have).unwrap();
        assert_eq!(s.holders(&cid).len(), 1);
        assert!(s.files().is_empty(), "not published yet");
        s.chunk_register(b, cid, &[2]).unwrap();
        s.register(a, addr(1), 1);
        s.publish(a, "f".into(), "/f".into(), manifest(5, 3))
            .unwrap();
        assert_eq!(s.files()[0].sources, 2);
        assert_eq!(s.holders(&cid)[1].have.count_ones(), 2);
    }
}
