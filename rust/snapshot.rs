//! Stat snapshots of a root filesystem, and the diff between a snapshot and the tree as it is now.
//!
//! Before a step the executor takes a [`Snapshot`]: for every directory, its children's `lstat`
//! fields, sorted by name. After the step, [`diff`] walks the tree again and compares each path
//! with its record. A path counts as changed when any of kind, permission bits, uid, gid, size,
//! mtime, ctime (not for directories, see [`Meta::unchanged`]), inode, link count, device number
//! or symlink target differs; ctime moves on every content, metadata or xattr change, so no file
//! content is read to find changes.
//!
//! The diff is the list of layer entries in their final order (see [`Change`]): a depth-first
//! walk, children by name bytes, each directory's whiteouts (opaque marker first) before its
//! other children. Every changed path comes with all its ancestor directories, so a layer is
//! self-contained. Deletions are whiteouts of the topmost deleted path only; a path whose type
//! changed is simply replaced (appliers remove a non-matching path before creating the new one).
//! A directory (other than the root) none of whose old children is left — emptied or replaced
//! wholesale — gets one opaque marker instead of a whiteout per old child (when there are two or
//! more). The rule looks at names only, never at inode numbers (which filesystems reuse), so the
//! same two trees always give the same layer.
//!
//! Walks are parallel (rayon) and go through directory file descriptors (`openat` with
//! `O_NOFOLLOW`, `fstatat`), so a symlink in the rootfs is never followed.

use std::ffi::{CStr, OsStr};
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};
use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::fs::{self as rfs, AtFlags, Dir, FileType, Mode, OFlags};

/// Deeper directory nesting than this is refused; it keeps the parallel walk's recursion far
/// from the end of a worker thread's stack.
pub const MAX_DEPTH: usize = 512;

/// Whiteout file names start with this (OCI image spec, "Whiteouts").
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The opaque-directory marker: everything the lower layers hold in its directory is hidden.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// After a snapshot, wait until the filesystem clock has moved this far past the newest ctime
/// seen, so that a change made right after the snapshot cannot carry the same ctime as the
/// record (kernel timestamps advance only once per clock tick).
const SETTLE_NS: i64 = 20_000_000;

/// Stack of the walk's worker threads: each directory level costs a few stack frames of the
/// parallel recursion, and [`MAX_DEPTH`] levels must fit with room to spare (also in debug
/// builds). Only the pages touched are ever committed.
const WALK_STACK: usize = 64 << 20;

/// Run `f` on the walk's own thread pool (big stacks), or here if it cannot be started.
fn in_walk_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    let pool = POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .stack_size(WALK_STACK)
            .thread_name(|i| format!("memobuild-walk-{i}"))
            .build()
            .ok()
    });
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDevice,
    BlockDevice,
}

impl Kind {
    /// `None` for sockets: a tar cannot hold them, so they are treated as absent.
    fn of(mode: u32) -> Option<Kind> {
        match FileType::from_raw_mode(mode as _) {
            FileType::RegularFile => Some(Kind::File),
            FileType::Directory => Some(Kind::Dir),
            FileType::Symlink => Some(Kind::Symlink),
            FileType::Fifo => Some(Kind::Fifo),
            FileType::CharacterDevice => Some(Kind::CharDevice),
            FileType::BlockDevice => Some(Kind::BlockDevice),
            _ => None,
        }
    }
}

/// The `lstat` fields of one path (and its symlink target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub dev: u64,
    pub nlink: u64,
    pub rdev: u64,
    pub target: Option<Box<[u8]>>,
}

