//! COPY/ADD source selection over a hashed build context.
//!
//! The context is hashed once (`hash::hash_tree` with its stat cache and `.dockerignore`
//! filter) and kept as a sorted entry list. Every source of every COPY/ADD in a plan is then
//! resolved against that list with `docker build`'s rules (BuildKit + tonistiigi/fsutil):
//!
//! * a source is cleaned as `filepath.Join("/", src)` does: `..` cannot leave the context, a
//!   leading `/` means the context root, `.` is the root itself;
//! * a source without wildcards (`*`, `?`, `[` not escaped by `\`) names one path, and symlinks
//!   on the way, the last one included, are followed inside the context (`fs.RootPath`);
//! * with wildcards, the path is split at the first element holding one (`splitWildcards`);
//!   the literal part is resolved as above and every path below it whose relative path matches
//!   the rest with Go's `filepath.Match` is a match, a matched directory's contents not being
//!   searched further (`filepath.SkipDir`). A wildcard that matches nothing is not an error
//!   (BuildKit's `AllowEmptyWildcard`); a malformed one is (BuildKit silently matches nothing).
//!
//! A selection's digest covers exactly the matched entries: per match its context-relative
//! path, its type, its executable bit and its digest (file content, or the directory's Merkle
//! digest, which already covers everything below it). So a file that no source matches never
//! reaches a key, and a directory source costs one lookup however many files it holds.
//!
//! `--exclude` patterns (moby/patternmatcher, like `.dockerignore`) are matched against paths
//! relative to each matched directory and, for a matched file, against its name; a directory
//! with exclusions is digested as the flat list of what remains.
//!
//! The entry list can be written out as a compact listing and read back, so that `explain`
//! can compare a source's files with those of an earlier build.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::hash::{self, Entry, Filter, HashError, Kind, Options};
use crate::ignore::{clean_bytes, DockerIgnore, PatternError};

const SELECT_TAG: &[u8] = b"memobuild.select.v1\0";
const EXCLUDE_TAG: &[u8] = b"memobuild.select.exclude.v1\0";
const LISTING_MAGIC: &[u8] = b"memobuild.listing.v1\0";
/// continuity's `fs.RootPath` gives up after this many symlinks.
const MAX_LINKS: usize = 255;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub enum SelectError {
    /// The path (context-relative, as resolved so far) is not in the context.
    NotFound(Vec<u8>),
    /// Too many symlinks while resolving the path.
    Loop(Vec<u8>),
    /// A wildcard source Go's `filepath.Match` refuses.
    BadPattern(String),
    /// A malformed `--exclude` pattern.
    Exclude(PatternError),
}

impl fmt::Display for SelectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SelectError::NotFound(p) => {
                write!(
                    f,
                    "{}: not found in build context",
                    String::from_utf8_lossy(p)
                )
            }
            SelectError::Loop(p) => write!(
                f,
                "{}: too many levels of symbolic links",
                String::from_utf8_lossy(p)
            ),
            SelectError::BadPattern(p) => write!(f, "syntax error in pattern {p:?}"),
            SelectError::Exclude(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SelectError {}

#[derive(Debug)]
pub enum ListingError {
    Corrupt(&'static str),
}

impl fmt::Display for ListingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListingError::Corrupt(why) => write!(f, "corrupt context listing: {why}"),
        }
    }
}

impl std::error::Error for ListingError {}

// ---------------------------------------------------------------------------------------------
// Go's filepath.Match
// ---------------------------------------------------------------------------------------------

/// Go's `ErrBadPattern`.
#[derive(Debug, PartialEq, Eq)]
pub struct BadPattern;

/// Decode one rune as Go does: an invalid byte is U+FFFD of width 1.
fn decode_rune(s: &[u8]) -> (u32, usize) {
    let width = match s.first() {
        None => return (0xFFFD, 0),
        Some(&b) if b < 0x80 => return (b as u32, 1),
        Some(&b) if b & 0xE0 == 0xC0 => 2,
        Some(&b) if b & 0xF0 == 0xE0 => 3,
        Some(&b) if b & 0xF8 == 0xF0 => 4,
        Some(_) => return (0xFFFD, 1),
    };
    match s.get(..width).map(std::str::from_utf8) {
        Some(Ok(text)) => (text.chars().next().map_or(0xFFFD, |c| c as u32), width),
        _ => (0xFFFD, 1),
    }
}

