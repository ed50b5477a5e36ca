//! Streaming content digests (sha256 for OCI blobs, blake3 for cache keys) and verification.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::Digest as _;

const CHUNK: usize = 1 << 20;
/// Files at least this large are hashed with BLAKE3's multi-threaded mode over an mmap.
pub const BLAKE3_PARALLEL_MIN: u64 = 4 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Blake3,
}

impl Algorithm {
    pub fn parse(name: &str) -> Result<Self, DigestError> {
        match name {
            "sha256" => Ok(Algorithm::Sha256),
            "blake3" => Ok(Algorithm::Blake3),
            other => Err(DigestError::new(
                other,
                "unknown algorithm (expected sha256 or blake3)",
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Blake3 => "blake3",
        }
    }
}

/// A digest string that is not `<algorithm>:<64 lowercase hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestError {
    pub digest: String,
    pub reason: String,
}

impl DigestError {
    fn new(digest: &str, reason: &str) -> Self {
        DigestError {
            digest: digest.to_string(),
            reason: reason.to_string(),
        }
    }
}

impl fmt::Display for DigestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid digest {:?}: {}", self.digest, self.reason)
    }
}

impl std::error::Error for DigestError {}

/// A parsed `algorithm:hex` digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    pub algorithm: Algorithm,
    pub bytes: [u8; 32],
}

impl Digest {
    pub fn parse(text: &str) -> Result<Self, DigestError> {
        let (algo, hex_part) = text
            .split_once(':')
            .ok_or_else(|| DigestError::new(text, "expected <algorithm>:<hex>"))?;
        let algorithm = Algorithm::parse(algo)
            .map_err(|_| DigestError::new(text, "unknown algorithm (expected sha256 or blake3)"))?;
        if hex_part.len() != 64 {
            return Err(DigestError::new(
                text,
                &format!("expected 64 hex characters, found {}", hex_part.len()),
            ));
        }
        if !hex_part
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError::new(
                text,
                "the hex part must be lowercase hexadecimal",
            ));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes)
            .map_err(|e| DigestError::new(text, &e.to_string()))?;
        Ok(Digest { algorithm, bytes })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), hex::encode(self.bytes))
    }
}

/// An incremental hasher for either algorithm, counting the bytes it saw.
#[derive(Clone)]
pub enum StreamHasher {
    Sha256(sha2::Sha256, u64),
    Blake3(Box<blake3::Hasher>, u64),
}

impl StreamHasher {
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => StreamHasher::Sha256(sha2::Sha256::new(), 0),
            Algorithm::Blake3 => StreamHasher::Blake3(Box::new(blake3::Hasher::new()), 0),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            StreamHasher::Sha256(..) => Algorithm::Sha256,
            StreamHasher::Blake3(..) => Algorithm::Blake3,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            StreamHasher::Sha256(h, n) => {
                h.update(data);
                *n += data.len() as u64;
            }
            StreamHasher::Blake3(h, n) => {
                h.update(data);
                *n += data.len() as u64;
            }
        }
    }

    pub fn size(&self) -> u64 {
        match self {
            StreamHasher::Sha256(_, n) | StreamHasher::Blake3(_, n) => *n,
        }
    }

    pub fn finish(&self) -> Digest {
        let bytes: [u8; 32] = match self {
            StreamHasher::Sha256(h, _) => h.clone().finalize().into(),
            StreamHasher::Blake3(h, _) => *h.finalize().as_bytes(),
        };
        Digest {
            algorithm: self.algorithm(),
            bytes,
        }
    }
}

pub fn digest_bytes(data: &[u8], algorithm: Algorithm) -> Digest {
    let mut h = StreamHasher::new(algorithm);
    h.update(data);
    h.finish()
}

/// Stream a file through the digest; returns the digest and the number of bytes read.
pub fn digest_file(path: &Path, algorithm: Algorithm) -> io::Result<(Digest, u64)> {
    let mut file = File::open(path)?;
    if algorithm == Algorithm::Blake3 {
        let len = file.metadata()?.len();
        if len >= BLAKE3_PARALLEL_MIN {
            let mut h = blake3::Hasher::new();
            h.update_mmap_rayon(path)?;
            return Ok((
                Digest {
                    algorithm,
                    bytes: *h.finalize().as_bytes(),
                },
                len,
            ));
        }
    }
    let mut h = StreamHasher::new(algorithm);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
    }
    Ok((h.finish(), h.size()))
}

/// The outcome of checking content against an expected digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub ok: bool,
    pub actual: Digest,
    pub size: u64,
}

pub fn verify_bytes(data: &[u8], expected: &Digest) -> Verification {
    let actual = digest_bytes(data, expected.algorithm);
    Verification {
        ok: actual == *expected,
        actual,
        size: data.len() as u64,
    }
}

pub fn verify_file(path: &Path, expected: &Digest) -> io::Result<Verification> {
    let (actual, size) = digest_file(path, expected.algorithm)?;
    Ok(Verification {
        ok: actual == *expected,
        actual,
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const EMPTY_BLAKE3: &str =
        "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

    #[test]
    fn known_digests_of_empty_input() {
        assert_eq!(
            digest_bytes(b"", Algorithm::Sha256).to_string(),
            EMPTY_SHA256
        );
        assert_eq!(
            digest_bytes(b"", Algorithm::Blake3).to_string(),
            EMPTY_BLAKE3
        );
    }

    #[test]
    fn parse_round_trips_and_rejects_garbage() {
        assert_eq!(
            Digest::parse(EMPTY_SHA256).unwrap().to_string(),
            EMPTY_SHA256
        );
        for bad in [
            "",
            "sha256",
            "sha256:",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:../../../../etc/passwd0000000000000000000000000000000000000000",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn file_digest_matches_bytes_digest_for_small_and_large_files() {
        let dir = tempfile::tempdir().unwrap();
        for size in [
            0usize,
            1,
            CHUNK - 1,
            CHUNK + 7,
            BLAKE3_PARALLEL_MIN as usize + 3,
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let p = dir.path().join(format!("f{size}"));
            File::create(&p).unwrap().write_all(&data).unwrap();
            for algo in [Algorithm::Sha256, Algorithm::Blake3] {
                let (d, n) = digest_file(&p, algo).unwrap();
                assert_eq!(n, size as u64);
                assert_eq!(d, digest_bytes(&data, algo));
            }
        }
    }

    #[test]
    fn verification_reports_mismatch() {
        let expected = Digest::parse(EMPTY_SHA256).unwrap();
        assert!(verify_bytes(b"", &expected).ok);
        let v = verify_bytes(b"x", &expected);
        assert!(!v.ok);
        assert_eq!(v.size, 1);
        assert_ne!(v.actual, expected);
    }
}