impl Meta {
    // The field types of `struct stat` differ between architectures.
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    fn from_stat(st: &rfs::Stat, kind: Kind, target: Option<Box<[u8]>>) -> Meta {
        Meta {
            kind,
            mode: (st.st_mode as u32) & 0o7777,
            uid: st.st_uid as u32,
            gid: st.st_gid as u32,
            size: st.st_size as u64,
            mtime_ns: (st.st_mtime as i64)
                .saturating_mul(1_000_000_000)
                .saturating_add(st.st_mtime_nsec as i64),
            ctime_ns: (st.st_ctime as i64)
                .saturating_mul(1_000_000_000)
                .saturating_add(st.st_ctime_nsec as i64),
            ino: st.st_ino as u64,
            dev: st.st_dev as u64,
            nlink: st.st_nlink as u64,
            rdev: st.st_rdev as u64,
            target,
        }
    }

    /// Whether `self` (before) still describes `now`. The device is left out: it is the same
    /// filesystem, and overlayfs may report different ones for the same file over time.
    pub fn unchanged(&self, now: &Meta) -> bool {
        self.kind == now.kind
            && self.mode == now.mode
            && self.uid == now.uid
            && self.gid == now.gid
            && self.size == now.size
            && self.mtime_ns == now.mtime_ns
            // A directory's ctime is not compared: adding or removing an entry moves its mtime
            // anyway, and the sandbox creates and removes mount points (/etc/hosts, /proc, ...)
            // and then restores the mtime, which must not put the directory into every layer.
            // The cost: an xattr-only change on a directory is not seen.
            && (self.kind == Kind::Dir || self.ctime_ns == now.ctime_ns)
            && self.ino == now.ino
            && self.nlink == now.nlink
            && self.rdev == now.rdev
            && self.target == now.target
    }
}

/// One child of a directory.
#[derive(Clone, Debug)]
pub struct Rec {
    pub name: Box<[u8]>,
    pub meta: Meta,
}

/// The stat records of a whole tree, by directory (relative path, `""` for the root).
#[derive(Debug, Default)]
pub struct Snapshot {
    root: PathBuf,
    dirs: FxHashMap<Box<[u8]>, Vec<Rec>>,
    entries: u64,
}

impl Snapshot {
    /// The canonical path of the tree this snapshot was taken of.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Paths recorded, the root excluded.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// The sorted children of directory `rel`, if it was a directory.
    pub fn children(&self, rel: &[u8]) -> Option<&[Rec]> {
        self.dirs.get(rel).map(Vec::as_slice)
    }
}

/// One layer entry, in layer order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Put `path` in the layer as it is now.
    Entry { path: Vec<u8>, meta: Meta },
    /// `path` was deleted: a `.wh.<name>` entry in its parent directory.
    Whiteout { path: Vec<u8> },
    /// Hide everything lower layers hold below `dir`: a `.wh..wh..opq` entry in it.
    Opaque { dir: Vec<u8> },
}

#[derive(Debug)]
pub enum SnapshotError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// A path the tree holds cannot be snapshotted or put in a layer.
    Invalid {
        path: Vec<u8>,
        reason: String,
    },
    /// The snapshot given to [`diff`] was taken of another directory.
    WrongRoot {
        snapshot: PathBuf,
        root: PathBuf,
    },
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Io { path, source } => write!(f, "{}: {}", path.display(), source),
            SnapshotError::Invalid { path, reason } => {
                write!(f, "{}: {}", String::from_utf8_lossy(path), reason)
            }
            SnapshotError::WrongRoot { snapshot, root } => write!(
                f,
                "the snapshot was taken of {}, not of {}",
                snapshot.display(),
                root.display()
            ),
        }
    }
}

impl std::error::Error for SnapshotError {}

type Result<T> = std::result::Result<T, SnapshotError>;

pub(crate) fn join_rel(rel: &[u8], name: &[u8]) -> Vec<u8> {
    if rel.is_empty() {
        return name.to_vec();
    }
    let mut v = Vec::with_capacity(rel.len() + 1 + name.len());
    v.extend_from_slice(rel);
    v.push(b'/');
    v.extend_from_slice(name);
    v
}

