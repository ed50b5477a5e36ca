//! Parallel tree walk and BLAKE3 Merkle digest of a build context.
//!
//! Schema `memobuild.tree.v1`: a directory's digest is BLAKE3 over a domain tag followed by one
//! length-framed record per child, sorted by name bytes. A record holds the child's type, its
//! name, its executable bit (owner x, as git does), a 32-byte digest (file content, or the
//! subdirectory's digest) and, for a symlink, its target. mtime, uid, gid and the rest of the
//! mode never enter, so a tree hashes the same on any machine and under any umask.
//!
//! Directories are walked in parallel (rayon), files are hashed in parallel, and an excluded
//! directory is pruned from the walk unless an ignore exception could match beneath it.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ::ignore::gitignore::{Gitignore, GitignoreBuilder};
use ::ignore::Match;
use rayon::prelude::*;

use crate::ignore::DockerIgnore;
use crate::statcache::{StatCache, StatKey};
use crate::verify::BLAKE3_PARALLEL_MIN;

const TREE_TAG: &[u8] = b"memobuild.tree.v1\0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl Kind {
    fn tag(self) -> u8 {
        match self {
            Kind::File => b'f',
            Kind::Dir => b'd',
            Kind::Symlink => b'l',
            Kind::Fifo => b'p',
            Kind::Socket => b's',
            Kind::CharDevice => b'c',
            Kind::BlockDevice => b'b',
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
            Kind::CharDevice => "chardev",
            Kind::BlockDevice => "blockdev",
        }
    }

    fn of(ft: &fs::FileType) -> Kind {
        if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_socket() {
            Kind::Socket
        } else if ft.is_char_device() {
            Kind::CharDevice
        } else {
            Kind::BlockDevice
        }
    }
}

/// Which paths of the tree take part in the digest.
pub enum Filter {
    All,
    /// `.dockerignore` patterns (moby/patternmatcher semantics), anchored at the root.
    Docker(DockerIgnore),
    /// `.gitignore` files found in the tree (and `.git/info/exclude`); `.git` itself is skipped.
    Git,
}

pub struct Options {
    pub filter: Filter,
    /// Where the stat cache lives; `None` hashes every file's content.
    pub stat_cache: Option<PathBuf>,
    /// Return one record per path (sorted by path bytes).
    pub include_entries: bool,
}

/// One path of the tree, as it entered the digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Content digest for a file, Merkle digest for a directory, zeros otherwise.
    pub digest: [u8; 32],
    pub executable: bool,
    pub size: u64,
    pub link_target: Option<Vec<u8>>,
}

#[derive(Clone, Debug, Default)]
pub struct TreeHash {
    pub digest: [u8; 32],
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Files whose content was read and hashed in this run.
    pub hashed_files: u64,
    /// Files whose digest came from the stat cache.
    pub cache_hits: u64,
    pub entries: Option<Vec<Entry>>,
}

#[derive(Debug)]
pub enum HashError {
    RootNotFound(PathBuf),
    RootNotDirectory(PathBuf),
    Io { path: PathBuf, source: io::Error },
}

impl fmt::Display for HashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashError::RootNotFound(p) => write!(f, "{}: no such directory", p.display()),
            HashError::RootNotDirectory(p) => write!(f, "{}: not a directory", p.display()),
            HashError::Io { path, source } => write!(f, "{}: {}", path.display(), source),
        }
    }
}

impl std::error::Error for HashError {}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HashError + '_ {
    move |source| HashError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// (relative path, stat, content digest): one row of the next stat cache.
type StatRecord = (Vec<u8>, StatKey, [u8; 32]);

#[derive(Default)]
struct Counters {
    files: AtomicU64,
    dirs: AtomicU64,
    symlinks: AtomicU64,
    bytes: AtomicU64,
    hashed: AtomicU64,
    hits: AtomicU64,
}

