//! Persistent stat cache: (relative path, size, mtime, ctime, inode, device) -> content digest.
//!
//! A second hash of an unchanged tree reads no file contents: a file whose lstat still matches
//! its record reuses the recorded digest. Like git's index, the cache guards against "racily
//! clean" files: a record whose mtime or ctime is not strictly older than the cache file itself
//! (both stamped by the same filesystem clock) may have been modified within the same clock tick
//! after it was hashed, so it is not trusted and the file is read again.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use std::hash::Hasher as _;
use std::sync::atomic::{AtomicBool, Ordering};

use hashbrown::HashTable;
use rustc_hash::FxHasher;

const MAGIC: &[u8; 8] = b"MBSTAT\x00\x01";

/// The parts of `lstat` that change whenever a file's content can have changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatKey {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub dev: u64,
}

impl StatKey {
    pub fn from_metadata(m: &fs::Metadata) -> Self {
        StatKey {
            size: m.size(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
            ctime_ns: m.ctime().saturating_mul(1_000_000_000) + m.ctime_nsec(),
            ino: m.ino(),
            dev: m.dev(),
        }
    }
}

#[derive(Debug)]
struct Record {
    /// Byte range of the relative path inside `StatCache::paths`.
    path: (u32, u32),
    key: StatKey,
    digest: [u8; 32],
    trusted: bool,
    /// Set when a walk found the file unchanged, so the record survives into the next cache.
    seen: AtomicBool,
}

/// A loaded stat cache. Loading never fails: a missing, foreign or corrupt file is an empty cache.
///
/// All paths live in one buffer and the table holds indexes into `records`, so loading 100,000
/// records makes three allocations rather than 100,000.
#[derive(Default)]
pub struct StatCache {
    paths: Vec<u8>,
    records: Vec<Record>,
    table: HashTable<u32>,
}

fn hash_path(rel: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(rel);
    h.finish()
}

impl StatCache {
    pub fn empty() -> Self {
        StatCache::default()
    }

    /// Load the cache written for `root` at `path`.
    pub fn load(path: &Path, root: &[u8]) -> Self {
        Self::try_load(path, root).unwrap_or_default()
    }

    fn try_load(path: &Path, root: &[u8]) -> Option<Self> {
        let mut file = File::open(path).ok()?;
        let written = StatKey::from_metadata(&file.metadata().ok()?).mtime_ns;
        let mut data = Vec::new();
        file.read_to_end(&mut data).ok()?;
        let mut r = Reader {
            data: &data,
            pos: 0,
        };
        if r.take(MAGIC.len())? != MAGIC || r.bytes()? != root {
            return None;
        }
        let count = usize::try_from(r.u64()?).ok()?.min(1 << 24);
        let mut cache = StatCache {
            paths: Vec::with_capacity(data.len()),
            records: Vec::with_capacity(count),
            table: HashTable::with_capacity(count),
        };
        for _ in 0..count {
            let rel = r.bytes()?;
            let key = StatKey {
                size: r.u64()?,
                mtime_ns: r.u64()? as i64,
                ctime_ns: r.u64()? as i64,
                ino: r.u64()?,
                dev: r.u64()?,
            };
            let digest: [u8; 32] = r.take(32)?.try_into().ok()?;
            let trusted = key.mtime_ns < written && key.ctime_ns < written;
            let start = u32::try_from(cache.paths.len()).ok()?;
            cache.paths.extend_from_slice(rel);
            let index = u32::try_from(cache.records.len()).ok()?;
            cache.records.push(Record {
                path: (start, u32::try_from(rel.len()).ok()?),
                key,
                digest,
                trusted,
                seen: AtomicBool::new(false),
            });
            let (records, paths) = (&cache.records, &cache.paths);
            cache.table.insert_unique(hash_path(rel), index, |&i| {
                hash_path(path_of(paths, &records[i as usize]))
            });
        }
        (r.pos == data.len()).then_some(cache)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn find(&self, rel: &[u8]) -> Option<&Record> {
        let i = self.table.find(hash_path(rel), |&i| {
            path_of(&self.paths, &self.records[i as usize]) == rel
        })?;
        self.records.get(*i as usize)
    }

    /// The recorded digest of `rel`, if its stat is unchanged and the record is trusted; a hit
    /// marks the record as seen so that `seen` carries it into the next cache.
    pub fn lookup(&self, rel: &[u8], key: &StatKey) -> Option<[u8; 32]> {
        let rec = self.find(rel)?;
        if rec.trusted && rec.key == *key {
            rec.seen.store(true, Ordering::Relaxed);
            Some(rec.digest)
        } else {
            None
        }
    }

    /// The records that lookups found unchanged: (path, stat, digest).
    pub fn seen(&self) -> impl Iterator<Item = (&[u8], StatKey, [u8; 32])> + '_ {
        self.records
            .iter()
            .filter(|r| r.seen.load(Ordering::Relaxed))
            .map(|r| (path_of(&self.paths, r), r.key, r.digest))
    }

