//! OCI layer blobs: a deterministic tar writer and a safe unpacker.
//!
//! Writing. Entries come from [`snapshot::diff`] in their final order (depth-first, children by
//! name bytes, each directory's whiteouts first). Each entry is a POSIX ustar header, preceded
//! by a PAX extended header (`x`, named `././@PaxHeader`, records sorted by key) only when a
//! field does not fit ustar: `path`/`linkpath` (longer than 100 bytes or not ASCII, with
//! `hdrcharset=BINARY` when not UTF-8), `uid`/`gid`/`size`/`mtime` out of octal range, and one
//! `SCHILY.xattr.<name>` record per extended attribute. Header fields are the file's own: mode
//! (`& 0o7777`), uid, gid, size, mtime in whole seconds (clamped to `SOURCE_DATE_EPOCH` when
//! set); uname/gname, atime and ctime are never written. Directories end in `/`; the second and
//! later paths of an inode with several links are hard-link entries naming the first. Deletions
//! are empty regular files `.wh.<name>`, an opaque directory holds `.wh..wh..opq` (mode 0,
//! owner 0, mtime 0). The archive ends with two zero blocks.
//!
//! The tar is gzip-compressed in independent 1 MiB blocks (like `pigz --independent`): each
//! block is raw deflate at a fixed level ending in a sync flush, the last one finished, so the
//! blocks compress in parallel and the bytes depend only on the tar, never on the thread
//! count. The gzip header is fixed (no name, mtime 0, OS 255). sha256 of the tar (the diff_id)
//! and of the compressed blob (the digest) are computed as the bytes go by.
//!
//! Unpacking. Gzip or plain tar (autodetected). Entries are applied in order with OCI whiteout
//! semantics (`.wh.<name>` deletes, `.wh..wh..opq` empties the directory of everything this
//! layer did not create, an entry replaces a path of another type, a directory merges into a
//! directory). Every path is opened component by component from the root with `O_NOFOLLOW`, so
//! nothing is ever written, linked or deleted through a symlink; absolute names, `..`, hard
//! links leaving the root, device nodes without `CAP_MKNOD`, oversized extended headers, and
//! archives expanding past the byte or entry limits are refused, each naming the entry. When not
//! root, ownership is left alone and setuid/setgid bits are dropped.

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::bufread::MultiGzDecoder;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{
    self as rfs, AtFlags, Dir, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags,
};
use rustix::io::Errno;
use rustix::process::{Gid, Uid};
use sha2::{Digest as _, Sha256};

use crate::snapshot::{
    self, join_rel, Change, Kind, Meta, Snapshot, SnapshotError, MAX_DEPTH, OPAQUE_MARKER,
    WHITEOUT_PREFIX,
};

/// Default bound on the expanded (uncompressed tar) size of one layer.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 30;
/// Default bound on the number of entries of one layer.
pub const DEFAULT_MAX_ENTRIES: u64 = 5_000_000;
/// Compression level of every layer; part of the output format (changing it changes digests).
pub const GZIP_LEVEL: u32 = 6;
/// Uncompressed bytes per independently compressed gzip block; part of the output format.
pub const GZIP_BLOCK: usize = 1 << 20;
/// Entry names (and hard-link targets) longer than this are refused, like PATH_MAX.
pub const MAX_NAME: usize = 4096;
/// Extended headers (PAX, GNU long names) larger than this are refused.
const MAX_EXT_HEADER: u64 = 1 << 20;

const BLOCK: usize = 512;
const OCTAL7: u64 = 0o7777777;
const OCTAL11: u64 = 0o77777777777;
const COPY_BUF: usize = 256 * 1024;

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

#[derive(Debug)]
pub enum LayerError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// Applying the entry could reach outside the root or grant privileges: refused.
    Refused {
        entry: Vec<u8>,
        reason: String,
    },
    /// The archive is malformed, or a rootfs path cannot be represented in a layer.
    Invalid {
        entry: Vec<u8>,
        reason: String,
    },
    /// The caller asked for something impossible (a snapshot of another directory).
    Usage(String),
}