struct Walk<'a> {
    filter: &'a Filter,
    cache: &'a StatCache,
    keep_stats: bool,
    keep_entries: bool,
    counters: Counters,
    /// Files hashed in this run, for the next stat cache (hits are marked in the cache itself).
    fresh: Mutex<Vec<StatRecord>>,
    entries: Mutex<Vec<Entry>>,
}

/// The gitignore matchers in force in a directory, innermost first.
#[derive(Clone, Default)]
struct GitStack(Option<Arc<(Gitignore, GitStack)>>);

impl GitStack {
    fn push(&self, g: Gitignore) -> GitStack {
        GitStack(Some(Arc::new((g, self.clone()))))
    }

    fn ignored(&self, abs: &Path, is_dir: bool) -> bool {
        let mut cur = &self.0;
        while let Some(node) = cur {
            match node.0.matched(abs, is_dir) {
                Match::Ignore(_) => return true,
                Match::Whitelist(_) => return false,
                Match::None => cur = &(node.1).0,
            }
        }
        false
    }
}

fn load_gitignore(dir: &Path, file: &Path) -> Option<Gitignore> {
    if !file.is_file() {
        return None;
    }
    let mut b = GitignoreBuilder::new(dir);
    // Like git, a bad line is skipped and the rest of the file still applies.
    let _ = b.add(file);
    b.build().ok().filter(|g| !g.is_empty())
}

struct Child {
    name: Vec<u8>,
    /// Kept so that lstat goes through the open directory (fstatat), not a full path walk.
    entry: fs::DirEntry,
    kind: Kind,
    /// Excluded itself but walked because an exception may match beneath it.
    excluded: bool,
}

struct Node {
    name: Vec<u8>,
    kind: Kind,
    digest: [u8; 32],
    executable: bool,
    link_target: Option<Vec<u8>>,
}

thread_local! {
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn join_rel(rel: &[u8], name: &[u8]) -> Vec<u8> {
    if rel.is_empty() {
        return name.to_vec();
    }
    let mut v = Vec::with_capacity(rel.len() + 1 + name.len());
    v.extend_from_slice(rel);
    v.push(b'/');
    v.extend_from_slice(name);
    v
}

fn hash_content(path: &Path, size: u64) -> io::Result<[u8; 32]> {
    if size >= BLAKE3_PARALLEL_MIN {
        let mut h = blake3::Hasher::new();
        h.update_mmap_rayon(path)?;
        return Ok(*h.finalize().as_bytes());
    }
    let mut file = File::open(path)?;
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.clear();
        buf.reserve(size as usize + 1);
        file.read_to_end(&mut buf)?;
        Ok(*blake3::hash(&buf).as_bytes())
    })
}

