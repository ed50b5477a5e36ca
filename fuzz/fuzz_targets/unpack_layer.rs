//! Layer unpacking on arbitrary archives (plain tar or gzip).
//!
//! Each input is written to a file and unpacked into an empty root that sits beside a sentinel
//! directory. Beyond "no panic", it checks that whatever the archive says (absolute names,
//! `..`, symlinks then writes through them, hard links out, whiteouts of `..`), nothing outside
//! the root is created, changed or removed.
#![no_main]

use std::fs;
use std::path::Path;

use _core::layer::{unpack_layer, Limits};
use libfuzzer_sys::fuzz_target;

/// What the unpacker may expand one input to: enough for any interesting structure, small
/// enough that a "bomb" input is refused quickly instead of filling the disk.
const LIMITS: Limits = Limits {
    max_bytes: 8 << 20,
    max_entries: 4096,
};

fn listing(dir: &Path) -> Vec<(std::ffi::OsString, u64)> {
    let mut out: Vec<_> = fs::read_dir(dir)
        .expect("read the sandbox")
        .map(|e| {
            let e = e.expect("read a sandbox entry");
            let meta = fs::symlink_metadata(e.path()).expect("stat a sandbox entry");
            (e.file_name(), meta.len())
        })
        .collect();
    out.sort();
    out
}

fuzz_target!(|data: &[u8]| {
    let base = tempfile::tempdir().expect("create a temp dir");
    let sandbox = base.path().join("sandbox");
    let root = sandbox.join("root");
    let outside = sandbox.join("outside");
    fs::create_dir_all(&root).expect("create the root");
    fs::create_dir_all(&outside).expect("create the sentinel");
    fs::write(outside.join("file"), b"sentinel").expect("write the sentinel");
    let layer = base.path().join("layer");
    fs::write(&layer, data).expect("write the layer");

    let before_base = listing(base.path());
    let before_sandbox = listing(&sandbox);
    let _ = unpack_layer(&layer, &root, LIMITS);

    assert_eq!(
        listing(base.path()),
        before_base,
        "the archive changed the temp dir"
    );
    assert_eq!(
        listing(&sandbox),
        before_sandbox,
        "the archive escaped the root"
    );
    assert_eq!(
        listing(&outside),
        vec![("file".into(), 8)],
        "the archive reached the sentinel"
    );
    assert_eq!(
        fs::read(outside.join("file")).expect("read the sentinel"),
        b"sentinel",
        "the archive changed the sentinel"
    );
    // The root may hold directories without write or search permission; restore them so the
    // temp dir can be removed (root can remove them anyway, a user could not).
    make_removable(&root);
});

fn make_removable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            make_removable(&e.path());
        }
    }
}