impl fmt::Display for LayerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerError::Io { path, source } => write!(f, "{}: {}", path.display(), source),
            LayerError::Refused { entry, reason } => {
                write!(
                    f,
                    "refused {:?}: {}",
                    String::from_utf8_lossy(entry),
                    reason
                )
            }
            LayerError::Invalid { entry, reason } => {
                write!(f, "{:?}: {}", String::from_utf8_lossy(entry), reason)
            }
            LayerError::Usage(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for LayerError {}

impl From<SnapshotError> for LayerError {
    fn from(e: SnapshotError) -> Self {
        match e {
            SnapshotError::Io { path, source } => LayerError::Io { path, source },
            SnapshotError::Invalid { path, reason } => LayerError::Invalid {
                entry: path,
                reason,
            },
            e @ SnapshotError::WrongRoot { .. } => LayerError::Usage(e.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, LayerError>;

fn io_at(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> LayerError {
    let path = path.into();
    move |source| LayerError::Io { path, source }
}

/// An entry name for an error message: a hostile archive can make names of a megabyte.
fn entry_name(entry: &[u8]) -> Vec<u8> {
    if entry.len() <= MAX_NAME {
        return entry.to_vec();
    }
    let mut v = entry[..MAX_NAME].to_vec();
    v.extend_from_slice("…".as_bytes());
    v
}

fn refused(entry: &[u8], reason: impl Into<String>) -> LayerError {
    LayerError::Refused {
        entry: entry_name(entry),
        reason: reason.into(),
    }
}

fn invalid(entry: &[u8], reason: impl Into<String>) -> LayerError {
    LayerError::Invalid {
        entry: entry_name(entry),
        reason: reason.into(),
    }
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

fn abs(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

// ------------------------------------------------------------------------------------------
// Writing
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, Default)]
pub struct WriteOptions {
    /// Clamp every mtime to at most this many seconds since the epoch.
    pub source_date_epoch: Option<i64>,
}

/// What was written: the OCI descriptor facts of the blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    /// `sha256:<hex>` of the compressed blob.
    pub digest: String,
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    /// Size of the compressed blob in bytes.
    pub size: u64,
    /// Tar entries (PAX headers not counted).
    pub entries: u64,
}

/// One tar entry to encode.
struct TarHeader<'a> {
    name: &'a [u8],
    typeflag: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: i64,
    link: &'a [u8],
    dev: (u32, u32),
    xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

fn octal(field: &mut [u8], v: u64) {
    let width = field.len() - 1;
    let s = format!("{v:0width$o}");
    debug_assert_eq!(s.len(), width, "caller checks the range");
    field[..width].copy_from_slice(s.as_bytes());
    field[width] = 0;
}

/// A name for the fixed-size ustar field when the real one lives in a PAX record: ASCII only,
/// truncated. Readers use the PAX record; this keeps the header deterministic and harmless.
fn put_name(field: &mut [u8], name: &[u8]) {
    for (dst, &src) in field.iter_mut().zip(name) {
        *dst = if src.is_ascii() { src } else { b'?' };
    }
}

#[allow(clippy::too_many_arguments)]
fn ustar_block(
    name: &[u8],
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    typeflag: u8,
    link: &[u8],
    dev: (u32, u32),
) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    put_name(&mut b[0..100], name);
    octal(&mut b[100..108], u64::from(mode));
    octal(&mut b[108..116], uid);
    octal(&mut b[116..124], gid);
    octal(&mut b[124..136], size);
    octal(&mut b[136..148], mtime);
    b[148..156].copy_from_slice(b"        ");
    b[156] = typeflag;
    put_name(&mut b[157..257], link);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    octal(&mut b[329..337], u64::from(dev.0));
    octal(&mut b[337..345], u64::from(dev.1));
    let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
    let s = format!("{sum:06o}");
    b[148..154].copy_from_slice(s.as_bytes());
    b[154] = 0;
    b[155] = b' ';
    b
}

fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    // "<len> <key>=<value>\n", where <len> counts the whole record, its own digits included.
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while base + len.to_string().len() != len {
        len = base + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn padding(n: u64) -> usize {
    ((BLOCK as u64 - n % BLOCK as u64) % BLOCK as u64) as usize
}

/// Append the header blocks of `h` (PAX header and data first when needed) to `out`.
fn encode_header(h: &TarHeader<'_>, out: &mut Vec<u8>) {
    let needs_pax = |s: &[u8]| s.len() > 100 || !s.is_ascii();
    let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut binary = false;
    if needs_pax(h.name) {
        binary |= std::str::from_utf8(h.name).is_err();
        pax.push((b"path".to_vec(), h.name.to_vec()));
    }
    if needs_pax(h.link) {
        binary |= std::str::from_utf8(h.link).is_err();
        pax.push((b"linkpath".to_vec(), h.link.to_vec()));
    }
    if binary {
        pax.push((b"hdrcharset".to_vec(), b"BINARY".to_vec()));
    }
    let (uid, gid) = (
        if h.uid > OCTAL7 { 0 } else { h.uid },
        if h.gid > OCTAL7 { 0 } else { h.gid },
    );
    if h.uid > OCTAL7 {
        pax.push((b"uid".to_vec(), h.uid.to_string().into_bytes()));
    }
    if h.gid > OCTAL7 {
        pax.push((b"gid".to_vec(), h.gid.to_string().into_bytes()));
    }
    let size = if h.size > OCTAL11 {
        pax.push((b"size".to_vec(), h.size.to_string().into_bytes()));
        0
    } else {
        h.size
    };
    let mtime = match u64::try_from(h.mtime) {
        Ok(m) if m <= OCTAL11 => m,
        _ => {
            pax.push((b"mtime".to_vec(), h.mtime.to_string().into_bytes()));
            0
        }
    };
    for (k, v) in h.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(k);
        pax.push((key, v.clone()));
    }
    if !pax.is_empty() {
        pax.sort();
        let mut data = Vec::new();
        for (k, v) in &pax {
            pax_record(&mut data, k, v);
        }
        out.extend_from_slice(&ustar_block(
            b"././@PaxHeader",
            0,
            0,
            0,
            data.len() as u64,
            0,
            b'x',
            b"",
            (0, 0),
        ));
        let pad = padding(data.len() as u64);
        out.extend_from_slice(&data);
        out.resize(out.len() + pad, 0);
    }
    out.extend_from_slice(&ustar_block(
        h.name, h.mode, uid, gid, size, mtime, h.typeflag, h.link, h.dev,
    ));
}

/// Raw deflate of one block: a sync flush ends a middle block on a byte boundary so the next
/// independently compressed block can follow it; the last block is finished.
fn deflate_block(input: &[u8], last: bool) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(Compression::new(GZIP_LEVEL), false);
    let mut out = Vec::with_capacity(input.len() + input.len() / 8 + 64);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    loop {
        let consumed = c.total_in() as usize;
        let status = c
            .compress_vec(&input[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let done = if last {
            status == Status::StreamEnd
        } else {
            c.total_in() as usize == input.len() && out.len() < out.capacity()
        };
        if done {
            return Ok(out);
        }
        out.reserve(out.capacity().max(4096));
    }
}

/// Takes tar bytes; writes the gzip blob to `out`, hashing both sides.
struct GzipSink<W: Write> {
    out: W,
    blob_hash: Sha256,
    blob_len: u64,
    tar_hash: Sha256,
    tar_len: u64,
    crc: Crc,
    pending: Vec<u8>,
    /// Blocks gathered before compressing them in parallel; only affects speed, not output.
    batch: usize,
}

impl<W: Write> GzipSink<W> {
    fn new(out: W) -> io::Result<Self> {
        let xfl = match GZIP_LEVEL {
            9.. => 2,
            0 | 1 => 4,
            _ => 0,
        };
        let mut s = GzipSink {
            out,
            blob_hash: Sha256::new(),
            blob_len: 0,
            tar_hash: Sha256::new(),
            tar_len: 0,
            crc: Crc::new(),
            pending: Vec::new(),
            batch: (2 * rayon::current_num_threads()).max(2),
        };
        s.emit(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255])?;
        Ok(s)
    }

    fn emit(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.blob_hash.update(bytes);
        self.blob_len += bytes.len() as u64;
        self.out.write_all(bytes)
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.tar_hash.update(data);
        self.crc.update(data);
        self.tar_len += data.len() as u64;
        self.pending.extend_from_slice(data);
        if self.pending.len() >= self.batch * GZIP_BLOCK {
            self.compress_full_blocks()?;
        }
        Ok(())
    }

    fn compress_full_blocks(&mut self) -> io::Result<()> {
        let full = self.pending.len() / GZIP_BLOCK * GZIP_BLOCK;
        if full == 0 {
            return Ok(());
        }
        let blocks: Vec<Vec<u8>> = self.pending[..full]
            .par_chunks(GZIP_BLOCK)
            .map(|c| deflate_block(c, false))
            .collect::<io::Result<_>>()?;
        for b in blocks {
            self.emit(&b)?;
        }
        self.pending.drain(..full);
        Ok(())
    }

    /// Returns (writer, blob digest, tar digest, blob size).
    fn finish(mut self) -> io::Result<(W, [u8; 32], [u8; 32], u64)> {
        self.compress_full_blocks()?;
        let last = deflate_block(&self.pending, true)?;
        self.emit(&last)?;
        let crc = self.crc.sum().to_le_bytes();
        self.emit(&crc)?;
        let isize = (self.tar_len as u32).to_le_bytes();
        self.emit(&isize)?;
        self.out.flush()?;
        Ok((
            self.out,
            self.blob_hash.finalize().into(),
            self.tar_hash.finalize().into(),
            self.blob_len,
        ))
    }
}

/// Extended attributes of `path` (not following a final symlink), sorted by name. Labels the
/// host assigns (`security.selinux`) and overlayfs bookkeeping are not part of a layer.
fn read_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut names = Vec::new();
    loop {
        let n = match rfs::llistxattr_query(path) {
            Ok(0) => return Ok(Vec::new()),
            Ok(n) => n,
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        names.resize(n, 0);
        match rfs::llistxattr(path, &mut names[..]) {
            Ok(n) => {
                names.truncate(n);
                break;
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if name == b"security.selinux"
            || name.starts_with(b"trusted.overlay.")
            || name.starts_with(b"user.overlay.")
        {
            continue;
        }
        let mut value = Vec::new();
        loop {
            let n = match rfs::lgetxattr_query(path, name) {
                Ok(n) => n,
                Err(Errno::NODATA) => break,
                Err(e) => return Err(e.into()),
            };
            value.resize(n, 0);
            match rfs::lgetxattr(path, name, &mut value[..]) {
                Ok(n) => {
                    value.truncate(n);
                    out.push((name.to_vec(), std::mem::take(&mut value)));
                    break;
                }
                Err(Errno::RANGE) => continue,
                Err(Errno::NODATA) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    out.sort();
    Ok(out)
}

fn clamp_mtime(mtime_ns: i64, epoch: Option<i64>) -> i64 {
    let secs = mtime_ns.div_euclid(1_000_000_000);
    match epoch {
        Some(e) if secs > e => e,
        _ => secs,
    }
}

fn typeflag(kind: Kind) -> u8 {
    match kind {
        Kind::File => b'0',
        Kind::Dir => b'5',
        Kind::Symlink => b'2',
        Kind::Fifo => b'6',
        Kind::CharDevice => b'3',
        Kind::BlockDevice => b'4',
    }
}

static PARTIAL: AtomicU64 = AtomicU64::new(0);

fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".{}.{}.partial",
        std::process::id(),
        PARTIAL.fetch_add(1, Ordering::Relaxed)
    ));
    out.with_file_name(name)
}

/// Write the layer of `before` → the tree at `root` now to `out`.
pub fn write_diff_layer(
    root: &Path,
    before: &Snapshot,
    out: &Path,
    opts: &WriteOptions,
    exclude: &[Vec<u8>],
) -> Result<LayerInfo> {
    let changes = snapshot::diff(root, Some(before), exclude)?;
    write_changes(root, &changes, out, opts)
}

/// Write the whole tree at `root` as one layer to `out`.
pub fn write_tree_layer(root: &Path, out: &Path, opts: &WriteOptions) -> Result<LayerInfo> {
    let changes = snapshot::diff(root, None, &[])?;
    write_changes(root, &changes, out, opts)
}

/// Write `changes` (paths relative to `root`, in layer order) as a gzip layer blob to `out`,
/// through a temporary file in the same directory renamed into place at the end.
pub fn write_changes(
    root: &Path,
    changes: &[Change],
    out: &Path,
    opts: &WriteOptions,
) -> Result<LayerInfo> {
    let root_fd = snapshot::open_root(root).map_err(io_at(root))?;
    let root = fs::canonicalize(root).map_err(io_at(root))?;
    through_partial(out, |file| {
        write_into(&root, root_fd, changes, file, out, opts)
    })
}

/// Run `write` on a new temporary file next to `out`, renamed to `out` when it succeeds and
/// removed when it fails.
fn through_partial(out: &Path, write: impl FnOnce(File) -> Result<LayerInfo>) -> Result<LayerInfo> {
    let tmp = partial_path(out);
    let file = File::create(&tmp).map_err(io_at(out))?;
    let result = write(file);
    match result {
        Ok(info) => {
            fs::rename(&tmp, out).map_err(|e| {
                let _ = fs::remove_file(&tmp);
                io_at(out)(e)
            })?;
            Ok(info)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn write_into(
    root: &Path,
    root_fd: OwnedFd,
    changes: &[Change],
    file: File,
    out: &Path,
    opts: &WriteOptions,
) -> Result<LayerInfo> {
    // Errors writing the blob name the blob the caller asked for, not its temporary name.
    let sink_err = |e: io::Error| LayerError::Io {
        path: out.to_path_buf(),
        source: e,
    };
    let mut sink = GzipSink::new(BufWriter::with_capacity(1 << 20, file)).map_err(sink_err)?;
    let mut cursor = Cursor::new(root_fd);
    let mut links: FxHashMap<(u64, u64), &[u8]> = FxHashMap::default();
    let mut hdr = Vec::with_capacity(4 * BLOCK);
    let mut buf = vec![0u8; COPY_BUF];
    let mut entries = 0u64;
    for change in changes {
        hdr.clear();
        entries += 1;
        match change {
            Change::Whiteout { path } | Change::Opaque { dir: path } => {
                let (dir, base) = match path.iter().rposition(|&b| b == b'/') {
                    Some(i) => (&path[..i], &path[i + 1..]),
                    None => (&b""[..], &path[..]),
                };
                let name = match change {
                    Change::Opaque { .. } => join_rel(path, OPAQUE_MARKER),
                    _ => {
                        let mut wh = WHITEOUT_PREFIX.to_vec();
                        wh.extend_from_slice(base);
                        join_rel(dir, &wh)
                    }
                };
                encode_header(
                    &TarHeader {
                        name: &name,
                        typeflag: b'0',
                        mode: 0,
                        uid: 0,
                        gid: 0,
                        size: 0,
                        mtime: 0,
                        link: b"",
                        dev: (0, 0),
                        xattrs: &[],
                    },
                    &mut hdr,
                );
                sink.write(&hdr).map_err(sink_err)?;
            }
            Change::Entry { path, meta } => {
                write_entry(
                    root,
                    &mut cursor,
                    &mut links,
                    path,
                    meta,
                    opts,
                    &mut hdr,
                    &mut buf,
                    &mut sink,
                    &sink_err,
                )?;
            }
        }
    }
    sink.write(&[0u8; 2 * BLOCK]).map_err(sink_err)?;
    // Durability is the store's business when it moves the blob into place.
    let (_, digest, diff_id, size) = sink.finish().map_err(sink_err)?;
    Ok(LayerInfo {
        digest: format!("sha256:{}", hex::encode(digest)),
        diff_id: format!("sha256:{}", hex::encode(diff_id)),
        size,
        entries,
    })
}

#[allow(clippy::too_many_arguments)]
fn write_entry<'c, W: Write>(
    root: &Path,
    cursor: &mut Cursor,
    links: &mut FxHashMap<(u64, u64), &'c [u8]>,
    path: &'c [u8],
    meta: &Meta,
    opts: &WriteOptions,
    hdr: &mut Vec<u8>,
    buf: &mut [u8],
    sink: &mut GzipSink<W>,
    sink_err: &dyn Fn(io::Error) -> LayerError,
) -> Result<()> {
    let here = || abs(root, path);
    let mtime = clamp_mtime(meta.mtime_ns, opts.source_date_epoch);
    let mut name = path.to_vec();
    if meta.kind == Kind::Dir {
        name.push(b'/');
    }
    if meta.kind != Kind::Dir && meta.nlink > 1 {
        match links.get(&(meta.dev, meta.ino)) {
            Some(first) => {
                encode_header(
                    &TarHeader {
                        name: &name,
                        typeflag: b'1',
                        mode: meta.mode,
                        uid: u64::from(meta.uid),
                        gid: u64::from(meta.gid),
                        size: 0,
                        mtime,
                        link: first,
                        dev: (0, 0),
                        xattrs: &[],
                    },
                    hdr,
                );
                return sink.write(hdr).map_err(sink_err);
            }
            None => {
                links.insert((meta.dev, meta.ino), path);
            }
        }
    }
    let abs_path = here();
    let xattrs = read_xattrs(&abs_path).map_err(io_at(&abs_path))?;
    let dev = match meta.kind {
        Kind::CharDevice | Kind::BlockDevice => {
            (rfs::major(meta.rdev as _), rfs::minor(meta.rdev as _))
        }
        _ => (0, 0),
    };
    let size = if meta.kind == Kind::File {
        meta.size
    } else {
        0
    };
    encode_header(
        &TarHeader {
            name: &name,
            typeflag: typeflag(meta.kind),
            mode: meta.mode,
            uid: u64::from(meta.uid),
            gid: u64::from(meta.gid),
            size,
            mtime,
            link: meta.target.as_deref().unwrap_or(b""),
            dev,
            xattrs: &xattrs,
        },
        hdr,
    );
    sink.write(hdr).map_err(sink_err)?;
    if meta.kind != Kind::File {
        return Ok(());
    }

    let comps: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    let (base, parent) = comps.split_last().expect("an entry path is never empty");
    let pfd = cursor.dir(parent, false, &mut Vec::new()).map_err(|s| {
        let (i, e) = s.into_io();
        io_at(abs(root, &comps[..=i].join(&b'/')))(e)
    })?;
    let fd = rfs::openat(
        pfd,
        *base,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| io_at(here())(e.into()))?;
    let mut file = File::from(fd);
    let mut left = size;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(invalid(
                    path,
                    "the file shrank while the layer was being written",
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_at(here())(e)),
        };
        sink.write(&buf[..n]).map_err(sink_err)?;
        left -= n as u64;
    }
    if file.read(&mut buf[..1]).map_err(|e| io_at(here())(e))? != 0 {
        return Err(invalid(
            path,
            "the file grew while the layer was being written",
        ));
    }
    let pad = padding(size);
    if pad > 0 {
        sink.write(&[0u8; BLOCK][..pad]).map_err(sink_err)?;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Writing a layer from a list of entries
// ------------------------------------------------------------------------------------------

/// One entry of a layer written from a list rather than diffed from a tree (see
/// [`write_entries_layer`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntrySpec {
    /// The path in the layer, relative to the root, in canonical form (`a/b`).
    pub name: Vec<u8>,
    /// [`Kind::File`], [`Kind::Dir`] or [`Kind::Symlink`].
    pub kind: Kind,
    /// Where a file's content is read (never through a final symlink), and where an entry
    /// without `mtime_ns` takes its mtime from (a file's from the opened file, any other's from
    /// `lstat`).
    pub source: Option<PathBuf>,
    /// A symlink's target.
    pub link: Vec<u8>,
    /// The BLAKE3 digest a file's content must have; a file that reads otherwise stops the
    /// write (it changed since it was hashed).
    pub blake3: Option<[u8; 32]>,
    /// Permission bits (`& 0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Nanoseconds since the epoch; `None`: the source's.
    pub mtime_ns: Option<i64>,
}

fn usage_at(name: &[u8], what: &str) -> LayerError {
    LayerError::Usage(format!("entry {:?}: {what}", show(name)))
}

/// The entries in layer order (the order [`snapshot::diff`] gives: depth-first, children by
/// name bytes), each checked: a canonical name, listed once, with what its kind needs.
fn layer_order(entries: &[EntrySpec]) -> Result<Vec<&EntrySpec>> {
    for e in entries {
        match snapshot::normalize_rel(&e.name) {
            Ok(canonical) if canonical == e.name => {}
            Ok(_) => return Err(usage_at(&e.name, "not in canonical form (a/b)")),
            Err(reason) => return Err(usage_at(&e.name, &reason)),
        }
        if e.name.len() > MAX_NAME {
            return Err(usage_at(&e.name, "the name is too long"));
        }
        match e.kind {
            Kind::File if e.source.is_none() => {
                return Err(usage_at(&e.name, "a file needs a source"))
            }
            Kind::Symlink if e.link.is_empty() || e.link.contains(&0) => {
                return Err(usage_at(&e.name, "a symlink needs a target without NUL"))
            }
            Kind::File | Kind::Dir | Kind::Symlink => {}
            _ => {
                return Err(usage_at(
                    &e.name,
                    "only files, directories and symlinks can be listed",
                ))
            }
        }
        if e.mtime_ns.is_none() && e.source.is_none() {
            return Err(usage_at(
                &e.name,
                "needs an mtime or a source to take it from",
            ));
        }
    }
    let mut order: Vec<&EntrySpec> = entries.iter().collect();
    order.sort_unstable_by(|a, b| {
        a.name
            .split(|&c| c == b'/')
            .cmp(b.name.split(|&c| c == b'/'))
    });
    if let Some(w) = order.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(usage_at(&w[0].name, "listed twice"));
    }
    Ok(order)
}

// `st_mtime`'s type differs between targets: the cast is a no-op on some.
#[allow(clippy::unnecessary_cast)]
fn mtime_of(st: &rfs::Stat) -> i64 {
    (st.st_mtime as i64)
        .saturating_mul(1_000_000_000)
        .saturating_add(st.st_mtime_nsec as i64)
}

/// Write `entries` as a gzip layer blob to `out` (through a temporary file renamed into place),
/// in the format of [`write_diff_layer`]: the same headers, sorting, gzip blocks and mtime
/// clamping, so a list that names what a diff would find gives the same bytes. Files are read
/// from their sources and checked against their BLAKE3 digests as they go into the tar: one
/// that changed, shrank or grew, or is no longer a regular file, is a [`LayerError::Invalid`]
/// naming the entry; one that cannot be opened an [`LayerError::Io`] naming the source.
pub fn write_entries_layer(
    entries: &[EntrySpec],
    out: &Path,
    opts: &WriteOptions,
) -> Result<LayerInfo> {
    let order = layer_order(entries)?;
    through_partial(out, |file| write_entries_into(&order, file, out, opts))
}

fn write_entries_into(
    order: &[&EntrySpec],
    file: File,
    out: &Path,
    opts: &WriteOptions,
) -> Result<LayerInfo> {
    let sink_err = |e: io::Error| LayerError::Io {
        path: out.to_path_buf(),
        source: e,
    };
    let mut sink = GzipSink::new(BufWriter::with_capacity(1 << 20, file)).map_err(sink_err)?;
    let mut hdr = Vec::with_capacity(4 * BLOCK);
    let mut buf = vec![0u8; COPY_BUF];
    for e in order {
        hdr.clear();
        let mut name = e.name.clone();
        if e.kind == Kind::Dir {
            name.push(b'/');
        }
        let mut header = TarHeader {
            name: &name,
            typeflag: typeflag(e.kind),
            mode: e.mode & 0o7777,
            uid: e.uid,
            gid: e.gid,
            size: 0,
            mtime: 0,
            link: if e.kind == Kind::Symlink {
                &e.link
            } else {
                b""
            },
            dev: (0, 0),
            xattrs: &[],
        };
        if e.kind != Kind::File {
            let mtime_ns = match (e.mtime_ns, &e.source) {
                (Some(t), _) => t,
                (None, Some(src)) => {
                    mtime_of(&rfs::lstat(src).map_err(|err| io_at(src)(err.into()))?)
                }
                (None, None) => unreachable!("layer_order checks it"),
            };
            header.mtime = clamp_mtime(mtime_ns, opts.source_date_epoch);
            encode_header(&header, &mut hdr);
            sink.write(&hdr).map_err(sink_err)?;
            continue;
        }
        let src = e.source.as_deref().expect("layer_order checks it");
        // O_NONBLOCK: a file replaced by a FIFO since it was hashed must not hang the open.
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let fd = rfs::open(src, flags, Mode::empty()).map_err(|err| io_at(src)(err.into()))?;
        let st = rfs::fstat(&fd).map_err(|err| io_at(src)(err.into()))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(invalid(&e.name, "it is no longer a regular file"));
        }
        let size = st.st_size as u64;
        header.size = size;
        header.mtime = clamp_mtime(
            e.mtime_ns.unwrap_or_else(|| mtime_of(&st)),
            opts.source_date_epoch,
        );
        encode_header(&header, &mut hdr);
        sink.write(&hdr).map_err(sink_err)?;
        let mut file = File::from(fd);
        let mut hasher = blake3::Hasher::new();
        let mut left = size;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = match file.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(invalid(
                        &e.name,
                        "the file shrank while the layer was being written",
                    ))
                }
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(io_at(src)(err)),
            };
            hasher.update(&buf[..n]);
            sink.write(&buf[..n]).map_err(sink_err)?;
            left -= n as u64;
        }
        if file.read(&mut buf[..1]).map_err(io_at(src))? != 0 {
            return Err(invalid(
                &e.name,
                "the file grew while the layer was being written",
            ));
        }
        if let Some(expected) = e.blake3 {
            let found = hasher.finalize();
            if found.as_bytes() != &expected {
                return Err(invalid(
                    &e.name,
                    format!(
                        "planned blake3:{}, found blake3:{}",
                        hex::encode(expected),
                        found.to_hex()
                    ),
                ));
            }
        }
        let pad = padding(size);
        if pad > 0 {
            sink.write(&[0u8; BLOCK][..pad]).map_err(sink_err)?;
        }
    }
    sink.write(&[0u8; 2 * BLOCK]).map_err(sink_err)?;
    let (_, digest, diff_id, size) = sink.finish().map_err(sink_err)?;
    Ok(LayerInfo {
        digest: format!("sha256:{}", hex::encode(digest)),
        diff_id: format!("sha256:{}", hex::encode(diff_id)),
        size,
        entries: order.len() as u64,
    })
}

// ------------------------------------------------------------------------------------------
// Walking the root without following symlinks
// ------------------------------------------------------------------------------------------

/// Why the walk to a directory stopped, at which component.
enum Stop {
    Symlink(usize),
    NotDir(usize),
    Missing(usize),
    Io(usize, io::Error),
}

impl Stop {
    fn into_io(self) -> (usize, io::Error) {
        match self {
            Stop::Symlink(i) => (i, Errno::LOOP.into()),
            Stop::NotDir(i) => (i, Errno::NOTDIR.into()),
            Stop::Missing(i) => (i, Errno::NOENT.into()),
            Stop::Io(i, e) => (i, e),
        }
    }
}

fn classify(parent: BorrowedFd<'_>, name: &[u8], i: usize, e: Errno) -> Stop {
    match e {
        Errno::NOENT => Stop::Missing(i),
        Errno::LOOP | Errno::NOTDIR => match rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => Stop::Symlink(i),
            _ => Stop::NotDir(i),
        },
        e => Stop::Io(i, e.into()),
    }
}

/// Open directories below a root one component at a time with `O_NOFOLLOW`, keeping the chain
/// of the last directory open: entries of a sorted tar mostly share their parent.
struct Cursor {
    root: OwnedFd,
    stack: Vec<(Vec<u8>, OwnedFd)>,
}

impl Cursor {
    fn new(root: OwnedFd) -> Self {
        Cursor {
            root,
            stack: Vec::new(),
        }
    }

    /// The directory at `comps`. With `create`, missing directories are made (0755) and the
    /// indices of the components created are pushed to `created`.
    fn dir(
        &mut self,
        comps: &[&[u8]],
        create: bool,
        created: &mut Vec<usize>,
    ) -> std::result::Result<BorrowedFd<'_>, Stop> {
        let common = self
            .stack
            .iter()
            .zip(comps)
            .take_while(|((have, _), want)| have.as_slice() == **want)
            .count();
        self.stack.truncate(common);
        for (i, &comp) in comps.iter().enumerate().skip(common) {
            let fd = {
                let parent = match self.stack.last() {
                    Some((_, fd)) => fd.as_fd(),
                    None => self.root.as_fd(),
                };
                open_dir(parent, comp, i, create, created)?
            };
            self.stack.push((comp.to_vec(), fd));
        }
        Ok(match self.stack.last() {
            Some((_, fd)) => fd.as_fd(),
            None => self.root.as_fd(),
        })
    }
}

fn open_dir(
    parent: BorrowedFd<'_>,
    comp: &[u8],
    i: usize,
    create: bool,
    created: &mut Vec<usize>,
) -> std::result::Result<OwnedFd, Stop> {
    match rfs::openat(parent, comp, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::NOENT) if create => {
            match rfs::mkdirat(parent, comp, Mode::from_raw_mode(0o755)) {
                Ok(()) => created.push(i),
                Err(Errno::EXIST) => {}
                Err(e) => return Err(Stop::Io(i, e.into())),
            }
            let fd = rfs::openat(parent, comp, DIR_FLAGS, Mode::empty())
                .map_err(|e| classify(parent, comp, i, e))?;
            // Not subject to the umask: an implied directory is always 0755.
            rfs::fchmod(&fd, Mode::from_raw_mode(0o755)).map_err(|e| Stop::Io(i, e.into()))?;
            Ok(fd)
        }
        Err(e) => Err(classify(parent, comp, i, e)),
    }
}