impl Walk<'_> {
    /// Walk one directory; `None` when it was excluded and nothing beneath it was re-included.
    fn dir(
        &self,
        abs: &Path,
        rel: &[u8],
        git: &GitStack,
        excluded: bool,
    ) -> Result<Option<[u8; 32]>, HashError> {
        let git = match self.filter {
            Filter::Git => match load_gitignore(abs, &abs.join(".gitignore")) {
                Some(g) => git.push(g),
                None => git.clone(),
            },
            _ => git.clone(),
        };
        let mut children = Vec::new();
        for item in fs::read_dir(abs).map_err(io_err(abs))? {
            let item = item.map_err(io_err(abs))?;
            let name = item.file_name().as_bytes().to_vec();
            let ft = item.file_type().map_err(io_err(&item.path()))?;
            let kind = Kind::of(&ft);
            let mut child_excluded = false;
            match self.filter {
                Filter::All => {}
                Filter::Docker(d) => {
                    if d.matches(&join_rel(rel, &name)) {
                        if kind == Kind::Dir && d.dir_may_contain_exceptions(&join_rel(rel, &name))
                        {
                            child_excluded = true;
                        } else {
                            continue;
                        }
                    }
                }
                Filter::Git => {
                    if name == b".git" || git.ignored(&item.path(), kind == Kind::Dir) {
                        continue;
                    }
                }
            }
            children.push(Child {
                name,
                entry: item,
                kind,
                excluded: child_excluded,
            });
        }
        children.sort_unstable_by(|a, b| a.name.cmp(&b.name));

        let nodes: Vec<Option<Node>> = children
            .into_par_iter()
            .map(|c| self.child(abs, rel, &git, c))
            .collect::<Result<_, _>>()?;
        let nodes: Vec<Node> = nodes.into_iter().flatten().collect();
        if excluded && nodes.is_empty() {
            return Ok(None);
        }

        let mut h = blake3::Hasher::new();
        h.update(TREE_TAG);
        for n in &nodes {
            h.update(&[n.kind.tag()]);
            h.update(&(n.name.len() as u64).to_le_bytes());
            h.update(&n.name);
            h.update(&[n.executable as u8]);
            h.update(&n.digest);
            if let Some(t) = &n.link_target {
                h.update(&(t.len() as u64).to_le_bytes());
                h.update(t);
            }
        }
        Ok(Some(*h.finalize().as_bytes()))
    }

    fn child(
        &self,
        dir_abs: &Path,
        dir_rel: &[u8],
        git: &GitStack,
        c: Child,
    ) -> Result<Option<Node>, HashError> {
        let abs = || dir_abs.join(OsStr::from_bytes(&c.name));
        let rel = join_rel(dir_rel, &c.name);
        let mut size = 0;
        let mut executable = false;
        let mut link_target = None;
        let digest = match c.kind {
            Kind::Dir => match self.dir(&abs(), &rel, git, c.excluded)? {
                Some(d) => {
                    self.counters.dirs.fetch_add(1, Ordering::Relaxed);
                    d
                }
                None => return Ok(None),
            },
            Kind::File => {
                let meta = c.entry.metadata().map_err(|e| io_err(&abs())(e))?;
                let key = StatKey::from_metadata(&meta);
                size = key.size;
                executable = meta.mode() & 0o100 != 0;
                let digest = match self.cache.lookup(&rel, &key) {
                    Some(d) => {
                        self.counters.hits.fetch_add(1, Ordering::Relaxed);
                        d
                    }
                    None => {
                        self.counters.hashed.fetch_add(1, Ordering::Relaxed);
                        let path = abs();
                        let d = hash_content(&path, size).map_err(io_err(&path))?;
                        if self.keep_stats {
                            lock(&self.fresh).push((rel.clone(), key, d));
                        }
                        d
                    }
                };
                self.counters.files.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes.fetch_add(size, Ordering::Relaxed);
                digest
            }
            Kind::Symlink => {
                let path = abs();
                let target = fs::read_link(&path).map_err(io_err(&path))?;
                link_target = Some(target.as_os_str().as_bytes().to_vec());
                self.counters.symlinks.fetch_add(1, Ordering::Relaxed);
                [0; 32]
            }
            _ => [0; 32],
        };
        if self.keep_entries {
            lock(&self.entries).push(Entry {
                path: rel,
                kind: c.kind,
                digest,
                executable,
                size,
                link_target: link_target.clone(),
            });
        }
        Ok(Some(Node {
            name: c.name,
            kind: c.kind,
            digest,
            executable,
            link_target,
        }))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these vectors half-updated in a way that matters.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Hash the tree at `root` (a directory; a symlink to one is followed at the root only).
pub fn hash_tree(root: &Path, opts: &Options) -> Result<TreeHash, HashError> {
    let meta = match fs::metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(HashError::RootNotFound(root.to_path_buf()))
        }
        Err(e) => return Err(io_err(root)(e)),
    };
    if !meta.is_dir() {
        return Err(HashError::RootNotDirectory(root.to_path_buf()));
    }
    let root_abs = fs::canonicalize(root).map_err(io_err(root))?;
    let root_key = root_abs.as_os_str().as_bytes();
    let cache = match &opts.stat_cache {
        Some(p) => StatCache::load(p, root_key),
        None => StatCache::empty(),
    };
    let walk = Walk {
        filter: &opts.filter,
        cache: &cache,
        keep_stats: opts.stat_cache.is_some(),
        keep_entries: opts.include_entries,
        counters: Counters::default(),
        fresh: Mutex::new(Vec::new()),
        entries: Mutex::new(Vec::new()),
    };
    let mut git = GitStack::default();
    if let Filter::Git = opts.filter {
        if let Some(g) = load_gitignore(&root_abs, &root_abs.join(".git/info/exclude")) {
            git = git.push(g);
        }
    }
    let digest = walk
        .dir(&root_abs, b"", &git, false)?
        .unwrap_or_else(|| *blake3::hash(TREE_TAG).as_bytes());
    let c = &walk.counters;
    let hashed_files = c.hashed.load(Ordering::Relaxed);
    if let Some(path) = &opts.stat_cache {
        let fresh = walk.fresh.into_inner().unwrap_or_else(|e| e.into_inner());
        let seen = c.hits.load(Ordering::Relaxed) as usize;
        // Rewrite only when something changed: a file was (re)hashed or one went away.
        if !fresh.is_empty() || seen != cache.len() {
            let rows: Vec<(&[u8], StatKey, [u8; 32])> = cache
                .seen()
                .chain(fresh.iter().map(|(p, k, d)| (p.as_slice(), *k, *d)))
                .collect();
            // The stat cache is an optimisation: failing to write it never fails the hash.
            let _ = StatCache::save(path, root_key, rows.into_iter());
        }
    }
    let entries = opts.include_entries.then(|| {
        let mut e = walk.entries.into_inner().unwrap_or_else(|e| e.into_inner());
        e.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        e
    });
    Ok(TreeHash {
        digest,
        files: c.files.load(Ordering::Relaxed),
        dirs: c.dirs.load(Ordering::Relaxed),
        symlinks: c.symlinks.load(Ordering::Relaxed),
        bytes: c.bytes.load(Ordering::Relaxed),
        hashed_files,
        cache_hits: c.hits.load(Ordering::Relaxed),
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn opts(filter: Filter) -> Options {
        Options {
            filter,
            stat_cache: None,
            include_entries: true,
        }
    }

    fn digest(root: &Path) -> [u8; 32] {
        hash_tree(root, &opts(Filter::All)).unwrap().digest
    }

    fn sample(root: &Path) {
        fs::create_dir_all(root.join("src/deep")).unwrap();
        fs::create_dir_all(root.join("empty")).unwrap();
        fs::write(root.join("a.txt"), "alpha").unwrap();
        fs::write(root.join("src/main.rs"), "fn main() {}").unwrap();
        fs::write(root.join("src/deep/x"), "x").unwrap();
        symlink("../a.txt", root.join("src/link")).unwrap();
    }

    #[test]
    fn same_content_same_digest_anywhere() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        sample(a.path());
        sample(b.path());
        assert_eq!(digest(a.path()), digest(b.path()));
        let r = hash_tree(a.path(), &opts(Filter::All)).unwrap();
        assert_eq!((r.files, r.dirs, r.symlinks, r.bytes), (3, 3, 1, 18));
        let paths: Vec<_> = r.entries.unwrap().into_iter().map(|e| e.path).collect();
        assert!(paths.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn every_recorded_property_changes_the_digest() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        sample(root);
        let base = digest(root);
        fs::write(root.join("src/deep/x"), "y").unwrap();
        let edited = digest(root);
        assert_ne!(base, edited);
        fs::set_permissions(root.join("a.txt"), fs::Permissions::from_mode(0o755)).unwrap();
        let exec = digest(root);
        assert_ne!(edited, exec);
        fs::set_permissions(root.join("a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(digest(root), edited, "only the owner exec bit counts");
        fs::remove_file(root.join("src/link")).unwrap();
        symlink("../b.txt", root.join("src/link")).unwrap();
        assert_ne!(digest(root), edited);
        fs::rename(root.join("empty"), root.join("empty2")).unwrap();
        let renamed = digest(root);
        fs::create_dir(root.join("empty")).unwrap();
        assert_ne!(digest(root), renamed, "empty directories count");
    }

    #[test]
    fn errors_name_the_path() {
        let t = tempfile::tempdir().unwrap();
        let missing = t.path().join("nope");
        assert!(matches!(
            hash_tree(&missing, &opts(Filter::All)),
            Err(HashError::RootNotFound(_))
        ));
        fs::write(t.path().join("f"), "").unwrap();
        assert!(matches!(
            hash_tree(&t.path().join("f"), &opts(Filter::All)),
            Err(HashError::RootNotDirectory(_))
        ));
    }

    #[test]
    fn gitignore_files_are_honoured_and_git_dir_skipped() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        sample(root);
        let before = hash_tree(root, &opts(Filter::Git)).unwrap();
        fs::create_dir_all(root.join(".git/objects")).unwrap();
        fs::write(root.join(".git/HEAD"), "ref").unwrap();
        fs::create_dir_all(root.join("target/debug")).unwrap();
        fs::write(root.join("target/debug/bin"), "elf").unwrap();
        fs::write(root.join("src/deep/.gitignore"), "*.log\n").unwrap();
        fs::write(root.join("src/deep/noise.log"), "log").unwrap();
        fs::write(root.join(".gitignore"), "/target/\n").unwrap();
        let after = hash_tree(root, &opts(Filter::Git)).unwrap();
        let paths: Vec<String> = after
            .entries
            .unwrap()
            .iter()
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect();
        assert!(!paths.iter().any(|p| p.starts_with(".git/") || p == ".git"));
        assert!(!paths.iter().any(|p| p.starts_with("target")));
        assert!(!paths.iter().any(|p| p.ends_with("noise.log")));
        assert!(paths.contains(&".gitignore".to_string()));
        assert_eq!(after.files, before.files + 2);
    }

    #[test]
    fn stat_cache_skips_unchanged_content() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("ctx");
        fs::create_dir(&root).unwrap();
        sample(&root);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let o = Options {
            filter: Filter::All,
            stat_cache: Some(t.path().join("cache/stat.bin")),
            include_entries: false,
        };
        let first = hash_tree(&root, &o).unwrap();
        assert_eq!((first.hashed_files, first.cache_hits), (3, 0));
        let second = hash_tree(&root, &o).unwrap();
        assert_eq!((second.hashed_files, second.cache_hits), (0, 3));
        assert_eq!(first.digest, second.digest);
        fs::write(root.join("a.txt"), "ALPHA").unwrap();
        // Let the clock tick past a.txt's mtime, or its new record would be racily clean.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let third = hash_tree(&root, &o).unwrap();
        assert_eq!(third.hashed_files, 1);
        assert_ne!(third.digest, second.digest);
        // A deleted file leaves the cache; the survivors (hits and re-hashed) stay in it.
        fs::remove_file(root.join("src/deep/x")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let fourth = hash_tree(&root, &o).unwrap();
        assert_eq!((fourth.hashed_files, fourth.cache_hits), (0, 2));
        let cache = StatCache::load(o.stat_cache.as_ref().unwrap(), &[]);
        assert!(cache.is_empty(), "a cache is only valid for its own root");
        let root_key = fs::canonicalize(&root).unwrap();
        let cache = StatCache::load(
            o.stat_cache.as_ref().unwrap(),
            root_key.as_os_str().as_bytes(),
        );
        assert_eq!(cache.len(), 2);
    }
}