/// Whether `name` contains a wildcard Go's copy code would expand (`containsWildcards`).
pub fn contains_wildcards(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'\\' => i += 1,
            b'*' | b'?' | b'[' => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

fn scan_chunk(pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut p = pattern;
    let mut star = false;
    while let Some(b'*') = p.first() {
        p = &p[1..];
        star = true;
    }
    let mut in_range = false;
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'\\' if i + 1 < p.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &p[..i], &p[i..])
}

fn get_esc(chunk: &[u8]) -> Result<(u32, &[u8]), BadPattern> {
    let mut c = chunk;
    match c.first() {
        None | Some(b'-') | Some(b']') => return Err(BadPattern),
        Some(b'\\') => {
            c = &c[1..];
            if c.is_empty() {
                return Err(BadPattern);
            }
        }
        _ => {}
    }
    let (r, n) = decode_rune(c);
    if r == 0xFFFD && n == 1 && c[0] >= 0x80 {
        return Err(BadPattern);
    }
    let rest = &c[n..];
    if rest.is_empty() {
        return Err(BadPattern);
    }
    Ok((r, rest))
}

/// Go's `matchChunk`: on success, what is left of `s`.
fn match_chunk<'a>(chunk: &[u8], s: &'a [u8]) -> Result<Option<&'a [u8]>, BadPattern> {
    let mut chunk = chunk;
    let mut s = s;
    let mut failed = false;
    while !chunk.is_empty() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match chunk[0] {
            b'[' => {
                let mut r = 0;
                if !failed {
                    let (rune, n) = decode_rune(s);
                    r = rune;
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let mut negated = false;
                if chunk.first() == Some(&b'^') {
                    negated = true;
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut ranges = 0;
                loop {
                    if chunk.first() == Some(&b']') && ranges > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = get_esc(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if chunk[0] == b'-' {
                        let (h, rest) = get_esc(&chunk[1..])?;
                        hi = h;
                        chunk = rest;
                    }
                    if lo <= r && r <= hi {
                        matched = true;
                    }
                    ranges += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s[0] == b'/' {
                        failed = true;
                    }
                    let (_, n) = decode_rune(s);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
            }
            first => {
                let mut lit = first;
                if first == b'\\' {
                    chunk = &chunk[1..];
                    if chunk.is_empty() {
                        return Err(BadPattern);
                    }
                    lit = chunk[0];
                }
                if !failed {
                    if lit != s[0] {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    if failed {
        Ok(None)
    } else {
        Ok(Some(s))
    }
}

/// Go's `path/filepath.Match` on Unix: `*` and `?` never match `/`, `[^...]` negates a class,
/// `\` escapes. Errors only where Go reports `ErrBadPattern`.
pub fn go_match(pattern: &[u8], name: &[u8]) -> Result<bool, BadPattern> {
    let mut pattern = pattern;
    let mut name = name;
    'outer: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            return Ok(!name.contains(&b'/'));
        }
        let first = match_chunk(chunk, name);
        if let Ok(Some(t)) = first {
            if t.is_empty() || !pattern.is_empty() {
                name = t;
                continue;
            }
        }
        first?;
        if star {
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                match match_chunk(chunk, &name[i + 1..]) {
                    Ok(Some(t)) => {
                        if pattern.is_empty() && !t.is_empty() {
                            i += 1;
                            continue;
                        }
                        name = t;
                        continue 'outer;
                    }
                    Ok(None) => {}
                    Err(e) => return Err(e),
                }
                i += 1;
            }
        }
        // Before failing, the rest of the pattern must still be well formed.
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            match_chunk(chunk, b"")?;
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

// ---------------------------------------------------------------------------------------------
// The hashed context
// ---------------------------------------------------------------------------------------------

/// Counters of the walk that produced a context (zero for the `hashed_files`/`cache_hits` of
/// one read back from a listing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub hashed_files: u64,
    pub cache_hits: u64,
}

/// A build context after `.dockerignore`: its Merkle digest and every entry, sorted by path.
pub struct Context {
    pub digest: [u8; 32],
    pub entries: Vec<Entry>,
    pub stats: Stats,
}

/// One thing a source resolved to: the context root or an entry.
#[derive(Clone, Copy)]
enum Node {
    Root,
    At(usize),
}

/// One match of a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    /// The path as matched (symlinks not yet followed), context-relative; `""` is the root.
    pub path: Vec<u8>,
    /// What the path resolved to after following symlinks.
    pub kind: Kind,
}

/// What a source selects and the digest over exactly that.
#[derive(Clone, Debug)]
pub struct Selection {
    pub digest: [u8; 32],
    pub matches: Vec<Match>,
    /// Regular files covered by the selection (below matched directories included).
    pub files: u64,
}

/// How a source is matched.
#[derive(Default)]
pub struct SelectOptions {
    /// Expand wildcards (COPY/ADD sources); a bind-mount source is a plain path.
    pub wildcards: bool,
    /// `--exclude` patterns, if any.
    pub exclude: Option<DockerIgnore>,
}

impl SelectOptions {
    pub fn new(wildcards: bool, exclude: &[String]) -> Result<SelectOptions, SelectError> {
        let exclude = if exclude.is_empty() {
            None
        } else {
            Some(DockerIgnore::new(exclude).map_err(SelectError::Exclude)?)
        };
        Ok(SelectOptions { wildcards, exclude })
    }
}

/// One covered path of a selection, for comparing two builds' selections.
struct Covered<'a> {
    path: Vec<u8>,
    entry: &'a Entry,
}

/// Up to `limit` changed paths, in path order, and how many changes there are in all.
pub type Diff = (Vec<(Vec<u8>, Change)>, u64);

/// How a covered path differs between two selections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Added,
    Removed,
    Modified,
}

impl Change {
    pub fn name(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Modified => "modified",
        }
    }
}

fn kind_code(kind: Kind) -> u8 {
    match kind {
        Kind::File => b'f',
        Kind::Dir => b'd',
        Kind::Symlink => b'l',
        Kind::Fifo => b'p',
        Kind::Socket => b's',
        Kind::CharDevice => b'c',
        Kind::BlockDevice => b'b',
    }
}

fn kind_from_code(code: u8) -> Option<Kind> {
    Some(match code {
        b'f' => Kind::File,
        b'd' => Kind::Dir,
        b'l' => Kind::Symlink,
        b'p' => Kind::Fifo,
        b's' => Kind::Socket,
        b'c' => Kind::CharDevice,
        b'b' => Kind::BlockDevice,
        _ => return None,
    })
}

fn frame(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        return name.to_vec();
    }
    let mut v = Vec::with_capacity(dir.len() + 1 + name.len());
    v.extend_from_slice(dir);
    v.push(b'/');
    v.extend_from_slice(name);
    v
}