    /// Write a new cache for `root` atomically (temp file, fsync, rename), private to the user.
    pub fn save<'a>(
        path: &Path,
        root: &[u8],
        records: impl ExactSizeIterator<Item = (&'a [u8], StatKey, [u8; 32])>,
    ) -> io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "statcache".into());
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let result = (|| {
            let file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            let mut w = BufWriter::with_capacity(1 << 20, file);
            w.write_all(MAGIC)?;
            write_bytes(&mut w, root)?;
            w.write_all(&(records.len() as u64).to_le_bytes())?;
            for (rel, key, digest) in records {
                write_bytes(&mut w, rel)?;
                for v in [
                    key.size,
                    key.mtime_ns as u64,
                    key.ctime_ns as u64,
                    key.ino,
                    key.dev,
                ] {
                    w.write_all(&v.to_le_bytes())?;
                }
                w.write_all(&digest)?;
            }
            let file = w.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

fn path_of<'a>(paths: &'a [u8], r: &Record) -> &'a [u8] {
    let (start, len) = (r.path.0 as usize, r.path.1 as usize);
    &paths[start..start + len]
}

use std::os::unix::fs::DirBuilderExt;

fn write_bytes(w: &mut impl Write, b: &[u8]) -> io::Result<()> {
    w.write_all(&(b.len() as u64).to_le_bytes())?;
    w.write_all(b)
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(size: u64, t: i64) -> StatKey {
        StatKey {
            size,
            mtime_ns: t,
            ctime_ns: t,
            ino: 7,
            dev: 1,
        }
    }

    #[test]
    fn round_trip_trusts_old_records_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cache.bin");
        let old = key(3, 1_000);
        let future = key(4, i64::MAX - 1);
        let recs: Vec<(&[u8], StatKey, [u8; 32])> =
            vec![(b"a/b", old, [1; 32]), (b"c", future, [2; 32])];
        StatCache::save(&path, b"/root", recs.into_iter()).unwrap();
        let c = StatCache::load(&path, b"/root");
        assert_eq!(c.len(), 2);
        assert_eq!(c.lookup(b"a/b", &old), Some([1; 32]));
        assert_eq!(c.lookup(b"a/b", &key(3, 1_001)), None, "changed mtime");
        assert_eq!(c.lookup(b"c", &future), None, "racy record is not trusted");
        assert!(
            StatCache::load(&path, b"/other").is_empty(),
            "another root's cache"
        );
        let mode = fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn corrupt_or_missing_file_is_an_empty_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.bin");
        assert!(StatCache::load(&path, b"/r").is_empty());
        let recs: Vec<(&[u8], StatKey, [u8; 32])> = vec![(b"x", key(1, 5), [9; 32])];
        StatCache::save(&path, b"/r", recs.into_iter()).unwrap();
        let mut data = fs::read(&path).unwrap();
        data.truncate(data.len() - 5);
        fs::write(&path, &data).unwrap();
        assert!(StatCache::load(&path, b"/r").is_empty());
    }
}
