//! One segment file of a topic's log: records appended back to back, each framed as
//!
//! ```text
//!  ┌──────────────┬──────────────┬───────────────────────┐
//!  │ len: u32 LE  │ crc32: u32 LE│ payload (len bytes)   │   crc32 of the payload
//!  └──────────────┴──────────────┴───────────────────────┘
//! ```
//!
//! A segment is named by the offset of its first record (`00000000000000000042.log`), so the
//! offset of every record follows from its segment's name and its index in the file. A crash
//! can leave a torn record at the end of the newest segment (it was never acknowledged: the
//! fsync had not returned); [`recover`] finds the first frame whose length or checksum does not
//! hold and cuts the file there.

use std::{
    fs::File,
    io::{self, BufReader, Read},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

/// Bytes of a record's frame header.
pub const HEADER: u64 = 8;

/// The largest payload a frame may carry; anything larger read back is corruption.
pub const MAX_PAYLOAD: u32 = 64 * 1024 * 1024;

/// The file name of the segment whose first record is `base`.
pub fn file_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// The base offsets of the segments in `dir`, oldest first.
pub fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = name
            .strip_suffix(".log")
            .and_then(|b| b.parse::<u64>().ok())
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Appends `payload`'s frame to `out`.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("payload checked against MAX_PAYLOAD");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// What [`recover`] found in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Whole records in the segment.
    pub records: u64,
    /// Bytes they take (the file's length after recovery).
    pub bytes: u64,
    /// Bytes cut from a torn or corrupt tail.
    pub cut: u64,
}

/// Counts the whole records of the segment at `path` and truncates (and syncs) the file after
/// the last one.
pub fn recover(path: &Path) -> io::Result<Recovered> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let length = file.metadata()?.len();
    let mut reader = Reader::new(BufReader::with_capacity(256 * 1024, &file));
    let mut records = 0;
    while reader.next_frame()?.is_some() {
        records += 1;
    }
    let bytes = reader.position;
    if bytes < length {
        file.set_len(bytes)?;
        file.sync_all()?;
    }
    Ok(Recovered {
        records,
        bytes,
        cut: length - bytes,
    })
}

/// Reads frames from the start of a segment; stops (returns `None`) at the end or at the
/// first frame that is incomplete or fails its checksum.
pub struct Reader<R> {
    inner: R,
    /// Bytes consumed by the whole frames read so far.
    pub position: u64,
}

impl<R: Read> Reader<R> {
    /// A reader at the start of a segment.
    pub fn new(inner: R) -> Self {
        Self { inner, position: 0 }
    }

    /// The next whole frame's payload.
    pub fn next_frame(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut header = [0u8; HEADER as usize];
        if !read_full(&mut self.inner, &mut header)? {
            return Ok(None);
        }
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len > MAX_PAYLOAD {
            return Ok(None);
        }
        let mut payload = vec![0; len as usize];
        if !read_full(&mut self.inner, &mut payload)? || crc32fast::hash(&payload) != crc {
            return Ok(None);
        }
        self.position += HEADER + u64::from(len);
        Ok(Some(payload))
    }
}

/// Fills `buf`; `false` when the input ended first (a torn frame counts as the end).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The segment being appended to.
#[derive(Debug)]
pub struct Active {
    /// Its file.
    pub file: File,
    /// Its path.
    pub path: PathBuf,
    /// Offset of its first record.
    pub base: u64,
    /// Records in it.
    pub records: u64,
    /// Bytes of whole, synced records (where the next write goes).
    pub bytes: u64,
}

impl Active {
    /// Opens (creating if needed) the segment `base` in `dir`, holding `records` records in
    /// `bytes` bytes.
    pub fn open(dir: &Path, base: u64, records: u64, bytes: u64) -> io::Result<Self> {
        let path = dir.join(file_name(base));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        Ok(Self {
            file,
            path,
            base,
            records,
            bytes,
        })
    }

    /// Writes `frames` (holding `count` records) after the last whole record and syncs them.
    /// On failure the file is cut back to its whole records, so a later append starts clean
    /// and nothing half-written is ever read as a record.
    pub fn append(&mut self, frames: &[u8], count: u64) -> io::Result<()> {
        let written = self
            .file
            .write_all_at(frames, self.bytes)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.bytes += frames.len() as u64;
                self.records += count;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.bytes);
                Err(e)
            }
        }
    }

    /// The offset the next record gets.
    pub fn next_offset(&self) -> u64 {
        self.base + self.records
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn frames(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode(p, &mut out);
        }
        out
    }

    #[test]
    fn records_written_are_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Active::open(dir.path(), 7, 0, 0).unwrap();
        seg.append(&frames(&[b"one", b"two"]), 2).unwrap();
        seg.append(&frames(&[b"three"]), 1).unwrap();
        assert_eq!(seg.next_offset(), 10);
        let file = File::open(dir.path().join(file_name(7))).unwrap();
        let mut r = Reader::new(BufReader::new(file));
        let mut got = Vec::new();
        while let Some(p) = r.next_frame().unwrap() {
            got.push(String::from_utf8(p).unwrap());
        }
        assert_eq!(got, ["one", "two", "three"]);
        assert_eq!(list(dir.path()).unwrap(), [7]);
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_cut_on_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(0));
        let whole = frames(&[b"kept", b"also kept"]);
        let mut torn = frames(&[b"half written"]);
        torn.truncate(torn.len() - 3);
        let mut f = File::create(&path).unwrap();
        f.write_all(&whole).unwrap();
        f.write_all(&torn).unwrap();
        drop(f);
        let r = recover(&path).unwrap();
        assert_eq!(r.records, 2);
        assert_eq!(r.bytes, whole.len() as u64);
        assert_eq!(r.cut, torn.len() as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole.len() as u64);

        // A flipped bit in the last record's payload: its checksum fails, it is cut.
        let mut bad = frames(&[b"kept", b"flipped"]);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert_eq!(recover(&path).unwrap().records, 1);
    }
}
