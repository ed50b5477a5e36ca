//! `.dockerignore` matching on arbitrary input.
//!
//! The input is a `.dockerignore` file, a NUL byte, then candidate paths separated by '\n'
//! (raw bytes, not necessarily UTF-8). Beyond "no panic", it checks the two promises the
//! context walker relies on:
//! - a normalised path never leaves the context: it has no `..` component, is not absolute and
//!   is never the root, so `..` cannot smuggle a path past the patterns;
//! - pruning is sound: when a directory is excluded and `dir_may_contain_exceptions` says no,
//!   every path below it is excluded too (the walker skips the whole subtree on that answer).
#![no_main]

use _core::ignore::{normalize_rel, read_dockerignore, DockerIgnore};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (text, paths) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let patterns = read_dockerignore(&String::from_utf8_lossy(text));
    let Ok(matcher) = DockerIgnore::new(&patterns) else {
        return;
    };
    for raw in paths.split(|&b| b == b'\n').take(64) {
        let Some(rel) = normalize_rel(raw) else {
            continue;
        };
        assert!(
            !rel.is_empty() && rel != b".",
            "root survived normalisation"
        );
        assert!(
            !rel.starts_with(b"/"),
            "absolute path survived normalisation"
        );
        assert!(
            rel.split(|&b| b == b'/')
                .all(|c| c != b".." && c != b"." && !c.is_empty()),
            "unclean path survived normalisation: {:?}",
            String::from_utf8_lossy(&rel)
        );
        let excluded = matcher.matches(&rel);
        // Every ancestor directory of `rel`, shortest first.
        for (i, _) in rel.iter().enumerate().filter(|&(_, &b)| b == b'/') {
            let dir = &rel[..i];
            if matcher.matches(dir) && !matcher.dir_may_contain_exceptions(dir) {
                assert!(
                    excluded,
                    "{:?} is excluded and promises no exception below it, but {:?} is \
                     included (patterns {:?})",
                    String::from_utf8_lossy(dir),
                    String::from_utf8_lossy(&rel),
                    matcher.patterns()
                );
            }
        }
    }
});
