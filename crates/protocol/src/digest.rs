//! Content digests: size, SHA-256 and CRC-64/NVME computed in one pass, off the I/O thread.
//!
//! Owns the chunked hashing pipeline that the writer and the local verifier share, and the text
//! forms stored in manifests: lowercase hex SHA-256, and base64 of the big-endian CRC-64/NVME,
//! which is byte for byte what S3 returns as `ChecksumCRC64NVME`. It knows nothing about paths
//! or validity.
//!
//! Why a thread: SHA-256 (SHA-NI, roughly 1–2 GB/s per core) is the slowest stage of a
//! checkpoint write once the page cache absorbs the bytes, while CRC-64/NVME (carry-less
//! multiply, >10 GB/s) is nearly free. So SHA-256 of chunk N runs on its own thread while the
//! producer writes chunk N+1 and folds it into the CRC; the write costs about
//! max(SHA-256, write + CRC) instead of their sum.

use std::io::{self, Read};
use std::sync::mpsc;
use std::thread;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// Bytes per write/read call and per hashing job: big enough that syscall and channel costs
/// vanish, small enough that the few buffers in flight stay cheap.
pub(crate) const CHUNK_BYTES: usize = 8 << 20;

/// Buffers per pipeline: one being filled, one being hashed, one queued.
const BUFFERS: usize = 3;

/// What a file's bytes hash to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileDigest {
    /// Number of bytes.
    pub size: u64,
    /// SHA-256 of the bytes.
    pub sha256: [u8; 32],
    /// CRC-64/NVME of the bytes.
    pub crc64nvme: u64,
}

impl FileDigest {
    /// Digest of an in-memory buffer, on the calling thread.
    pub fn of(bytes: &[u8]) -> FileDigest {
        let mut crc = crc64fast_nvme::Digest::new();
        crc.write(bytes);
        FileDigest {
            size: bytes.len() as u64,
            sha256: Sha256::digest(bytes).into(),
            crc64nvme: crc.sum64(),
        }
    }

    /// The SHA-256 as the manifest stores it (lowercase hex).
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }

    /// The CRC as the manifest stores it and S3 reports it.
    pub fn crc64nvme_base64(&self) -> String {
        crc64nvme_to_base64(self.crc64nvme)
    }
}

/// Encodes a CRC-64/NVME the way S3 prints `ChecksumCRC64NVME`: base64 (standard alphabet,
/// padded) of the 8 big-endian bytes, always 12 characters.
pub fn crc64nvme_to_base64(crc: u64) -> String {
    STANDARD.encode(crc.to_be_bytes())
}

/// Decodes [`crc64nvme_to_base64`]'s form; `None` unless it is canonical and exactly 8 bytes.
pub fn crc64nvme_from_base64(text: &str) -> Option<u64> {
    // Length first, so hostile input never makes us allocate.
    if text.len() != 12 {
        return None;
    }
    let mut bytes = [0u8; 8];
    match STANDARD.decode_slice(text, &mut bytes) {
        Ok(8) => Some(u64::from_be_bytes(bytes)),
        _ => None,
    }
}

/// Decodes a hex SHA-256, either case (observations from other tools may be upper case).
pub(crate) fn sha256_from_hex(text: &str) -> Option<[u8; 32]> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes).ok()?;
    Some(bytes)
}

/// True for exactly 64 lowercase hex digits: the one spelling a manifest may use.
pub(crate) fn is_canonical_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The producer's end of a hashing pipeline: hands out chunk buffers and takes them back full.
/// The CRC (cheap) is computed here, on the producer's thread; SHA-256 (the slow stage) on
/// the pipeline's thread, in submission order.
pub(crate) struct HashFeed {
    jobs: mpsc::Sender<Vec<u8>>,
    returned: mpsc::Receiver<Vec<u8>>,
    allocated: usize,
    crc: crc64fast_nvme::Digest,
    size: u64,
}

impl HashFeed {
    /// An empty buffer with [`CHUNK_BYTES`] capacity: a recycled one if the hasher is done
    /// with it, a new one while fewer than [`BUFFERS`] exist, else waits for the hasher.
    pub(crate) fn buffer(&mut self) -> io::Result<Vec<u8>> {
        let recycled = match self.returned.try_recv() {
            Ok(buf) => Some(buf),
            Err(_) if self.allocated < BUFFERS => None,
            Err(_) => Some(self.returned.recv().map_err(|_| hasher_gone())?),
        };
        Ok(match recycled {
            Some(mut buf) => {
                buf.clear();
                buf
            }
            None => {
                self.allocated += 1;
                Vec::with_capacity(CHUNK_BYTES)
            }
        })
    }

    /// Queues a chunk for hashing. The caller must already have written it wherever it goes:
    /// ownership moves to the hasher.
    pub(crate) fn submit(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        self.crc.write(&chunk);
        self.size += chunk.len() as u64;
        self.jobs.send(chunk).map_err(|_| hasher_gone())
    }
}