/// A rootfs-relative path in canonical form (`a/b`: no leading, trailing or doubled slashes, no
/// `.`); `..` and the root itself are refused.
pub fn normalize_rel(path: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(path.len());
    for comp in path.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err("'..' is not allowed".into()),
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(comp);
            }
        }
    }
    if out.is_empty() {
        return Err("names the root itself".into());
    }
    Ok(out)
}

fn is_whiteout_name(name: &[u8]) -> bool {
    name.starts_with(WHITEOUT_PREFIX)
}

/// A directory's relative path and its sorted children.
type DirRecs = (Box<[u8]>, Vec<Rec>);

struct Walker<'a> {
    root: &'a Path,
    exclude: &'a FxHashSet<Vec<u8>>,
    newest_ctime: AtomicI64,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

pub(crate) fn open_root(root: &Path) -> io::Result<OwnedFd> {
    // The root itself may be reached through a symlink; nothing below it is.
    Ok(rfs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

impl Walker<'_> {
    fn abs(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.root.to_path_buf()
        } else {
            self.root.join(OsStr::from_bytes(rel))
        }
    }

    /// The error for `rel`; the path is only built when there is an error.
    fn io<'s>(&'s self, rel: &'s [u8]) -> impl FnOnce(rustix::io::Errno) -> SnapshotError + 's {
        move |e| SnapshotError::Io {
            path: self.abs(rel),
            source: e.into(),
        }
    }

    fn io_child(&self, rel: &[u8], name: &[u8], e: rustix::io::Errno) -> SnapshotError {
        self.io(&join_rel(rel, name))(e)
    }

    fn excluded(&self, rel: &[u8], name: &[u8]) -> bool {
        !self.exclude.is_empty() && self.exclude.contains(&join_rel(rel, name))
    }

    fn open_child(&self, dir: BorrowedFd<'_>, rel: &[u8], name: &[u8]) -> Result<OwnedFd> {
        rfs::openat(dir, name, DIR_FLAGS, Mode::empty()).map_err(|e| self.io_child(rel, name, e))
    }

    /// The directory's children (excluded paths and sockets left out), sorted by name.
    fn read_children(&self, fd: OwnedFd, rel: &[u8], depth: usize) -> Result<(Dir, Vec<Rec>)> {
        if depth > MAX_DEPTH {
            return Err(SnapshotError::Invalid {
                path: rel.to_vec(),
                reason: format!("directories are nested deeper than {MAX_DEPTH} levels"),
            });
        }
        let mut dir = Dir::new(fd).map_err(self.io(rel))?;
        let mut recs = Vec::new();
        let mut newest = i64::MIN;
        while let Some(ent) = dir.read() {
            let ent = ent.map_err(self.io(rel))?;
            let name: &CStr = ent.file_name();
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            if self.excluded(rel, bytes) {
                continue;
            }
            let dfd = dir.fd().map_err(self.io(rel))?;
            let st = match rfs::statat(dfd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Gone since readdir: it is not part of the tree any more.
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(self.io_child(rel, bytes, e)),
            };
            let Some(kind) = Kind::of(st.st_mode as u32) else {
                continue;
            };
            let target = if kind == Kind::Symlink {
                let t = rfs::readlinkat(dfd, name, Vec::new())
                    .map_err(|e| self.io_child(rel, bytes, e))?;
                Some(t.into_bytes().into_boxed_slice())
            } else {
                None
            };
            let meta = Meta::from_stat(&st, kind, target);
            newest = newest.max(meta.ctime_ns);
            recs.push(Rec {
                name: bytes.into(),
                meta,
            });
        }
        self.newest_ctime.fetch_max(newest, Ordering::Relaxed);
        recs.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Ok((dir, recs))
    }

    fn snap_dir(
        &self,
        fd: OwnedFd,
        rel: Vec<u8>,
        depth: usize,
        out: &Mutex<Vec<DirRecs>>,
    ) -> Result<()> {
        let (dir, recs) = self.read_children(fd, &rel, depth)?;
        let dfd = dir.fd().map_err(self.io(&rel))?;
        recs.par_iter()
            .filter(|r| r.meta.kind == Kind::Dir)
            .try_for_each(|r| {
                let child = self.open_child(dfd, &rel, &r.name)?;
                self.snap_dir(child, join_rel(&rel, &r.name), depth + 1, out)
            })?;
        lock(out).push((rel.into_boxed_slice(), recs));
        Ok(())
    }

    /// The changes below directory `rel`, in layer order (the directory's own entry excluded).
    /// `before` holds its children in the snapshot (`None`: the directory is new, so everything
    /// in it is).
    fn diff_dir(
        &self,
        snap: &Snapshot,
        fd: OwnedFd,
        rel: &[u8],
        before: Option<&[Rec]>,
        depth: usize,
    ) -> Result<Vec<Change>> {
        let (dir, after) = self.read_children(fd, rel, depth)?;
        let dfd = dir.fd().map_err(self.io(rel))?;

        // Merge the two sorted child lists.
        let mut pairs: Vec<(&Rec, Option<&Rec>)> = Vec::with_capacity(after.len());
        let mut deleted: Vec<&Rec> = Vec::new();
        match before {
            None => pairs.extend(after.iter().map(|a| (a, None))),
            Some(before) => {
                let (mut i, mut j) = (0, 0);
                while i < after.len() || j < before.len() {
                    match (after.get(i), before.get(j)) {
                        (Some(a), Some(b)) if a.name == b.name => {
                            pairs.push((a, Some(b)));
                            i += 1;
                            j += 1;
                        }
                        (Some(a), Some(b)) if a.name < b.name => {
                            pairs.push((a, None));
                            i += 1;
                        }
                        (Some(a), None) => {
                            pairs.push((a, None));
                            i += 1;
                        }
                        (_, Some(b)) => {
                            // Excluded paths are missing from `after` by construction.
                            if !self.excluded(rel, &b.name) {
                                deleted.push(b);
                            }
                            j += 1;
                        }
                        (None, None) => unreachable!("loop condition"),
                    }
                }
            }
        }

        let mut out = Vec::new();
        for d in &deleted {
            if is_whiteout_name(&d.name) {
                return Err(reserved_name(join_rel(rel, &d.name)));
            }
        }
        // Nothing of the old directory is left: everything in it now is new and will be written
        // anyway, so one marker says the same as a whiteout per old child (used when that saves
        // entries, i.e. from two deletions on).
        let opaque = !rel.is_empty() && deleted.len() > 1 && pairs.iter().all(|p| p.1.is_none());
        if opaque {
            out.push(Change::Opaque { dir: rel.to_vec() });
        } else {
            for d in deleted {
                out.push(Change::Whiteout {
                    path: join_rel(rel, &d.name),
                });
            }
        }

        let parts: Vec<Vec<Change>> = pairs
            .par_iter()
            .map(|&(a, b)| self.diff_child(snap, dfd, rel, a, b, depth))
            .collect::<Result<_>>()?;
        for p in parts {
            out.extend(p);
        }
        Ok(out)
    }

    fn diff_child(
        &self,
        snap: &Snapshot,
        dfd: BorrowedFd<'_>,
        rel: &[u8],
        now: &Rec,
        before: Option<&Rec>,
        depth: usize,
    ) -> Result<Vec<Change>> {
        let path = join_rel(rel, &now.name);
        if before.is_some_and(|b| b.meta.unchanged(&now.meta)) && now.meta.kind != Kind::Dir {
            return Ok(Vec::new());
        }
        if is_whiteout_name(&now.name) {
            return Err(reserved_name(path));
        }
        if now.meta.kind != Kind::Dir {
            return Ok(vec![Change::Entry {
                path,
                meta: now.meta.clone(),
            }]);
        }
        let fd = self.open_child(dfd, rel, &now.name)?;
        let (sub, changed) = match before {
            Some(b) if b.meta.kind == Kind::Dir => {
                let sub = self.diff_dir(snap, fd, &path, snap.children(&path), depth + 1)?;
                (sub, !b.meta.unchanged(&now.meta))
            }
            _ => (self.diff_dir(snap, fd, &path, None, depth + 1)?, true),
        };
        if !changed && sub.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(sub.len() + 1);
        out.push(Change::Entry {
            path,
            meta: now.meta.clone(),
        });
        out.extend(sub);
        Ok(out)
    }
}