/// The directory at `comps` below `root`, opened afresh (the cursor is left alone).
fn open_path(root: BorrowedFd<'_>, comps: &[&[u8]]) -> std::result::Result<OwnedFd, Stop> {
    let mut cur =
        rfs::openat(root, c".", DIR_FLAGS, Mode::empty()).map_err(|e| Stop::Io(0, e.into()))?;
    for (i, &comp) in comps.iter().enumerate() {
        cur = open_dir(cur.as_fd(), comp, i, false, &mut Vec::new())?;
    }
    Ok(cur)
}

/// Delete `name` in `dir` whatever it is; a directory with everything below it.
fn remove_any(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR) => remove_tree(dir, name),
        Err(e) => Err(e.into()),
    }
}

fn list_dir(fd: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, FileType)>> {
    let mut out = Vec::new();
    for ent in Dir::read_from(fd)? {
        let ent = ent?;
        let name = ent.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push((name.to_vec(), ent.file_type()));
        }
    }
    Ok(out)
}

fn remove_tree(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let fd = match rfs::openat(dir, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for (child, ft) in list_dir(fd.as_fd())? {
        if ft == FileType::Directory {
            remove_tree(fd.as_fd(), &child)?;
        } else {
            remove_any(fd.as_fd(), &child)?;
        }
    }
    match rfs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

// ------------------------------------------------------------------------------------------
// Reading tars
// ------------------------------------------------------------------------------------------

struct TarReader<R: Read> {
    r: R,
    /// Expanded bytes read so far.
    consumed: u64,
    /// Data bytes of the current entry not yet read, and the padding after them.
    remaining: u64,
    pad: u64,
}

impl<R: Read> TarReader<R> {
    /// The next 512-byte block, `None` at a clean end of input.
    fn block(&mut self) -> io::Result<Option<[u8; BLOCK]>> {
        let mut b = [0u8; BLOCK];
        let mut got = 0;
        while got < BLOCK {
            match self.r.read(&mut b[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.consumed += BLOCK as u64;
        Ok(Some(b))
    }

    fn begin(&mut self, data: u64) {
        self.remaining = data;
        self.pad = padding(data) as u64;
    }

    fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = self.remaining.min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = loop {
            match self.r.read(&mut buf[..want]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        self.remaining -= n as u64;
        self.consumed += n as u64;
        Ok(n)
    }

    fn skip(&mut self, n: u64) -> io::Result<()> {
        let copied = io::copy(&mut (&mut self.r).take(n), &mut io::sink())?;
        self.consumed += copied;
        if copied < n {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// Skip what is left of the current entry and its padding.
    fn end_entry(&mut self) -> io::Result<()> {
        let n = self.remaining + self.pad;
        self.remaining = 0;
        self.pad = 0;
        self.skip(n)
    }

    fn read_all(&mut self, n: u64) -> io::Result<Vec<u8>> {
        self.begin(n);
        let mut v = vec![0u8; n as usize];
        let mut got = 0;
        while got < v.len() {
            got += self.read_data(&mut v[got..])?;
        }
        self.end_entry()?;
        Ok(v)
    }
}

fn cstr_field(f: &[u8]) -> &[u8] {
    match f.iter().position(|&b| b == 0) {
        Some(i) => &f[..i],
        None => f,
    }
}

fn parse_numeric(f: &[u8]) -> Option<u64> {
    if f.first().is_some_and(|&b| b & 0x80 != 0) {
        // GNU base-256: big-endian, the top bit of the first byte a marker (set 0xff: negative).
        if f[0] == 0xff {
            return None;
        }
        let mut v: u64 = u64::from(f[0] & 0x7f);
        for &b in &f[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let s = cstr_field(f);
    let s = s
        .iter()
        .position(|&b| b != b' ')
        .map_or(&s[s.len()..], |i| &s[i..]);
    let end = s
        .iter()
        .position(|&b| b == b' ' || b == 0)
        .unwrap_or(s.len());
    if s[end..].iter().any(|&b| b != b' ' && b != 0) {
        return None;
    }
    let mut v: u64 = 0;
    for &b in &s[..end] {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<(i64, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse: bool,
}

fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
    }
    if neg {
        // -1.25 is 1.25 seconds before the epoch: -2 s + 0.75 s.
        if nanos == 0 {
            Some((-secs, 0))
        } else {
            Some((-secs - 1, 1_000_000_000 - nanos))
        }
    } else {
        Some((secs, nanos))
    }
}

fn parse_pax(data: &[u8]) -> std::result::Result<Pax, String> {
    let mut pax = Pax::default();
    let mut rest = data;
    while !rest.is_empty() {
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or("extended header record without a length")?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("extended header record with a bad length")?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err("extended header record with a bad length".into());
        }
        let rec = &rest[sp + 1..len - 1];
        rest = &rest[len..];
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or("extended header record without '='")?;
        let (key, value) = (&rec[..eq], &rec[eq + 1..]);
        let number = |v: &[u8]| -> std::result::Result<u64, String> {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("extended header {} is not a number", show(key)))
        };
        match key {
            b"path" => pax.path = Some(value.to_vec()),
            b"linkpath" => pax.linkpath = Some(value.to_vec()),
            b"size" => pax.size = Some(number(value)?),
            b"uid" => pax.uid = Some(number(value)?),
            b"gid" => pax.gid = Some(number(value)?),
            b"mtime" => {
                pax.mtime =
                    Some(parse_pax_time(value).ok_or("extended header mtime is not a time")?)
            }
            _ if key.starts_with(b"SCHILY.xattr.") => {
                pax.xattrs.push((key[13..].to_vec(), value.to_vec()));
            }
            _ if key.starts_with(b"GNU.sparse.") => pax.sparse = true,
            _ => {}
        }
    }
    Ok(pax)
}

/// One archive member with everything its extended headers said.
struct Member {
    name: Vec<u8>,
    link: Vec<u8>,
    typeflag: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: (i64, u32),
    dev: (u32, u32),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Member {
    fn is_file(&self) -> bool {
        matches!(self.typeflag, b'0' | b'\0' | b'7')
    }
}

// ------------------------------------------------------------------------------------------
// Unpacking
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bound on the expanded tar bytes read (headers, data and padding).
    pub max_bytes: u64,
    /// Bound on the entries (PAX and GNU long-name headers not counted).
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: DEFAULT_MAX_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    /// Expanded (uncompressed tar) bytes read.
    pub bytes: u64,
    /// sha256 of the uncompressed tar as read (the layer's diff_id), computed in the same pass.
    pub diff_id: [u8; 32],
}

/// Hashes every byte read through it: the unpacker reads the uncompressed tar to its end, so
/// the layer's diff_id costs no second decompression (the caller compares it with the image
/// config's claim, as containerd does at unpack).
struct HashingReader<R: Read> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

#[derive(Clone, Copy, Debug)]
struct Privileges {
    root: bool,
    mknod: bool,
}

impl Privileges {
    fn current() -> Self {
        let root = rustix::process::geteuid().is_root();
        let mknod = root
            && rustix::thread::capabilities(None).map_or(true, |c| {
                c.effective.contains(rustix::thread::CapabilitySet::MKNOD)
            });
        Privileges { root, mknod }
    }
}

/// The components of an entry name: `./` and empty components dropped; absolute names, `..`,
/// NUL bytes and names longer than [`MAX_NAME`] refused. `what` says which name it is.
fn components<'a>(entry: &[u8], name: &'a [u8], what: &str) -> Result<Vec<&'a [u8]>> {
    if name.len() > MAX_NAME {
        return Err(refused(
            entry,
            format!("{what} is longer than {MAX_NAME} bytes"),
        ));
    }
    if name.contains(&0) {
        return Err(invalid(entry, format!("{what} contains a NUL byte")));
    }
    if name.starts_with(b"/") {
        return Err(refused(entry, format!("{what} is an absolute path")));
    }
    let mut comps = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(refused(
                    entry,
                    format!("{what} contains '..' (path traversal)"),
                ))
            }
            _ => comps.push(c),
        }
    }
    if comps.len() > MAX_DEPTH {
        return Err(refused(
            entry,
            format!("{what} is nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    Ok(comps)
}

fn to_ids(entry: &[u8], uid: u64, gid: u64) -> Result<(Uid, Gid)> {
    let ok = |v: u64| u32::try_from(v).ok().filter(|&v| v != u32::MAX);
    match (ok(uid), ok(gid)) {
        (Some(u), Some(g)) => Ok((Uid::from_raw(u), Gid::from_raw(g))),
        _ => Err(invalid(
            entry,
            format!("uid {uid} or gid {gid} is out of range"),
        )),
    }
}

fn times(mtime: (i64, u32)) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime.0,
        tv_nsec: i64::from(mtime.1),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

struct Unpacker<'a> {
    root: &'a Path,
    cursor: Cursor,
    privileges: Privileges,
    /// Paths this layer created or merged into: an opaque marker keeps them.
    created: FxHashSet<Vec<u8>>,
    /// Directory mode and mtime are set last, children first: adding children changes a
    /// directory's mtime, and a read-only directory would refuse them.
    dirs: FxHashMap<Vec<u8>, (u32, (i64, u32))>,
}

impl Unpacker<'_> {
    fn stop(&self, entry: &[u8], comps: &[&[u8]], stop: Stop) -> LayerError {
        let upto = |i: usize| comps[..=i].join(&b'/');
        match stop {
            Stop::Symlink(i) => refused(
                entry,
                format!(
                    "'{}' is a symbolic link; refusing to write through it",
                    show(&upto(i))
                ),
            ),
            Stop::NotDir(i) => invalid(entry, format!("'{}' is not a directory", show(&upto(i)))),
            Stop::Missing(i) => invalid(entry, format!("'{}' does not exist", show(&upto(i)))),
            Stop::Io(i, e) => io_at(abs(self.root, &upto(i)))(e),
        }
    }

    fn mode(&self, m: &Member) -> u32 {
        let mode = m.mode & 0o7777;
        if self.privileges.root {
            mode
        } else {
            mode & !0o6000
        }
    }

    fn apply<R: Read>(&mut self, m: &Member, tar: &mut TarReader<R>, layer: &Path) -> Result<()> {
        let entry = m.name.as_slice();
        let comps = components(entry, entry, "the path")?;
        let is_dir = m.typeflag == b'5' || (m.typeflag == b'\0' && entry.ends_with(b"/"));
        let Some((&base, parent)) = comps.split_last() else {
            if !is_dir {
                return Err(invalid(
                    entry,
                    "an entry for the root itself must be a directory",
                ));
            }
            if self.privileges.root {
                let (u, g) = to_ids(entry, m.uid, m.gid)?;
                rfs::fchown(&self.cursor.root, Some(u), Some(g))
                    .map_err(|e| io_at(self.root)(e.into()))?;
            }
            self.dirs.insert(Vec::new(), (self.mode(m), m.mtime));
            return Ok(());
        };
        let path = comps.join(&b'/');
        let here = abs(self.root, &path);

        if base.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(entry, parent, base);
        }

        // Resolve a hard link's target first: it is opened afresh, away from the cursor.
        let link = if m.typeflag == b'1' {
            Some(self.link_target(entry, &comps, &m.link)?)
        } else {
            None
        };

        let mut made = Vec::new();
        let stop = self.cursor.dir(parent, true, &mut made).err();
        for &i in &made {
            self.created.insert(comps[..=i].join(&b'/'));
        }
        if let Some(s) = stop {
            return Err(self.stop(entry, parent, s));
        }
        self.created.insert(path.clone());
        let privileges = self.privileges;
        let mode = self.mode(m);
        let pfd = match self.cursor.dir(parent, false, &mut made) {
            Ok(fd) => fd,
            Err(s) => {
                let (_, e) = s.into_io();
                return Err(io_at(&here)(e));
            }
        };
        let io = |e: Errno| io_at(&here)(e.into());

        if let Some((tfd, tbase)) = link {
            clear(pfd, base, false).map_err(io_at(&here))?;
            rfs::linkat(&tfd, tbase, pfd, base, AtFlags::empty()).map_err(io)?;
            return Ok(());
        }

        match m.typeflag {
            _ if is_dir => {
                if !clear(pfd, base, true).map_err(io_at(&here))? {
                    rfs::mkdirat(pfd, base, Mode::from_raw_mode(0o700)).map_err(io)?;
                }
                let fd = rfs::openat(pfd, base, DIR_FLAGS, Mode::empty()).map_err(io)?;
                if privileges.root {
                    let (u, g) = to_ids(entry, m.uid, m.gid)?;
                    rfs::fchown(&fd, Some(u), Some(g)).map_err(io)?;
                }
                set_xattrs(Target::Fd(fd.as_fd()), &m.xattrs, privileges).map_err(io)?;
                self.dirs.insert(path, (mode, m.mtime));
            }
            _ if m.is_file() => {
                clear(pfd, base, false).map_err(io_at(&here))?;
                let fd = rfs::openat(
                    pfd,
                    base,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(io)?;
                let mut file = File::from(fd);
                let mut buf = vec![0u8; COPY_BUF.min(m.size as usize).max(1)];
                loop {
                    let n = tar
                        .read_data(&mut buf)
                        .map_err(|e| read_error(layer, entry, e))?;
                    if n == 0 {
                        break;
                    }
                    file.write_all(&buf[..n]).map_err(io_at(&here))?;
                }
                if privileges.root {
                    let (u, g) = to_ids(entry, m.uid, m.gid)?;
                    rfs::fchown(&file, Some(u), Some(g)).map_err(io)?;
                }
                rfs::fchmod(&file, Mode::from_raw_mode(mode)).map_err(io)?;
                set_xattrs(Target::Fd(file.as_fd()), &m.xattrs, privileges).map_err(io)?;
                rfs::futimens(&file, &times(m.mtime)).map_err(io)?;
            }
            b'2' | b'3' | b'4' | b'6' => {
                clear(pfd, base, false).map_err(io_at(&here))?;
                match m.typeflag {
                    b'2' => {
                        if m.link.is_empty() || m.link.contains(&0) {
                            return Err(invalid(
                                entry,
                                "the symbolic link target is empty or contains NUL",
                            ));
                        }
                        rfs::symlinkat(m.link.as_slice(), pfd, base).map_err(io)?;
                    }
                    b'6' => rfs::mknodat(pfd, base, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                        .map_err(io)?,
                    _ => {
                        if !privileges.mknod {
                            return Err(refused(
                                entry,
                                "device nodes are only created when unpacking as root with CAP_MKNOD",
                            ));
                        }
                        let ft = if m.typeflag == b'3' {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        };
                        rfs::mknodat(
                            pfd,
                            base,
                            ft,
                            Mode::from_raw_mode(0o600),
                            rfs::makedev(m.dev.0, m.dev.1),
                        )
                        .map_err(io)?;
                    }
                }
                if privileges.root {
                    let (u, g) = to_ids(entry, m.uid, m.gid)?;
                    rfs::chownat(pfd, base, Some(u), Some(g), AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(io)?;
                }
                if m.typeflag != b'2' {
                    rfs::chmodat(pfd, base, Mode::from_raw_mode(mode), AtFlags::empty())
                        .map_err(io)?;
                }
                set_xattrs(Target::At(pfd, base), &m.xattrs, privileges).map_err(io)?;
                rfs::utimensat(pfd, base, &times(m.mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(io)?;
            }
            t => {
                return Err(invalid(
                    entry,
                    format!("unsupported entry type {:?}", char::from(t)),
                ))
            }
        }
        Ok(())
    }

    /// The open parent directory and name of a hard link's target, which must exist inside
    /// the root, reached without symlinks, and not be a directory.
    fn link_target<'n>(
        &self,
        entry: &[u8],
        comps: &[&[u8]],
        link: &'n [u8],
    ) -> Result<(OwnedFd, &'n [u8])> {
        let tcomps = components(entry, link, "the hard link target")?;
        let Some((&tbase, tparent)) = tcomps.split_last() else {
            return Err(invalid(entry, "the hard link target is the root"));
        };
        if tcomps == comps {
            return Err(invalid(entry, "the hard link names itself"));
        }
        let tpath = tcomps.join(&b'/');
        let target = show(&tpath);
        let tfd = open_path(self.cursor.root.as_fd(), tparent).map_err(|s| match s {
            Stop::Symlink(i) => refused(
                entry,
                format!(
                    "the hard link target '{target}' goes through the symbolic link '{}'",
                    show(&tparent[..=i].join(&b'/'))
                ),
            ),
            Stop::Io(_, e) => io_at(abs(self.root, &tpath))(e),
            _ => invalid(
                entry,
                format!("the hard link target '{target}' does not exist"),
            ),
        })?;
        match rfs::statat(&tfd, tbase, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => Err(invalid(
                entry,
                format!("the hard link target '{target}' is a directory"),
            )),
            Ok(_) => Ok((tfd, tbase)),
            Err(Errno::NOENT) => Err(invalid(
                entry,
                format!("the hard link target '{target}' does not exist"),
            )),
            Err(e) => Err(io_at(abs(self.root, &tpath))(e.into())),
        }
    }

    fn whiteout(&mut self, entry: &[u8], parent: &[&[u8]], base: &[u8]) -> Result<()> {
        if base == OPAQUE_MARKER {
            let mut made = Vec::new();
            let dir_path = parent.join(&b'/');
            let fd = match self.cursor.dir(parent, true, &mut made) {
                Ok(fd) => fd,
                Err(s) => return Err(self.stop(entry, parent, s)),
            };
            let fd = rfs::openat(fd, c".", DIR_FLAGS, Mode::empty())
                .map_err(|e| io_at(abs(self.root, &dir_path))(e.into()))?;
            for &i in &made {
                self.created.insert(parent[..=i].join(&b'/'));
            }
            return remove_unlisted(fd.as_fd(), &dir_path, &self.created)
                .map_err(io_at(abs(self.root, &dir_path)));
        }
        if base.starts_with(b".wh..wh.") {
            // Other aufs metadata (.wh..wh.plnk, .wh..wh.aufs): nothing to apply.
            return Ok(());
        }
        let name = &base[WHITEOUT_PREFIX.len()..];
        if name.is_empty() || name == b"." || name == b".." {
            return Err(refused(
                entry,
                "the whiteout does not name a child of its directory",
            ));
        }
        let fd = match self.cursor.dir(parent, false, &mut Vec::new()) {
            Ok(fd) => fd,
            // Nothing there to delete.
            Err(Stop::Missing(_) | Stop::NotDir(_)) => return Ok(()),
            Err(s) => return Err(self.stop(entry, parent, s)),
        };
        let mut path = parent.join(&b'/');
        path = join_rel(&path, name);
        remove_any(fd, name).map_err(io_at(abs(self.root, &path)))
    }

    fn finish_dirs(&mut self) -> Result<()> {
        let mut dirs: Vec<_> = std::mem::take(&mut self.dirs).into_iter().collect();
        dirs.sort_unstable_by(|a, b| b.0.cmp(&a.0));
        for (path, (mode, mtime)) in dirs {
            let here = abs(self.root, &path);
            let io = |e: Errno| io_at(&here)(e.into());
            let fd = if path.is_empty() {
                rfs::openat(&self.cursor.root, c".", DIR_FLAGS, Mode::empty()).map_err(io)?
            } else {
                let comps: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
                let (base, parent) = comps.split_last().expect("not the root");
                // A directory a later entry replaced or deleted is simply gone.
                let Ok(pfd) = self.cursor.dir(parent, false, &mut Vec::new()) else {
                    continue;
                };
                match rfs::openat(pfd, *base, DIR_FLAGS, Mode::empty()) {
                    Ok(fd) => fd,
                    Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                    Err(e) => return Err(io(e)),
                }
            };
            rfs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(io)?;
            rfs::futimens(&fd, &times(mtime)).map_err(io)?;
        }
        Ok(())
    }
}

/// Make room for a new entry at `name`: delete what is there, except a directory when
/// `keep_dir` (a directory entry merges into it). Returns whether a directory was kept.
fn clear(dir: BorrowedFd<'_>, name: &[u8], keep_dir: bool) -> io::Result<bool> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            if keep_dir {
                Ok(true)
            } else {
                remove_tree(dir, name)?;
                Ok(false)
            }
        }
        Ok(_) => {
            rfs::unlinkat(dir, name, AtFlags::empty())?;
            Ok(false)
        }
    }
}

/// Delete everything below `fd` (directory `path`) that this layer did not create.
fn remove_unlisted(fd: BorrowedFd<'_>, path: &[u8], keep: &FxHashSet<Vec<u8>>) -> io::Result<()> {
    for (name, ft) in list_dir(fd)? {
        let child = join_rel(path, &name);
        if !keep.contains(&child) {
            remove_any(fd, &name)?;
        } else if ft == FileType::Directory {
            let sub = rfs::openat(fd, name.as_slice(), DIR_FLAGS, Mode::empty())?;
            remove_unlisted(sub.as_fd(), &child, keep)?;
        }
    }
    Ok(())
}

enum Target<'a> {
    Fd(BorrowedFd<'a>),
    At(BorrowedFd<'a>, &'a [u8]),
}

fn set_xattrs(
    target: Target<'_>,
    xattrs: &[(Vec<u8>, Vec<u8>)],
    privileges: Privileges,
) -> std::result::Result<(), Errno> {
    for (name, value) in xattrs {
        if name.is_empty() || name.contains(&0) {
            continue;
        }
        let r = match &target {
            Target::Fd(fd) => rfs::fsetxattr(fd, name.as_slice(), value, XattrFlags::empty()),
            Target::At(dir, base) => {
                // l*xattr takes a path: reach the entry through its open parent directory.
                let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
                p.extend_from_slice(base);
                rfs::lsetxattr(p.as_slice(), name.as_slice(), value, XattrFlags::empty())
            }
        };
        match r {
            Ok(()) => {}
            // The filesystem cannot hold them; nothing a layer can do about it.
            Err(Errno::NOTSUP) => {}
            // trusted.* and security.* need privileges an unprivileged unpack does not have.
            Err(Errno::PERM | Errno::ACCESS) if !privileges.root => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn read_error(layer: &Path, entry: &[u8], e: io::Error) -> LayerError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            invalid(entry, "the archive ends in the middle of this entry")
        }
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
            invalid(entry, format!("corrupt compressed data: {e}"))
        }
        _ => io_at(layer)(e),
    }
}

/// The uncompressed tar of the layer at `layer` (gzip or plain tar, autodetected).
fn open_layer(layer: &Path) -> Result<Box<dyn Read>> {
    let file = File::open(layer).map_err(io_at(layer))?;
    let mut input = BufReader::with_capacity(COPY_BUF, file);
    let head = input.fill_buf().map_err(io_at(layer))?;
    let (gzip, zstd) = (
        head.starts_with(&[0x1f, 0x8b]),
        head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
    );
    let reader: Box<dyn Read> = if gzip {
        Box::new(BufReader::with_capacity(
            COPY_BUF,
            MultiGzDecoder::new(input),
        ))
    } else if zstd {
        return Err(invalid(b"", "zstd-compressed layers are not supported"));
    } else {
        Box::new(input)
    };
    Ok(reader)
}

/// Apply the layer at `layer` (gzip or plain tar) on top of the tree at `root`.
pub fn unpack_layer(layer: &Path, root: &Path, limits: Limits) -> Result<UnpackStats> {
    let reader = open_layer(layer)?;
    let root_fd = snapshot::open_root(root).map_err(io_at(root))?;
    let mut tar = TarReader {
        r: HashingReader {
            inner: reader,
            hash: Sha256::new(),
        },
        consumed: 0,
        remaining: 0,
        pad: 0,
    };
    let mut un = Unpacker {
        root,
        cursor: Cursor::new(root_fd),
        privileges: Privileges::current(),
        created: FxHashSet::default(),
        dirs: FxHashMap::default(),
    };
    let mut entries = 0u64;
    while let Some(member) = next_member(&mut tar, layer, limits, &mut entries)? {
        un.apply(&member, &mut tar, layer)?;
        tar.end_entry()
            .map_err(|e| read_error(layer, &member.name, e))?;
    }
    un.finish_dirs()?;
    // Read to the end so that a corrupt gzip trailer (CRC, size) is noticed, within the bound.
    let mut sink = [0u8; 64 * 1024];
    loop {
        let n = match tar.r.read(&mut sink) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(layer, b"", e)),
        };
        tar.consumed += n as u64;
        if tar.consumed > limits.max_bytes {
            return Err(too_big(b"(after the end of the archive)", limits));
        }
    }
    Ok(UnpackStats {
        entries,
        bytes: tar.consumed,
        diff_id: tar.r.hash.finalize().into(),
    })
}

/// The next member of the archive, its extended headers (PAX, GNU long names) folded in, with
/// its data begun in `tar`; `None` at the end of the archive. Counts it in `entries` and
/// enforces `limits`.
fn next_member<R: Read>(
    tar: &mut TarReader<R>,
    layer: &Path,
    limits: Limits,
    entries: &mut u64,
) -> Result<Option<Member>> {
    let mut pax: Option<Pax> = None;
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    loop {
        let at = tar.consumed;
        let here = format!("header at byte {at}").into_bytes();
        let Some(b) = tar.block().map_err(|e| read_error(layer, &here, e))? else {
            return Ok(None);
        };
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        let stored = parse_numeric(&b[148..156]);
        let mut unsigned: u64 = 0;
        let mut signed: i64 = 0;
        for (i, &x) in b.iter().enumerate() {
            let x = if (148..156).contains(&i) { b' ' } else { x };
            unsigned += u64::from(x);
            signed += i64::from(x as i8);
        }
        if stored != Some(unsigned) && stored.map(|s| s as i64) != Some(signed) {
            return Err(invalid(&here, "bad header checksum (not a tar archive?)"));
        }
        let ustar = &b[257..263] == b"ustar\0";
        let mut name = cstr_field(&b[0..100]).to_vec();
        if ustar && b[345] != 0 {
            let mut full = cstr_field(&b[345..500]).to_vec();
            full.push(b'/');
            full.extend_from_slice(&name);
            name = full;
        }
        let typeflag = b[156];
        let numeric = |r: std::ops::Range<usize>, what: &str| {
            parse_numeric(&b[r]).ok_or_else(|| invalid(&name, format!("bad {what} field")))
        };
        let header_size = numeric(124..136, "size")?;

        if matches!(typeflag, b'x' | b'g' | b'L' | b'K') {
            if header_size > MAX_EXT_HEADER {
                return Err(refused(
                    &name,
                    format!(
                        "extended header of {header_size} bytes is larger than {MAX_EXT_HEADER}"
                    ),
                ));
            }
            if tar.consumed + header_size + padding(header_size) as u64 > limits.max_bytes {
                return Err(too_big(&name, limits));
            }
            let data = tar
                .read_all(header_size)
                .map_err(|e| read_error(layer, &name, e))?;
            match typeflag {
                b'x' => pax = Some(parse_pax(&data).map_err(|r| invalid(&name, r))?),
                b'L' => long_name = Some(cstr_field(&data).to_vec()),
                b'K' => long_link = Some(cstr_field(&data).to_vec()),
                // Global headers carry archive-wide defaults no layer writer relies on.
                _ => {}
            }
            continue;
        }

        let p = pax.take().unwrap_or_default();
        let name = p.path.or(long_name.take()).unwrap_or(name);
        let link = p
            .linkpath
            .or(long_link.take())
            .unwrap_or_else(|| cstr_field(&b[157..257]).to_vec());
        if p.sparse || typeflag == b'S' {
            return Err(invalid(&name, "sparse files are not supported"));
        }
        let numeric = |r: std::ops::Range<usize>, what: &str| {
            parse_numeric(&b[r]).ok_or_else(|| invalid(&name, format!("bad {what} field")))
        };
        let (dev_major, dev_minor) = if matches!(typeflag, b'3' | b'4') {
            (
                numeric(329..337, "devmajor")?,
                numeric(337..345, "devminor")?,
            )
        } else {
            (0, 0)
        };
        let member = Member {
            typeflag,
            mode: (numeric(100..108, "mode")? & 0o7777) as u32,
            uid: match p.uid {
                Some(u) => u,
                None => numeric(108..116, "uid")?,
            },
            gid: match p.gid {
                Some(g) => g,
                None => numeric(116..124, "gid")?,
            },
            size: p.size.unwrap_or(header_size),
            mtime: match p.mtime {
                Some(t) => t,
                None => (
                    i64::try_from(numeric(136..148, "mtime")?).unwrap_or(i64::MAX),
                    0,
                ),
            },
            dev: (
                u32::try_from(dev_major).map_err(|_| invalid(&name, "bad devmajor field"))?,
                u32::try_from(dev_minor).map_err(|_| invalid(&name, "bad devminor field"))?,
            ),
            xattrs: p.xattrs,
            link,
            name,
        };

        *entries += 1;
        if *entries > limits.max_entries {
            return Err(refused(
                &member.name,
                format!("the layer has more than {} entries", limits.max_entries),
            ));
        }
        let data = if member.is_file() { member.size } else { 0 };
        // `data` comes from the archive (a PAX size can be anything): no overflow.
        let end = tar
            .consumed
            .saturating_add(data)
            .saturating_add(padding(data) as u64);
        if end > limits.max_bytes {
            return Err(too_big(&member.name, limits));
        }
        tar.begin(data);
        return Ok(Some(member));
    }
}

/// What a layer lists at one path (see [`list_layer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListedKind {
    Dir,
    File,
    Symlink,
    /// A hard link to a file listed earlier.
    HardLink,
    /// A FIFO or a device node.
    Other,
}

/// The entries of the layer at `layer` (gzip or plain tar), in archive order: each name in the
/// unpacker's canonical form (`a/b`; empty for the root itself) and its kind. Whiteouts are
/// listed as the files they are (`dir/.wh.name`, `dir/.wh..wh..opq`); the caller applies them.
/// Names are checked as the unpacker checks them (absolute names and `..` refused).
pub fn list_layer(layer: &Path, limits: Limits) -> Result<Vec<(Vec<u8>, ListedKind)>> {
    let mut tar = TarReader {
        r: open_layer(layer)?,
        consumed: 0,
        remaining: 0,
        pad: 0,
    };
    let mut out = Vec::new();
    let mut entries = 0u64;
    while let Some(member) = next_member(&mut tar, layer, limits, &mut entries)? {
        let entry = member.name.as_slice();
        let name = components(entry, entry, "the path")?.join(&b'/');
        let kind = match member.typeflag {
            b'5' => ListedKind::Dir,
            b'\0' if entry.ends_with(b"/") => ListedKind::Dir,
            b'1' => ListedKind::HardLink,
            b'2' => ListedKind::Symlink,
            _ if member.is_file() => ListedKind::File,
            _ => ListedKind::Other,
        };
        out.push((name, kind));
        tar.end_entry()
            .map_err(|e| read_error(layer, &member.name, e))?;
    }
    Ok(out)
}

fn too_big(entry: &[u8], limits: Limits) -> LayerError {
    refused(
        entry,
        format!(
            "the layer expands past the limit of {} bytes",
            limits.max_bytes
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    fn unpack(layer: &Path, root: &Path) -> Result<UnpackStats> {
        unpack_layer(layer, root, Limits::default())
    }

    /// A tar with the given raw members (name, typeflag, link, data).
    /// (name, typeflag, link target, data)
    type RawMember<'a> = (&'a [u8], u8, &'a [u8], &'a [u8]);

    fn raw_tar(members: &[RawMember<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, t, link, data) in members {
            encode_header(
                &TarHeader {
                    name,
                    typeflag: *t,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    size: data.len() as u64,
                    mtime: 0,
                    link,
                    dev: (0, 0),
                    xattrs: &[],
                },
                &mut out,
            );
            out.extend_from_slice(data);
            out.resize(out.len() + padding(data.len() as u64), 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        for n in [0usize, 1, 5, 90, 93, 94, 95, 96, 97, 98, 990, 995, 996, 997] {
            let mut out = Vec::new();
            let value = vec![b'a'; n];
            pax_record(&mut out, b"path", &value);
            let sp = out.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&out[..sp]).unwrap().parse().unwrap();
            assert_eq!(len, out.len(), "value of {n} bytes");
        }
    }

    #[test]
    fn numeric_fields() {
        assert_eq!(parse_numeric(b"0000644\0"), Some(0o644));
        assert_eq!(parse_numeric(b"   644 \0"), Some(0o644));
        assert_eq!(parse_numeric(b"\0\0\0\0"), Some(0));
        assert_eq!(parse_numeric(&[0x80, 0, 0, 1, 0]), Some(256));
        assert_eq!(parse_numeric(b"12x4\0"), None);
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"10.5"), Some((10, 500_000_000)));
    }

    #[test]
    fn gzip_blocks_decompress_to_the_tar() {
        // Several blocks, an exact multiple of the block size, and an empty stream.
        for len in [0usize, 10, GZIP_BLOCK, 3 * GZIP_BLOCK + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut sink = GzipSink::new(Vec::new()).unwrap();
            for chunk in data.chunks(100_000) {
                sink.write(chunk).unwrap();
            }
            let (blob, _, tar_digest, size) = sink.finish().unwrap();
            assert_eq!(size as usize, blob.len());
            let mut back = Vec::new();
            MultiGzDecoder::new(&blob[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data);
            assert_eq!(tar_digest, <[u8; 32]>::from(Sha256::digest(&data)));
            // Batching only changes speed.
            let mut one = GzipSink::new(Vec::new()).unwrap();
            one.batch = 1;
            one.write(&data).unwrap();
            assert_eq!(one.finish().unwrap().0, blob);
        }
    }

    #[test]
    fn round_trip_through_a_layer() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("d/e")).unwrap();
        fs::write(src.join("d/file"), b"hello").unwrap();
        fs::set_permissions(src.join("d/file"), fs::Permissions::from_mode(0o751)).unwrap();
        fs::hard_link(src.join("d/file"), src.join("d/link")).unwrap();
        let xattrs =
            rfs::lsetxattr(src.join("d/file"), "user.mb", b"v\0\n", XattrFlags::empty()).is_ok();
        symlink("../d/file", src.join("d/e/sym")).unwrap();
        let long = "x".repeat(150);
        fs::write(src.join(&long), b"long").unwrap();
        let out = t.path().join("layer.tgz");
        let info = write_tree_layer(&src, &out, &WriteOptions::default()).unwrap();
        assert_eq!(info.entries, 6);
        let blob = fs::read(&out).unwrap();
        assert_eq!(info.size, blob.len() as u64);
        assert_eq!(
            info.digest,
            format!("sha256:{}", hex::encode(Sha256::digest(&blob)))
        );

        let dst = t.path().join("dst");
        fs::create_dir(&dst).unwrap();
        let stats = unpack(&out, &dst).unwrap();
        assert_eq!(stats.entries, 6);
        // The unpacker's diff_id, from the same pass, is the writer's.
        assert_eq!(
            info.diff_id,
            format!("sha256:{}", hex::encode(stats.diff_id))
        );
        assert_eq!(fs::read(dst.join("d/file")).unwrap(), b"hello");
        assert_eq!(fs::read(dst.join(&long)).unwrap(), b"long");
        let a = fs::metadata(dst.join("d/file")).unwrap();
        let b = fs::metadata(dst.join("d/link")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(a.mode() & 0o7777, 0o751);
        if xattrs {
            let mut v = [0u8; 8];
            let n = rfs::lgetxattr(dst.join("d/file"), "user.mb", &mut v[..]).unwrap();
            assert_eq!(&v[..n], b"v\0\n");
        }
        assert_eq!(
            fs::read_link(dst.join("d/e/sym")).unwrap(),
            Path::new("../d/file")
        );
        assert_eq!(
            fs::metadata(dst.join("d")).unwrap().mtime(),
            fs::metadata(src.join("d")).unwrap().mtime()
        );
    }

    #[test]
    fn whiteouts_and_opaque_directories_apply() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/old"), "").unwrap();
        fs::write(root.join("a/gone"), "").unwrap();
        fs::create_dir_all(root.join("o/sub")).unwrap();
        fs::write(root.join("o/sub/x"), "").unwrap();
        fs::write(root.join("o/y"), "").unwrap();
        let tar = raw_tar(&[
            (b"a/.wh.gone", b'0', b"", b""),
            (b"a/.wh.b", b'0', b"", b""),
            (b"a/.wh.missing", b'0', b"", b""),
            (b"o/", b'5', b"", b""),
            (b"o/sub/", b'5', b"", b""),
            (b"o/sub/new", b'0', b"", b"n"),
            (b"o/.wh..wh..opq", b'0', b"", b""),
        ]);
        let layer = t.path().join("l.tar");
        fs::write(&layer, tar).unwrap();
        unpack(&layer, &root).unwrap();
        assert!(!root.join("a/gone").exists());
        assert!(!root.join("a/b").exists());
        assert!(root.join("a").is_dir());
        assert!(
            root.join("o/sub/new").exists(),
            "created by this layer: kept"
        );
        assert!(
            !root.join("o/sub/x").exists(),
            "lower content of an opaque dir: gone"
        );
        assert!(!root.join("o/y").exists());
    }

    fn refusal(tar: Vec<u8>) -> (String, String, tempfile::TempDir) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        let layer = t.path().join("l.tar");
        fs::write(&layer, tar).unwrap();
        match unpack(&layer, &root) {
            Err(LayerError::Refused { entry, reason }) => (show(&entry), reason, t),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn escapes_are_refused() {
        let (e, r, _t) = refusal(raw_tar(&[(b"../evil", b'0', b"", b"x")]));
        assert_eq!(e, "../evil");
        assert!(r.contains(".."), "{r}");
        let (e, r, _t) = refusal(raw_tar(&[(b"/etc/evil", b'0', b"", b"x")]));
        assert_eq!(e, "/etc/evil");
        assert!(r.contains("absolute"), "{r}");
        let (e, r, t) = refusal(raw_tar(&[
            (b"link", b'2', b"..", b""),
            (b"link/evil", b'0', b"", b"x"),
        ]));
        assert_eq!(e, "link/evil");
        assert!(r.contains("symbolic link"), "{r}");
        assert!(!t.path().join("evil").exists());
        let (e, r, _t) = refusal(raw_tar(&[(b"h", b'1', b"../../etc/passwd", b"")]));
        assert_eq!(e, "h");
        assert!(r.contains("hard link target"), "{r}");
        let (e, _, _t) = refusal(raw_tar(&[
            (b"link", b'2', b"/", b""),
            (b"link/.wh.etc", b'0', b"", b""),
        ]));
        assert_eq!(e, "link/.wh.etc");
        let (e, _, _t) = refusal(raw_tar(&[(b"d/.wh...", b'0', b"", b"")]));
        assert_eq!(e, "d/.wh...");
        let huge = b"a/".repeat(4000);
        let (e, r, _t) = refusal(raw_tar(&[(&huge, b'0', b"", b"")]));
        assert!(r.contains("longer than 4096"), "{r}");
        assert_eq!(e.len(), MAX_NAME + "…".len(), "error names are bounded");
    }

    #[test]
    fn limits_are_enforced() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        let layer = t.path().join("l.tar");
        fs::write(
            &layer,
            raw_tar(&[(b"a", b'0', b"", &[1u8; 4096]), (b"b", b'0', b"", b"")]),
        )
        .unwrap();
        let small = Limits {
            max_bytes: 4096,
            max_entries: 10,
        };
        match unpack_layer(&layer, &root, small) {
            Err(LayerError::Refused { entry, .. }) => assert_eq!(entry, b"a"),
            other => panic!("{other:?}"),
        }
        let few = Limits {
            max_bytes: u64::MAX,
            max_entries: 1,
        };
        match unpack_layer(&layer, &root, few) {
            Err(LayerError::Refused { entry, .. }) => assert_eq!(entry, b"b"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_archives_are_invalid_not_panics() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        let good = raw_tar(&[(b"a", b'0', b"", b"hello")]);
        let layer = t.path().join("l.tar");
        for bad in [
            good[..700].to_vec(),
            {
                let mut g = good.clone();
                g[10] ^= 1;
                g
            },
            b"not a tar at all".to_vec(),
        ] {
            fs::write(&layer, &bad).unwrap();
            assert!(
                matches!(unpack(&layer, &root), Err(LayerError::Invalid { .. })),
                "{bad:?}"
            );
        }
    }

    /// The entry list that describes the tree at `src` exactly as a diff finds it.
    fn entries_of(src: &Path) -> Vec<EntrySpec> {
        let mut out = Vec::new();
        let mut todo = vec![src.to_path_buf()];
        while let Some(dir) = todo.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let md = fs::symlink_metadata(&path).unwrap();
                let name = path
                    .strip_prefix(src)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec();
                let (kind, link, digest) = if md.is_dir() {
                    todo.push(path.clone());
                    (Kind::Dir, Vec::new(), None)
                } else if md.file_type().is_symlink() {
                    let target = fs::read_link(&path).unwrap();
                    (Kind::Symlink, target.as_os_str().as_bytes().to_vec(), None)
                } else {
                    let data = fs::read(&path).unwrap();
                    (
                        Kind::File,
                        Vec::new(),
                        Some(*blake3::hash(&data).as_bytes()),
                    )
                };
                out.push(EntrySpec {
                    name,
                    kind,
                    source: Some(path),
                    link,
                    blake3: digest,
                    mode: md.mode() & 0o7777,
                    uid: u64::from(md.uid()),
                    gid: u64::from(md.gid()),
                    mtime_ns: None,
                });
            }
        }
        out
    }

    #[test]
    fn an_entry_list_writes_the_bytes_a_diff_writes() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("d/e")).unwrap();
        fs::create_dir_all(src.join("d-x")).unwrap();
        fs::write(src.join("d/file"), b"hello").unwrap();
        fs::set_permissions(src.join("d/file"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(src.join("d-x/big"), vec![7u8; 3 * GZIP_BLOCK + 5]).unwrap();
        symlink("../d/file", src.join("d/e/sym")).unwrap();
        let long = "x".repeat(150);
        fs::write(src.join(&long), b"long").unwrap();
        let opts = WriteOptions {
            source_date_epoch: Some(2_000_000_000),
        };
        let tree = write_tree_layer(&src, &t.path().join("tree.tgz"), &opts).unwrap();
        let mut entries = entries_of(&src);
        entries.reverse(); // any order: the writer sorts like the diff (d/... before d-x)
        let listed = write_entries_layer(&entries, &t.path().join("list.tgz"), &opts).unwrap();
        assert_eq!(listed, tree);
        assert_eq!(
            fs::read(t.path().join("list.tgz")).unwrap(),
            fs::read(t.path().join("tree.tgz")).unwrap()
        );
    }

    #[test]
    fn an_entry_list_unpacks_to_what_it_says() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("content"), b"data").unwrap();
        symlink("content", t.path().join("a-link")).unwrap();
        let entries = vec![
            EntrySpec {
                name: b"app/bin/tool".to_vec(),
                kind: Kind::File,
                source: Some(t.path().join("content")),
                link: Vec::new(),
                blake3: Some(*blake3::hash(b"data").as_bytes()),
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime_ns: Some(1_500_000_000_700_000_000),
            },
            EntrySpec {
                name: b"app".to_vec(),
                kind: Kind::Dir,
                source: None,
                link: Vec::new(),
                blake3: None,
                mode: 0o750,
                uid: 0,
                gid: 0,
                mtime_ns: Some(1_400_000_000_000_000_000),
            },
            EntrySpec {
                name: b"app/link".to_vec(),
                kind: Kind::Symlink,
                source: Some(t.path().join("a-link")),
                link: b"bin/tool".to_vec(),
                blake3: None,
                mode: 0o777,
                uid: 0,
                gid: 0,
                mtime_ns: None,
            },
        ];
        let out = t.path().join("layer.tgz");
        let info = write_entries_layer(&entries, &out, &WriteOptions::default()).unwrap();
        assert_eq!(info.entries, 3);
        let listing = list_layer(&out, Limits::default()).unwrap();
        assert_eq!(
            listing,
            vec![
                (b"app".to_vec(), ListedKind::Dir),
                (b"app/bin/tool".to_vec(), ListedKind::File),
                (b"app/link".to_vec(), ListedKind::Symlink),
            ]
        );
        let dst = t.path().join("dst");
        fs::create_dir(&dst).unwrap();
        unpack(&out, &dst).unwrap();
        let tool = fs::metadata(dst.join("app/bin/tool")).unwrap();
        assert_eq!(fs::read(dst.join("app/bin/tool")).unwrap(), b"data");
        assert_eq!((tool.mode() & 0o7777, tool.mtime()), (0o755, 1_500_000_000));
        let app = fs::metadata(dst.join("app")).unwrap();
        assert_eq!((app.mode() & 0o7777, app.mtime()), (0o750, 1_400_000_000));
        assert_eq!(
            fs::read_link(dst.join("app/link")).unwrap(),
            Path::new("bin/tool")
        );
        let link_src = fs::symlink_metadata(t.path().join("a-link")).unwrap();
        let link_dst = fs::symlink_metadata(dst.join("app/link")).unwrap();
        assert_eq!(link_dst.mtime(), link_src.mtime());
    }

    #[test]
    fn a_source_that_is_not_what_was_hashed_stops_the_write() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("f"), b"edited").unwrap();
        fs::create_dir(t.path().join("dir")).unwrap();
        let file = |name: &[u8], source: &str, digest: &[u8]| EntrySpec {
            name: name.to_vec(),
            kind: Kind::File,
            source: Some(t.path().join(source)),
            link: Vec::new(),
            blake3: Some(*blake3::hash(digest).as_bytes()),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: None,
        };
        let out = t.path().join("layer.tgz");
        let write = |e: EntrySpec| write_entries_layer(&[e], &out, &WriteOptions::default());
        match write(file(b"f", "f", b"planned")) {
            Err(LayerError::Invalid { entry, reason }) => {
                assert_eq!(entry, b"f");
                assert!(reason.starts_with("planned blake3:"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        match write(file(b"d", "dir", b"")) {
            Err(LayerError::Invalid { reason, .. }) => assert!(reason.contains("regular file")),
            other => panic!("{other:?}"),
        }
        match write(file(b"gone", "gone", b"")) {
            Err(LayerError::Io { path, source }) => {
                assert_eq!(path, t.path().join("gone"));
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
        // Nothing is left behind: no blob, no partial file.
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_bad_entry_list_is_a_usage_error() {
        let t = tempfile::tempdir().unwrap();
        let dir = |name: &[u8]| EntrySpec {
            name: name.to_vec(),
            kind: Kind::Dir,
            source: None,
            link: Vec::new(),
            blake3: None,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime_ns: Some(0),
        };
        let out = t.path().join("layer.tgz");
        let opts = WriteOptions::default();
        for bad in [
            vec![dir(b"a/")],
            vec![dir(b"./a")],
            vec![dir(b"a/../b")],
            vec![dir(b"")],
            vec![dir(b"a"), dir(b"b"), dir(b"a")],
            vec![EntrySpec {
                kind: Kind::File,
                ..dir(b"f")
            }],
            vec![EntrySpec {
                kind: Kind::Symlink,
                ..dir(b"l")
            }],
            vec![EntrySpec {
                kind: Kind::Fifo,
                ..dir(b"p")
            }],
            vec![EntrySpec {
                mtime_ns: None,
                ..dir(b"m")
            }],
        ] {
            assert!(
                matches!(
                    write_entries_layer(&bad, &out, &opts),
                    Err(LayerError::Usage(_))
                ),
                "{bad:?}"
            );
        }
        assert!(!out.exists());
    }

    #[test]
    fn a_listing_names_entries_as_the_unpacker_does() {
        let t = tempfile::tempdir().unwrap();
        let tar = raw_tar(&[
            (b"./", b'5', b"", b""),
            (b"./a/", b'5', b"", b""),
            (b"a//f", b'0', b"", b"data"),
            (b"a/h", b'1', b"a/f", b""),
            (b"a/s", b'2', b"f", b""),
            (b"a/.wh.old", b'0', b"", b""),
            (b"a/.wh..wh..opq", b'0', b"", b""),
            (b"p", b'6', b"", b""),
            (b"old-dir", b'\0', b"", b""),
            (b"old-dir/", b'\0', b"", b""),
        ]);
        let path = t.path().join("layer.tar");
        fs::write(&path, tar).unwrap();
        let listing = list_layer(&path, Limits::default()).unwrap();
        let names: Vec<(&[u8], ListedKind)> =
            listing.iter().map(|(n, k)| (n.as_slice(), *k)).collect();
        assert_eq!(
            names,
            vec![
                (&b""[..], ListedKind::Dir),
                (b"a", ListedKind::Dir),
                (b"a/f", ListedKind::File),
                (b"a/h", ListedKind::HardLink),
                (b"a/s", ListedKind::Symlink),
                (b"a/.wh.old", ListedKind::File),
                (b"a/.wh..wh..opq", ListedKind::File),
                (b"p", ListedKind::Other),
                (b"old-dir", ListedKind::File),
                (b"old-dir", ListedKind::Dir),
            ]
        );
        fs::write(&path, raw_tar(&[(b"../x", b'0', b"", b"")])).unwrap();
        assert!(matches!(
            list_layer(&path, Limits::default()),
            Err(LayerError::Refused { .. })
        ));
    }
}