/// `filepath.Join("/", p)` without the leading '/': a context-relative path, `""` for the root.
fn clean_rel(p: &[u8]) -> Vec<u8> {
    let mut rooted = Vec::with_capacity(p.len() + 1);
    rooted.push(b'/');
    rooted.extend_from_slice(p);
    let cleaned = clean_bytes(&rooted);
    cleaned[1..].to_vec()
}

fn components(p: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    p.split(|&b| b == b'/').filter(|c| !c.is_empty())
}

impl Context {
    /// Hash the context at `root`, keeping every entry.
    pub fn hash(
        root: &Path,
        dockerignore: Option<DockerIgnore>,
        stat_cache: Option<PathBuf>,
    ) -> Result<Context, HashError> {
        let filter = match dockerignore {
            Some(d) if !d.is_empty() => Filter::Docker(d),
            _ => Filter::All,
        };
        let opts = Options {
            filter,
            stat_cache,
            include_entries: true,
        };
        let t = hash::hash_tree(root, &opts)?;
        Ok(Context {
            digest: t.digest,
            entries: t.entries.unwrap_or_default(),
            stats: Stats {
                files: t.files,
                dirs: t.dirs,
                symlinks: t.symlinks,
                bytes: t.bytes,
                hashed_files: t.hashed_files,
                cache_hits: t.cache_hits,
            },
        })
    }

    fn find(&self, path: &[u8]) -> Option<usize> {
        self.entries
            .binary_search_by(|e| e.path.as_slice().cmp(path))
            .ok()
    }

    fn kind(&self, node: Node) -> Kind {
        match node {
            Node::Root => Kind::Dir,
            Node::At(i) => self.entries[i].kind,
        }
    }

    fn node_path(&self, node: Node) -> &[u8] {
        match node {
            Node::Root => b"",
            Node::At(i) => &self.entries[i].path,
        }
    }

    /// The entries strictly below the directory `dir` (`""`: all of them), as an index range.
    fn below(&self, dir: &[u8]) -> std::ops::Range<usize> {
        if dir.is_empty() {
            return 0..self.entries.len();
        }
        let mut prefix = dir.to_vec();
        prefix.push(b'/');
        let start = self
            .entries
            .partition_point(|e| e.path.as_slice() < prefix.as_slice());
        let len = self.entries[start..].partition_point(|e| e.path.starts_with(&prefix));
        start..start + len
    }