fn reserved_name(path: Vec<u8>) -> SnapshotError {
    SnapshotError::Invalid {
        path,
        reason:
            "names starting with '.wh.' are reserved for whiteouts and cannot be put in a layer"
                .into(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn canonical_root(root: &Path) -> Result<(OwnedFd, PathBuf)> {
    let fd = open_root(root).map_err(|source| SnapshotError::Io {
        path: root.to_path_buf(),
        source,
    })?;
    let canon = std::fs::canonicalize(root).map_err(|source| SnapshotError::Io {
        path: root.to_path_buf(),
        source,
    })?;
    Ok((fd, canon))
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Take a stat snapshot of the tree at `root` (a directory; a symlink to one is followed at the
/// root only).
pub fn snapshot(root: &Path) -> Result<Snapshot> {
    let (fd, canon) = canonical_root(root)?;
    let empty = FxHashSet::default();
    let walker = Walker {
        root: &canon,
        exclude: &empty,
        newest_ctime: AtomicI64::new(i64::MIN),
    };
    let out = Mutex::new(Vec::new());
    in_walk_pool(|| walker.snap_dir(fd, Vec::new(), 0, &out))?;
    let list = out.into_inner().unwrap_or_else(|e| e.into_inner());
    let entries = list.iter().map(|(_, recs)| recs.len() as u64).sum();
    let mut dirs = FxHashMap::default();
    dirs.reserve(list.len());
    dirs.extend(list);

    let newest = walker.newest_ctime.load(Ordering::Relaxed);
    if newest != i64::MIN {
        let wait = newest.saturating_add(SETTLE_NS).saturating_sub(now_ns());
        if wait > 0 {
            std::thread::sleep(Duration::from_nanos(wait.min(SETTLE_NS) as u64));
        }
    }
    Ok(Snapshot {
        root: canon,
        dirs,
        entries,
    })
}

/// The changes that turn the tree `before` recorded into the tree at `root` now, in layer order.
/// `before = None` diffs against an empty tree: every path is an entry (a whole-tree layer).
/// `exclude` lists relative paths (see [`normalize_rel`]) that are left out, with everything
/// below them, on both sides.
pub fn diff(root: &Path, before: Option<&Snapshot>, exclude: &[Vec<u8>]) -> Result<Vec<Change>> {
    let (fd, canon) = canonical_root(root)?;
    let empty = Snapshot::default();
    let snap = match before {
        Some(s) => {
            if s.root != canon {
                return Err(SnapshotError::WrongRoot {
                    snapshot: s.root.clone(),
                    root: canon,
                });
            }
            s
        }
        None => &empty,
    };
    let exclude: FxHashSet<Vec<u8>> = exclude.iter().cloned().collect();
    let walker = Walker {
        root: &canon,
        exclude: &exclude,
        newest_ctime: AtomicI64::new(i64::MIN),
    };
    let root_before = match before {
        Some(s) => Some(s.children(b"").unwrap_or(&[])),
        None => None,
    };
    in_walk_pool(|| walker.diff_dir(snap, fd, b"", root_before, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn names(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Entry { path, meta } => format!(
                    "{}{}",
                    String::from_utf8_lossy(path),
                    if meta.kind == Kind::Dir { "/" } else { "" }
                ),
                Change::Whiteout { path } => format!("-{}", String::from_utf8_lossy(path)),
                Change::Opaque { dir } => format!("opaque {}", String::from_utf8_lossy(dir)),
            })
            .collect()
    }

    fn sample(root: &Path) {
        fs::create_dir_all(root.join("etc/apt")).unwrap();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("var/lib/old")).unwrap();
        fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
        fs::write(root.join("etc/apt/sources"), "deb\n").unwrap();
        fs::write(root.join("usr/bin/tool"), "#!/bin/sh\n").unwrap();
        fs::write(root.join("var/lib/old/a"), "a").unwrap();
        fs::write(root.join("var/lib/old/b"), "b").unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
    }

    #[test]
    fn unchanged_tree_has_no_changes() {
        let t = tempfile::tempdir().unwrap();
        sample(t.path());
        let s = snapshot(t.path()).unwrap();
        assert_eq!(s.entries(), 13);
        assert!(diff(t.path(), Some(&s), &[]).unwrap().is_empty());
    }

    #[test]
    fn whole_tree_is_depth_first_by_name() {
        let t = tempfile::tempdir().unwrap();
        sample(t.path());
        fs::write(t.path().join("etc-x"), "").unwrap();
        let got = names(&diff(t.path(), None, &[]).unwrap());
        assert_eq!(
            got,
            [
                "bin",
                "etc/",
                "etc/apt/",
                "etc/apt/sources",
                "etc/hosts",
                "etc-x",
                "usr/",
                "usr/bin/",
                "usr/bin/tool",
                "var/",
                "var/lib/",
                "var/lib/old/",
                "var/lib/old/a",
                "var/lib/old/b",
            ]
        );
    }

    #[test]
    fn additions_changes_deletions_and_type_changes() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        sample(r);
        let s = snapshot(r).unwrap();
        fs::write(r.join("etc/apt/sources"), "deb2\n").unwrap(); // content, same inode
        fs::set_permissions(r.join("usr/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::remove_file(r.join("etc/hosts")).unwrap();
        fs::create_dir(r.join("etc/hosts")).unwrap(); // file -> dir
        fs::remove_file(r.join("bin")).unwrap();
        fs::create_dir(r.join("bin")).unwrap(); // symlink -> dir
        fs::write(r.join("bin/new"), "").unwrap();
        fs::remove_dir_all(r.join("var/lib/old")).unwrap();
        let got = names(&diff(r, Some(&s), &[]).unwrap());
        assert_eq!(
            got,
            [
                "bin/",
                "bin/new",
                "etc/",
                "etc/apt/",
                "etc/apt/sources",
                "etc/hosts/",
                "usr/",
                "usr/bin/",
                "usr/bin/tool",
                "var/",
                "var/lib/",
                "-var/lib/old",
            ]
        );
    }

    #[test]
    fn emptied_or_replaced_directory_is_opaque() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        sample(r);
        fs::write(r.join("etc/apt/keys"), "k").unwrap();
        let s = snapshot(r).unwrap();
        // Replaced wholesale: nothing of the old directory is left.
        fs::remove_dir_all(r.join("var/lib/old")).unwrap();
        fs::create_dir(r.join("var/lib/old")).unwrap();
        fs::write(r.join("var/lib/old/c"), "c").unwrap();
        // Emptied in place (two old children; a single one would just get its whiteout).
        fs::remove_file(r.join("etc/apt/sources")).unwrap();
        fs::remove_file(r.join("etc/apt/keys")).unwrap();
        // One deletion next to a survivor: a whiteout.
        fs::remove_file(r.join("etc/hosts")).unwrap();
        let got = names(&diff(r, Some(&s), &[]).unwrap());
        assert_eq!(
            got,
            [
                "etc/",
                "-etc/hosts",
                "etc/apt/",
                "opaque etc/apt",
                "var/",
                "var/lib/",
                "var/lib/old/",
                "opaque var/lib/old",
                "var/lib/old/c"
            ]
        );
    }

    #[test]
    fn recreated_directory_with_a_survivor_gets_whiteouts() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        sample(r);
        let s = snapshot(r).unwrap();
        let keep = r.join("keep");
        fs::rename(r.join("var/lib/old/a"), &keep).unwrap();
        fs::remove_dir_all(r.join("var/lib/old")).unwrap();
        fs::create_dir(r.join("var/lib/old")).unwrap();
        fs::rename(&keep, r.join("var/lib/old/a")).unwrap();
        let got = names(&diff(r, Some(&s), &[]).unwrap());
        // Whether the filesystem reused the directory's inode must not matter; `a` itself is
        // unchanged (a rename keeps the inode; ext4 does bump its ctime, others may not).
        let expect_a = got.contains(&"var/lib/old/a".to_string());
        let mut want = vec!["var/", "var/lib/", "var/lib/old/", "-var/lib/old/b"];
        if expect_a {
            want.push("var/lib/old/a");
        }
        assert_eq!(got, want);
    }

    #[test]
    fn excluded_paths_never_appear() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        sample(r);
        fs::create_dir_all(r.join("run/secrets")).unwrap();
        let s = snapshot(r).unwrap();
        fs::write(r.join("run/secrets/token"), "x").unwrap();
        fs::create_dir(r.join("proc")).unwrap();
        fs::write(r.join("proc/1"), "x").unwrap();
        fs::remove_dir_all(r.join("etc")).unwrap();
        let ex = [b"proc".to_vec(), b"run/secrets".to_vec(), b"etc".to_vec()];
        let got = names(&diff(r, Some(&s), &ex).unwrap());
        // run changed (mtime) only because of the excluded child; its entry is harmless
        assert!(
            got.iter()
                .all(|n| !n.contains("secrets") && !n.contains("proc")),
            "{got:?}"
        );
        assert!(got.iter().all(|n| !n.contains("etc")), "{got:?}");
    }

    #[test]
    fn whiteout_names_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let s = snapshot(t.path()).unwrap();
        fs::write(t.path().join(".wh.x"), "").unwrap();
        let err = diff(t.path(), Some(&s), &[]).unwrap_err();
        assert!(matches!(err, SnapshotError::Invalid { ref path, .. } if path == b".wh.x"));
    }

    #[test]
    fn snapshot_of_another_root_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let s = snapshot(a.path()).unwrap();
        assert!(matches!(
            diff(b.path(), Some(&s), &[]),
            Err(SnapshotError::WrongRoot { .. })
        ));
        assert!(matches!(
            snapshot(&a.path().join("missing")),
            Err(SnapshotError::Io { ref source, .. }) if source.kind() == io::ErrorKind::NotFound
        ));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let t = tempfile::tempdir().unwrap();
        let mut p = t.path().to_path_buf();
        let mut rel = PathBuf::new();
        for _ in 0..MAX_DEPTH {
            rel.push("d");
        }
        p.push(&rel);
        fs::create_dir_all(&p).unwrap();
        let s = snapshot(t.path()).unwrap();
        fs::write(p.join("leaf"), "").unwrap();
        assert_eq!(diff(t.path(), Some(&s), &[]).unwrap().len(), MAX_DEPTH + 1);
        assert_eq!(diff(t.path(), None, &[]).unwrap().len(), MAX_DEPTH + 1);
        fs::create_dir_all(p.join("d/d")).unwrap();
        assert!(matches!(
            snapshot(t.path()),
            Err(SnapshotError::Invalid { .. })
        ));
    }

    #[test]
    fn normalize_rel_forms() {
        assert_eq!(normalize_rel(b"/run//secrets/").unwrap(), b"run/secrets");
        assert_eq!(normalize_rel(b"./proc").unwrap(), b"proc");
        assert!(normalize_rel(b"a/../b").is_err());
        assert!(normalize_rel(b"/").is_err());
    }
}
