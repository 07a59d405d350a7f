//! The in-memory index: one entry per file, ordered by key, with an LRU order by last access.

use std::collections::BTreeMap;
use std::sync::Arc;

/// What the store knows about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Monotonic per path (drawn from one store-wide counter).
    pub version: u64,
    pub size_bytes: u64,
    /// BLAKE3 of the contents; `None` for a file adopted from the directory and not yet read.
    pub hash: Option<[u8; 32]>,
    /// Inode and modification time identify the file the entry describes: a file replaced or
    /// edited behind the store's back no longer matches.
    pub inode: u64,
    pub mtime_ns: i64,
    pub last_access_ms: u64,
    pub pinned: bool,
    /// The digest of the piece checksums (see `sums`), when known.
    pub sums: Option<u64>,
    /// What the writer said the contents are ([`crate::ValueKind`]; 0: plain bytes).
    pub kind: u8,
    /// The contents were checked against `hash` since the store opened (not persisted).
    pub verified: bool,
    /// Position in the LRU order (not persisted).
    pub tick: u64,
}

impl Entry {
    /// Whether this entry describes the published file `inode` of `version`. The inode alone does
    /// not tell: once a replaced file is freed, a new file may get its number.
    pub fn is_same_file(&self, inode: u64, version: u64) -> bool {
        self.inode == inode && self.version == version
    }
}

/// Entries by key (`dataset/path`), and keys by last access.
#[derive(Debug, Default)]
pub(crate) struct Index {
    entries: BTreeMap<Arc<str>, Entry>,
    lru: BTreeMap<u64, Arc<str>>,
    next_tick: u64,
    used_bytes: u64,
    pinned_bytes: u64,
    n_pinned: u64,
}

impl Index {
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    pub fn pinned(&self) -> (u64, u64) {
        (self.n_pinned, self.pinned_bytes)
    }

    /// Inserts or replaces an entry; it becomes the most recently used.
    pub fn insert(&mut self, key: &str, mut entry: Entry) -> Option<Entry> {
        let previous = self.remove(key);
        let key: Arc<str> = Arc::from(key);
        entry.tick = self.next_tick;
        self.next_tick += 1;
        self.account(&entry, true);
        self.lru.insert(entry.tick, Arc::clone(&key));
        self.entries.insert(key, entry);
        previous
    }

    pub fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.lru.remove(&entry.tick);
        self.account(&entry, false);
        Some(entry)
    }

    /// Marks an access: the entry becomes the most recently used.
    pub fn touch(&mut self, key: &str, now_ms: u64) {
        let Some((key, entry)) = self.entries.get_key_value(key) else {
            return;
        };
        let (key, old_tick) = (Arc::clone(key), entry.tick);
        self.lru.remove(&old_tick);
        let tick = self.next_tick;
        self.next_tick += 1;
        self.lru.insert(tick, Arc::clone(&key));
        if let Some(entry) = self.entries.get_mut(&*key) {
            entry.tick = tick;
            entry.last_access_ms = now_ms;
        }
    }

    /// Changes fields that do not affect accounting or order.
    pub fn update(&mut self, key: &str, change: impl FnOnce(&mut Entry)) {
        if let Some(entry) = self.entries.get_mut(key) {
            let (size_bytes, pinned) = (entry.size_bytes, entry.pinned);
            change(entry);
            assert!(
                entry.size_bytes == size_bytes && entry.pinned == pinned,
                "update may not change accounting"
            );
        }
    }

    /// Pins or unpins; returns false when the key is absent.
    pub fn set_pinned(&mut self, key: &str, pinned: bool) -> bool {
        let Some(entry) = self.entries.get(key).cloned() else {
            return false;
        };
        self.account(&entry, false);
        let entry = Entry { pinned, ..entry };
        self.account(&entry, true);
        self.entries.insert(Arc::from(key), entry);
        true
    }

    /// Oldest first.
    pub fn lru_keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.lru.values()
    }

    /// Every entry, least recently used first.
    pub fn iter_lru(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.lru.values().map(|key| (&**key, &self.entries[key]))
    }

    /// Every entry of one dataset, in key order.
    pub fn dataset(&self, dataset: &str) -> impl Iterator<Item = (&str, &Entry)> {
        let prefix = format!("{dataset}/");
        self.entries
            .range::<str, _>((
                std::ops::Bound::Included(prefix.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(key, _)| key.starts_with(&prefix))
            .map(|(key, entry)| (&**key, entry))
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(key, entry)| (&**key, entry))
    }

    fn account(&mut self, entry: &Entry, add: bool) {
        if add {
            self.used_bytes += entry.size_bytes;
            if entry.pinned {
                self.n_pinned += 1;
                self.pinned_bytes += entry.size_bytes;
            }
        } else {
            self.used_bytes -= entry.size_bytes;
            if entry.pinned {
                self.n_pinned -= 1;
                self.pinned_bytes -= entry.size_bytes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(size_bytes: u64) -> Entry {
        Entry {
            version: 1,
            size_bytes,
            hash: None,
            inode: 1,
            mtime_ns: 0,
            last_access_ms: 0,
            pinned: false,
            sums: None,
            kind: 0,
            verified: false,
            tick: 0,
        }
    }

    #[test]
    fn accounting_and_lru_order() {
        let mut index = Index::default();
        index.insert("d/a", entry(10));
        index.insert("d/b", entry(20));
        index.insert("e/c", entry(5));
        assert_eq!(index.used_bytes(), 35);
        index.touch("d/a", 7);
        let order: Vec<&str> = index.lru_keys().map(|key| &**key).collect();
        assert_eq!(order, ["d/b", "e/c", "d/a"]);
        assert!(index.set_pinned("d/b", true));
        assert_eq!(index.pinned(), (1, 20));
        index.insert(
            "d/b",
            Entry {
                pinned: true,
                ..entry(30)
            },
        );
        assert_eq!((index.used_bytes(), index.pinned()), (45, (1, 30)));
        assert_eq!(index.remove("d/b").map(|e| e.size_bytes), Some(30));
        assert_eq!((index.used_bytes(), index.pinned()), (15, (0, 0)));
        let keys: Vec<&str> = index.dataset("d").map(|(key, _)| key).collect();
        assert_eq!(keys, ["d/a"]);
        assert_eq!(index.get("d/a").unwrap().last_access_ms, 7);
        assert!(!index.set_pinned("missing", true));
    }
}