    /// continuity's `fs.RootPath`: walk `path` element by element inside the context, following
    /// symlinks (absolute targets from the context root, `..` stopping at the root); the last
    /// element is followed only when `follow_last`.
    fn resolve(&self, path: &[u8], follow_last: bool) -> Result<Node, SelectError> {
        let mut todo: VecDeque<Vec<u8>> = components(path).map(<[u8]>::to_vec).collect();
        let mut cur: Vec<u8> = Vec::new();
        let mut node = Node::Root;
        let mut links = 0;
        while let Some(comp) = todo.pop_front() {
            match comp.as_slice() {
                b"." => continue,
                b".." => {
                    match cur.iter().rposition(|&b| b == b'/') {
                        Some(i) => cur.truncate(i),
                        None => cur.clear(),
                    }
                    node = if cur.is_empty() {
                        Node::Root
                    } else {
                        Node::At(
                            self.find(&cur)
                                .ok_or_else(|| SelectError::NotFound(cur.clone()))?,
                        )
                    };
                    continue;
                }
                _ => {}
            }
            if self.kind(node) != Kind::Dir {
                return Err(SelectError::NotFound(join(&cur, &comp)));
            }
            let next = join(&cur, &comp);
            let index = self
                .find(&next)
                .ok_or_else(|| SelectError::NotFound(next.clone()))?;
            let entry = &self.entries[index];
            if entry.kind == Kind::Symlink && (follow_last || !todo.is_empty()) {
                links += 1;
                if links > MAX_LINKS {
                    return Err(SelectError::Loop(next));
                }
                let target = entry.link_target.clone().unwrap_or_default();
                if target.first() == Some(&b'/') {
                    cur.clear();
                    node = Node::Root;
                }
                for c in components(&target).rev() {
                    todo.push_front(c.to_vec());
                }
                continue;
            }
            cur = next;
            node = Node::At(index);
        }
        Ok(node)
    }

    /// The matches of `source` as paths (not yet followed) with the nodes they resolve to.
    fn matches(
        &self,
        source: &str,
        opts: &SelectOptions,
    ) -> Result<Vec<(Vec<u8>, Node)>, SelectError> {
        let cleaned = clean_rel(source.as_bytes());
        let parts: Vec<&[u8]> = components(&cleaned).collect();
        let wild = if opts.wildcards {
            parts.iter().position(|p| contains_wildcards(p))
        } else {
            None
        };
        let Some(split) = wild else {
            let node = self.resolve(&cleaned, true)?;
            return Ok(vec![(cleaned, node)]);
        };
        let literal = parts[..split].join(&b'/');
        let pattern = parts[split..].join(&b'/');
        // Reject a malformed pattern even when nothing is there to match it against.
        go_match(&pattern, b"").map_err(|_| SelectError::BadPattern(source.to_string()))?;
        let base = self.resolve(&literal, true)?;
        if self.kind(base) != Kind::Dir {
            return Ok(Vec::new());
        }
        let base_path = self.node_path(base).to_vec();
        let range = self.below(&base_path);
        let skip_len = if base_path.is_empty() {
            0
        } else {
            base_path.len() + 1
        };
        // Without a class, '/' in a name can only match a '/' in the pattern.
        let slashes =
            (!pattern.contains(&b'[')).then(|| pattern.iter().filter(|&&b| b == b'/').count());
        let mut matched_dirs: HashSet<&[u8]> = HashSet::new();
        let mut out = Vec::new();
        for index in range {
            let entry = &self.entries[index];
            let rel = &entry.path[skip_len..];
            if let Some(n) = slashes {
                if rel.iter().filter(|&&b| b == b'/').count() != n {
                    continue;
                }
            } else if rel
                .iter()
                .enumerate()
                .any(|(i, &b)| b == b'/' && matched_dirs.contains(&rel[..i]))
            {
                continue; // below a matched directory: filepath.SkipDir
            }
            let hit =
                go_match(&pattern, rel).map_err(|_| SelectError::BadPattern(source.to_string()))?;
            if !hit {
                continue;
            }
            if entry.kind == Kind::Dir {
                matched_dirs.insert(rel);
            }
            let shown = join(&literal, rel);
            let node = self.resolve(&shown, true)?;
            out.push((shown, node));
        }
        Ok(out)
    }