fn hasher_gone() -> io::Error {
    io::Error::other("checkpoint hashing thread stopped unexpectedly")
}

/// Runs `body` with a feed whose chunks are hashed on a second thread, and returns `body`'s
/// result together with the digest of every chunk it submitted.
pub(crate) fn hashed<R>(
    body: impl FnOnce(&mut HashFeed) -> io::Result<R>,
) -> io::Result<(R, FileDigest)> {
    thread::scope(|scope| {
        let (jobs, job_queue) = mpsc::channel::<Vec<u8>>();
        let (give_back, returned) = mpsc::channel::<Vec<u8>>();
        let hasher = thread::Builder::new()
            .name("spotcheck-sha256".into())
            .spawn_scoped(scope, move || -> [u8; 32] {
                let mut sha = Sha256::new();
                for chunk in job_queue {
                    sha.update(&chunk);
                    // The feed may already be gone (body finished); the buffer is then simply
                    // freed, which is all recycling would have done.
                    let _ = give_back.send(chunk);
                }
                sha.finalize().into()
            })?;
        let mut feed = HashFeed {
            jobs,
            returned,
            allocated: 0,
            crc: crc64fast_nvme::Digest::new(),
            size: 0,
        };
        let result = body(&mut feed);
        let (crc64nvme, size) = (feed.crc.sum64(), feed.size);
        // Closing the job channel ends the hasher's loop.
        drop(feed);
        let sha256 = hasher.join().map_err(|_| hasher_gone())?;
        result.map(|r| {
            let digest = FileDigest {
                size,
                sha256,
                crc64nvme,
            };
            (r, digest)
        })
    })
}

/// Digest of everything `reader` yields, reading [`CHUNK_BYTES`] at a time while the previous
/// chunk is hashed.
pub(crate) fn hash_reader(reader: &mut impl Read) -> io::Result<FileDigest> {
    let ((), digest) = hashed(|feed| loop {
        let mut buf = feed.buffer()?;
        reader
            .by_ref()
            .take(CHUNK_BYTES as u64)
            .read_to_end(&mut buf)?;
        let last = buf.len() < CHUNK_BYTES;
        feed.submit(buf)?;
        if last {
            return Ok(());
        }
    })?;
    Ok(digest)
}

/// Digest of an in-memory buffer using two threads (SHA-256 on one, CRC on the other), for
/// callers that need the bytes anyway.
pub(crate) fn digest_parallel(bytes: &[u8]) -> io::Result<FileDigest> {
    thread::scope(|scope| {
        let sha = thread::Builder::new()
            .name("spotcheck-sha".into())
            .spawn_scoped(scope, || -> [u8; 32] { Sha256::digest(bytes).into() })?;
        let mut crc = crc64fast_nvme::Digest::new();
        crc.write(bytes);
        let sha256 = sha.join().map_err(|_| hasher_gone())?;
        Ok(FileDigest {
            size: bytes.len() as u64,
            sha256,
            crc64nvme: crc.sum64(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64nvme_check_value_and_s3_encoding() {
        // The catalogued check value of CRC-64/NVME over "123456789".
        let d = FileDigest::of(b"123456789");
        assert_eq!(d.crc64nvme, 0xAE8B_1486_0A79_9888);
        assert_eq!(d.crc64nvme_base64(), "rosUhgp5mIg=");
        // S3 reports an empty object's CRC-64/NVME as "AAAAAAAAAAA=".
        assert_eq!(FileDigest::of(b"").crc64nvme_base64(), "AAAAAAAAAAA=");
        assert_eq!(
            d.sha256_hex(),
            "15e2b0d3c33891ebb0f1ef609ec419420c20e320ce94c65fbc8c3312448eb225"
        );
    }

    #[test]
    fn crc_base64_round_trips_and_is_strict() {
        for crc in [0, 1, u64::MAX, 0xAE8B_1486_0A79_9888] {
            assert_eq!(crc64nvme_from_base64(&crc64nvme_to_base64(crc)), Some(crc));
        }
        for bad in [
            "",
            "rosUhgp5mIg",
            "rosUhgp5mIh=",
            "rosUhgp5mIg==",
            "rosUhgp5mI*=",
            "AAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(crc64nvme_from_base64(bad), None, "{bad}");
        }
    }

    #[test]
    fn pipelined_digest_equals_one_shot_digest_across_chunk_boundaries() {
        for len in [0, 1, CHUNK_BYTES - 1, CHUNK_BYTES, 2 * CHUNK_BYTES + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let piped = hash_reader(&mut data.as_slice()).unwrap();
            assert_eq!(piped, FileDigest::of(&data), "len {len}");
            assert_eq!(digest_parallel(&data).unwrap(), piped, "len {len}");
        }
    }
}