    /// Resolve `source` and digest what it selects.
    pub fn select(&self, source: &str, opts: &SelectOptions) -> Result<Selection, SelectError> {
        let found = self.matches(source, opts)?;
        let mut h = blake3::Hasher::new();
        h.update(SELECT_TAG);
        let mut matches = Vec::with_capacity(found.len());
        let mut files = 0;
        let mut kept: Vec<(Vec<u8>, Node)> = Vec::with_capacity(found.len());
        for (path, node) in found {
            if let (Some(ex), Kind::File) = (&opts.exclude, self.kind(node)) {
                let name = path.rsplit(|&b| b == b'/').next().unwrap_or(&path);
                if ex.matches(name) {
                    continue;
                }
            }
            kept.push((path, node));
        }
        h.update(&(kept.len() as u64).to_le_bytes());
        for (path, node) in kept {
            let kind = self.kind(node);
            frame(&mut h, &path);
            h.update(&[kind_code(kind)]);
            let (digest, executable) = match node {
                Node::Root => (self.digest, false),
                Node::At(i) => (self.entries[i].digest, self.entries[i].executable),
            };
            h.update(&[executable as u8]);
            match (&opts.exclude, kind) {
                (Some(ex), Kind::Dir) => {
                    let (d, n) = self.excluded_digest(node, ex);
                    h.update(&d);
                    files += n;
                }
                _ => {
                    h.update(&digest);
                    files += match kind {
                        Kind::File => 1,
                        Kind::Dir => self.files_below(node),
                        _ => 0,
                    };
                }
            }
            matches.push(Match { path, kind });
        }
        Ok(Selection {
            digest: *h.finalize().as_bytes(),
            matches,
            files,
        })
    }

    fn files_below(&self, dir: Node) -> u64 {
        if let Node::Root = dir {
            return self.stats.files;
        }
        let range = self.below(self.node_path(dir));
        self.entries[range]
            .iter()
            .filter(|e| e.kind == Kind::File)
            .count() as u64
    }

    /// The entries below `dir` that `--exclude` leaves, with paths relative to `dir`.
    fn kept_below<'a>(&'a self, dir: Node, exclude: Option<&DockerIgnore>) -> Vec<Covered<'a>> {
        let base = self.node_path(dir);
        let skip = if base.is_empty() { 0 } else { base.len() + 1 };
        self.entries[self.below(base)]
            .iter()
            .map(|e| Covered {
                path: e.path[skip..].to_vec(),
                entry: e,
            })
            .filter(|c| match exclude {
                Some(ex) => !ex.matches(&c.path),
                None => true,
            })
            .collect()
    }

    /// A directory with exclusions: a flat digest of what remains (its Merkle digest would
    /// cover the excluded files too), and how many files that is.
    fn excluded_digest(&self, dir: Node, exclude: &DockerIgnore) -> ([u8; 32], u64) {
        let mut h = blake3::Hasher::new();
        h.update(EXCLUDE_TAG);
        let mut files = 0;
        for c in self.kept_below(dir, Some(exclude)) {
            let e = c.entry;
            frame(&mut h, &c.path);
            h.update(&[kind_code(e.kind), e.executable as u8]);
            if e.kind != Kind::Dir {
                h.update(&e.digest);
            }
            if let Some(t) = &e.link_target {
                frame(&mut h, t);
            }
            files += (e.kind == Kind::File) as u64;
        }
        (*h.finalize().as_bytes(), files)
    }

    /// Every path a selection covers, context-relative as the source names them (a followed
    /// symlink keeps its own name), sorted: the matches and everything below matched dirs.
    fn covered(&self, source: &str, opts: &SelectOptions) -> Result<Vec<Covered<'_>>, SelectError> {
        let mut out = Vec::new();
        for (path, node) in self.matches(source, opts)? {
            let kind = self.kind(node);
            if let (Some(ex), Kind::File) = (&opts.exclude, kind) {
                let name = path.rsplit(|&b| b == b'/').next().unwrap_or(&path);
                if ex.matches(name) {
                    continue;
                }
            }
            if let Node::At(i) = node {
                if kind != Kind::Dir {
                    out.push(Covered {
                        path,
                        entry: &self.entries[i],
                    });
                    continue;
                }
            }
            for c in self.kept_below(node, opts.exclude.as_ref()) {
                out.push(Covered {
                    path: join(&path, &c.path),
                    entry: c.entry,
                });
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out.dedup_by(|a, b| a.path == b.path);
        Ok(out)
    }

    /// How the paths `source` covers differ from `self` (an earlier build) to `new`: at most
    /// `limit` changes in path order, and how many there are in all. A directory counts as
    /// changed only when it appears or disappears; its contents speak for themselves.
    pub fn diff(
        &self,
        new: &Context,
        source: &str,
        opts: &SelectOptions,
        limit: usize,
    ) -> Result<Diff, SelectError> {
        let old = match self.covered(source, opts) {
            Ok(c) => c,
            Err(SelectError::NotFound(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        let new = new.covered(source, opts)?;
        let same = |a: &Entry, b: &Entry| {
            a.kind == b.kind
                && a.executable == b.executable
                && a.link_target == b.link_target
                && (a.kind == Kind::Dir || a.digest == b.digest)
        };
        let mut out = Vec::new();
        let mut total = 0u64;
        let mut push = |path: &[u8], change: Change| {
            total += 1;
            if out.len() < limit {
                out.push((path.to_vec(), change));
            }
        };
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < new.len() {
            let order = match (old.get(i), new.get(j)) {
                (Some(a), Some(b)) => a.path.cmp(&b.path),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    push(&old[i].path, Change::Removed);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    push(&new[j].path, Change::Added);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    if !same(old[i].entry, new[j].entry) {
                        push(&new[j].path, Change::Modified);
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok((out, total))
    }

    // -- listing -------------------------------------------------------------------------------

    /// The entry list as bytes: magic, root digest, count, then per entry its framed path,
    /// type, executable bit, digest, size and optional symlink target.
    pub fn listing(&self) -> Vec<u8> {
        let approx = self
            .entries
            .iter()
            .map(|e| e.path.len() + 56)
            .sum::<usize>();
        let mut out = Vec::with_capacity(LISTING_MAGIC.len() + 40 + approx);
        out.extend_from_slice(LISTING_MAGIC);
        out.extend_from_slice(&self.digest);
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&(e.path.len() as u32).to_le_bytes());
            out.extend_from_slice(&e.path);
            out.push(kind_code(e.kind));
            out.push(e.executable as u8);
            out.extend_from_slice(&e.digest);
            out.extend_from_slice(&e.size.to_le_bytes());
            match &e.link_target {
                Some(t) => {
                    out.push(1);
                    out.extend_from_slice(&(t.len() as u32).to_le_bytes());
                    out.extend_from_slice(t);
                }
                None => out.push(0),
            }
        }
        out
    }

    /// Read back what `listing` wrote; anything malformed is an error, never a panic.
    pub fn from_listing(data: &[u8]) -> Result<Context, ListingError> {
        let mut r = Reader { data, pos: 0 };
        if r.take(LISTING_MAGIC.len())? != LISTING_MAGIC {
            return Err(ListingError::Corrupt("not a memobuild.listing.v1"));
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(r.take(32)?);
        let count = r.u64()?;
        // Each entry takes at least 47 bytes: refuse counts the data cannot hold.
        if count > (data.len() as u64) / 47 {
            return Err(ListingError::Corrupt("entry count larger than the data"));
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(count as usize);
        let mut stats = Stats::default();
        for _ in 0..count {
            let len = r.u32()? as usize;
            let path = r.take(len)?.to_vec();
            let kind = kind_from_code(r.take(1)?[0]).ok_or(ListingError::Corrupt("bad type"))?;
            let executable = match r.take(1)?[0] {
                0 => false,
                1 => true,
                _ => return Err(ListingError::Corrupt("bad executable flag")),
            };
            let mut d = [0u8; 32];
            d.copy_from_slice(r.take(32)?);
            let size = r.u64()?;
            let link_target = match r.take(1)?[0] {
                0 => None,
                1 => {
                    let n = r.u32()? as usize;
                    Some(r.take(n)?.to_vec())
                }
                _ => return Err(ListingError::Corrupt("bad symlink flag")),
            };
            if path.is_empty() || entries.last().is_some_and(|p| p.path >= path) {
                return Err(ListingError::Corrupt("paths not sorted"));
            }
            match kind {
                Kind::File => {
                    stats.files += 1;
                    stats.bytes += size;
                }
                Kind::Dir => stats.dirs += 1,
                Kind::Symlink => stats.symlinks += 1,
                _ => {}
            }
            entries.push(Entry {
                path,
                kind,
                digest: d,
                executable,
                size,
                link_target,
            });
        }
        if r.pos != data.len() {
            return Err(ListingError::Corrupt("trailing bytes"));
        }
        Ok(Context {
            digest,
            entries,
            stats,
        })
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ListingError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(ListingError::Corrupt("truncated"))?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, ListingError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, ListingError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn go_match_agrees_with_go() {
        // Go's path/filepath match_test.go table.
        let ok: &[(&str, &str, bool)] = &[
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", false),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("a[^a][^a][^a]b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "x", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "x", true),
            ("[\\-x]", "-", true),
            ("[\\-x]", "a", false),
            ("*x", "xxx", true),
            ("*.go", ".hidden.go", true),
        ];
        for (p, n, want) in ok {
            assert_eq!(go_match(p.as_bytes(), n.as_bytes()), Ok(*want), "{p} {n}");
        }
        let bad: &[(&str, &str)] = &[
            ("[]a]", "]"),
            ("[-]", "-"),
            ("[x-]", "x"),
            ("[x-]", "-"),
            ("[x-]", "z"),
            ("[-x]", "x"),
            ("[-x]", "-"),
            ("[-x]", "a"),
            ("\\", "a"),
            ("[a-b-c]", "a"),
            ("[", "a"),
            ("[^", "a"),
            ("[^bc", "a"),
            ("a[", "a"),
            ("a[", "ab"),
            ("a[", "x"),
            ("a/b[", "x"),
        ];
        for (p, n) in bad {
            assert_eq!(
                go_match(p.as_bytes(), n.as_bytes()),
                Err(BadPattern),
                "{p} {n}"
            );
        }
    }

    #[test]
    fn wildcards_are_detected_unless_escaped() {
        assert!(contains_wildcards(b"*.txt"));
        assert!(contains_wildcards(b"a?"));
        assert!(contains_wildcards(b"[ab]"));
        assert!(!contains_wildcards(b"a\\*b"));
        assert!(!contains_wildcards(b"plain/path"));
    }

    fn sample(root: &Path) {
        fs::create_dir_all(root.join("src/pkg")).unwrap();
        fs::create_dir_all(root.join("docs")).unwrap();
        fs::write(root.join("a.txt"), "a").unwrap();
        fs::write(root.join("b.txt"), "b").unwrap();
        fs::write(root.join("c.md"), "c").unwrap();
        fs::write(root.join("src/main.go"), "package main").unwrap();
        fs::write(root.join("src/pkg/x.go"), "package pkg").unwrap();
        fs::write(root.join("src/pkg/x_test.go"), "package pkg // test").unwrap();
        fs::write(root.join("docs/guide.md"), "guide").unwrap();
        symlink("src/main.go", root.join("main-link")).unwrap();
        symlink("src", root.join("src-link")).unwrap();
        symlink("/../../src/pkg", root.join("escape-link")).unwrap();
        symlink("loop-b", root.join("loop-a")).unwrap();
        symlink("loop-a", root.join("loop-b")).unwrap();
    }

    fn context(root: &Path) -> Context {
        Context::hash(root, None, None).unwrap()
    }

    fn select(c: &Context, source: &str) -> Selection {
        c.select(source, &SelectOptions::new(true, &[]).unwrap())
            .unwrap()
    }

    fn paths(s: &Selection) -> Vec<String> {
        s.matches
            .iter()
            .map(|m| String::from_utf8_lossy(&m.path).into_owned())
            .collect()
    }

    #[test]
    fn sources_resolve_like_docker() {
        let t = tempfile::tempdir().unwrap();
        sample(t.path());
        let c = context(t.path());
        let root = select(&c, ".");
        assert_eq!(paths(&root), vec![""]);
        assert_eq!(root.files, 7);
        for same in ["/", "./", "..", "../../.", ""] {
            assert_eq!(select(&c, same).digest, root.digest, "{same}");
        }
        assert_eq!(select(&c, "src/").digest, select(&c, "/src").digest);
        assert_eq!(select(&c, "src").files, 3);
        assert_eq!(paths(&select(&c, "*.txt")), vec!["a.txt", "b.txt"]);
        assert_eq!(
            paths(&select(&c, "src/*/x*.go")),
            vec!["src/pkg/x.go", "src/pkg/x_test.go"]
        );
        assert_eq!(paths(&select(&c, "s*")), vec!["src", "src-link"]);
        assert!(
            select(&c, "*.none").matches.is_empty(),
            "an empty wildcard is fine"
        );
        // Symlinks are followed inside the context, on the way and at the end.
        let via_link = select(&c, "main-link");
        assert_eq!(via_link.matches[0].kind, Kind::File);
        assert_eq!(select(&c, "src-link/pkg").files, 2);
        assert_eq!(
            select(&c, "escape-link").files,
            2,
            "absolute targets start at the root"
        );
        assert!(matches!(
            c.select("missing", &SelectOptions::default()),
            Err(SelectError::NotFound(_))
        ));
        assert!(matches!(
            c.select("a.txt/x", &SelectOptions::default()),
            Err(SelectError::NotFound(_))
        ));
        assert!(matches!(
            c.select("loop-a", &SelectOptions::default()),
            Err(SelectError::Loop(_))
        ));
        assert!(matches!(
            c.select("src/[", &SelectOptions::new(true, &[]).unwrap()),
            Err(SelectError::BadPattern(_))
        ));
        // Without wildcard expansion (bind mounts), '*' is part of the name.
        assert!(matches!(
            c.select("*.txt", &SelectOptions::default()),
            Err(SelectError::NotFound(_))
        ));
    }

    #[test]
    fn a_selection_digest_covers_exactly_what_it_matches() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        sample(root);
        let before = context(root);
        fs::write(root.join("c.md"), "changed").unwrap();
        let after = context(root);
        assert_ne!(before.digest, after.digest);
        for unaffected in ["*.txt", "src", "src/pkg/x.go", "main-link"] {
            assert_eq!(
                select(&before, unaffected).digest,
                select(&after, unaffected).digest,
                "{unaffected}"
            );
        }
        assert_ne!(
            select(&before, "*.md").digest,
            select(&after, "*.md").digest
        );
        fs::set_permissions(root.join("a.txt"), fs::Permissions::from_mode(0o755)).unwrap();
        assert_ne!(
            select(&after, "a.txt").digest,
            select(&context(root), "a.txt").digest
        );
        fs::write(root.join("d.txt"), "d").unwrap();
        let added = context(root);
        assert_ne!(
            select(&after, "*.txt").digest,
            select(&added, "*.txt").digest
        );
    }

    #[test]
    fn excludes_leave_out_what_they_match() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        sample(root);
        let opts = SelectOptions::new(true, &["*_test.go".to_string()]).unwrap();
        let ex = |c: &Context, s: &str| c.select(s, &opts).unwrap();
        let before = context(root);
        assert_eq!(ex(&before, "src/pkg").files, 1);
        fs::write(root.join("src/pkg/x_test.go"), "changed").unwrap();
        let after = context(root);
        assert_eq!(ex(&before, "src/pkg").digest, ex(&after, "src/pkg").digest);
        assert_ne!(
            select(&before, "src/pkg").digest,
            select(&after, "src/pkg").digest
        );
        let txt = SelectOptions::new(true, &["b.*".to_string()]).unwrap();
        let kept = after.select("*.txt", &txt).unwrap();
        assert_eq!(paths(&kept), vec!["a.txt"]);
        assert!(matches!(
            SelectOptions::new(true, &["!".to_string()]),
            Err(SelectError::Exclude(_))
        ));
    }

    #[test]
    fn dockerignore_applies_before_matching() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        sample(root);
        let ignore = DockerIgnore::new(&["*.md".to_string(), "src/pkg".to_string()]).unwrap();
        let c = Context::hash(root, Some(ignore), None).unwrap();
        assert!(select(&c, "*.md").matches.is_empty());
        assert!(matches!(
            c.select("src/pkg/x.go", &SelectOptions::default()),
            Err(SelectError::NotFound(_))
        ));
        assert_eq!(select(&c, "src").files, 1);
    }

    #[test]
    fn listing_round_trips_and_diff_names_the_changes() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        sample(root);
        let before = context(root);
        let bytes = before.listing();
        let back = Context::from_listing(&bytes).unwrap();
        assert_eq!(back.digest, before.digest);
        assert_eq!(back.entries, before.entries);
        assert_eq!(back.stats.files, before.stats.files);
        assert_eq!(select(&back, "src").digest, select(&before, "src").digest);

        fs::write(root.join("src/main.go"), "package main // edited").unwrap();
        fs::write(root.join("src/new.go"), "package main").unwrap();
        fs::remove_file(root.join("src/pkg/x_test.go")).unwrap();
        fs::write(root.join("c.md"), "unrelated").unwrap();
        let after = context(root);
        let opts = SelectOptions::new(true, &[]).unwrap();
        let (changes, total) = back.diff(&after, "src/", &opts, 10).unwrap();
        let named: Vec<(String, &str)> = changes
            .iter()
            .map(|(p, c)| (String::from_utf8_lossy(p).into_owned(), c.name()))
            .collect();
        assert_eq!(
            named,
            vec![
                ("src/main.go".to_string(), "modified"),
                ("src/new.go".to_string(), "added"),
                ("src/pkg/x_test.go".to_string(), "removed"),
            ]
        );
        assert_eq!(total, 3);
        let (limited, total) = back.diff(&after, "src", &opts, 1).unwrap();
        assert_eq!((limited.len(), total), (1, 3));
        let (none, total) = back.diff(&after, "*.txt", &opts, 10).unwrap();
        assert!(none.is_empty() && total == 0);

        for bad in [
            &b""[..],
            &bytes[..bytes.len() - 1],
            b"memobuild.listing.v1\0xx",
        ] {
            assert!(Context::from_listing(bad).is_err());
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Context::from_listing(&trailing).is_err());
    }
}
