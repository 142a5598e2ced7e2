//! Small derived-state files kept next to the segments (the identity mapping, person-property columns): written
//! whole and atomically (temporary file, fsync, rename, directory fsync) with an FNV-1a checksum at the end, read
//! back only when the checksum matches. They are caches of state the metadata store holds: an unreadable one is
//! ignored and rebuilt, never trusted.

use std::io::Write;
use std::path::Path;

/// 64-bit FNV-1a.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Writes `body` and its checksum to `path` atomically (creating the parent directory).
pub fn write(path: &Path, mut body: Vec<u8>) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("a sidecar file needs a parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let sum = checksum(&body);
    body.extend_from_slice(&sum.to_le_bytes());
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The body of the file at `path` that starts with `magic`, checksum verified (`Ok(None)`: no such file).
pub fn read(path: &Path, magic: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    if bytes.len() < magic.len() + 8 || !bytes.starts_with(magic) {
        return Err(format!("{}: not the expected kind of file", path.display()));
    }
    let sum = u64::from_le_bytes(bytes[bytes.len() - 8..].try_into().unwrap_or_default());
    bytes.truncate(bytes.len() - 8);
    if checksum(&bytes) != sum {
        return Err(format!("{}: checksum mismatch", path.display()));
    }
    bytes.drain(..magic.len());
    Ok(Some(bytes))
}

/// Appends little-endian values to a body.
#[derive(Debug, Default)]
pub struct Writer {
    /// The bytes so far.
    pub bytes: Vec<u8>,
}

impl Writer {
    /// A body that starts with `magic`.
    pub fn new(magic: &[u8]) -> Writer {
        Writer {
            bytes: magic.to_vec(),
        }
    }

    /// Appends a `u64`.
    pub fn u64(&mut self, v: u64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    /// Appends an `i64`.
    pub fn i64(&mut self, v: i64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    /// Appends a `u32`.
    pub fn u32(&mut self, v: u32) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    /// Appends a length-prefixed (`u32`) string.
    pub fn str(&mut self, v: &str) {
        self.u32(v.len() as u32);
        self.bytes.extend_from_slice(v.as_bytes());
    }
}

/// Reads little-endian values from a body; every read fails cleanly past the end.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `bytes` from the start.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err("truncated".into());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// Reads a `u64`.
    pub fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }

    /// Reads an `i64`.
    pub fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }

    /// Reads a `u32`.
    pub fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }

    /// Reads a count of items of `item_bytes` each, refused when the rest of the body cannot hold them.
    pub fn count(&mut self, item_bytes: usize) -> Result<usize, String> {
        let n = self.u64()?;
        if n.saturating_mul(item_bytes.max(1) as u64) > self.bytes.len() as u64 {
            return Err(format!("a count ({n}) larger than the file"));
        }
        Ok(n as usize)
    }

    /// Reads a length-prefixed (`u32`) UTF-8 string.
    pub fn str(&mut self) -> Result<&'a str, String> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| "not UTF-8".to_owned())
    }

    /// Reads `n` `u32`s.
    pub fn u32s(&mut self, n: usize) -> Result<Vec<u32>, String> {
        Ok(self
            .take(n.checked_mul(4).ok_or("too long")?)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Reads `n` `i64`s.
    pub fn i64s(&mut self, n: usize) -> Result<Vec<i64>, String> {
        Ok(self
            .take(n.checked_mul(8).ok_or("too long")?)?
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/file");
        assert_eq!(read(&path, b"MAGIC").unwrap(), None);
        let mut w = Writer::new(b"MAGIC");
        w.u64(3);
        w.i64(-5);
        w.str("héllo");
        w.u32(7);
        write(&path, w.bytes).unwrap();
        let body = read(&path, b"MAGIC").unwrap().unwrap();
        let mut r = Reader::new(&body);
        assert_eq!(r.u64().unwrap(), 3);
        assert_eq!(r.i64().unwrap(), -5);
        assert_eq!(r.str().unwrap(), "héllo");
        assert_eq!(r.u32s(1).unwrap(), [7]);
        assert!(r.is_empty());
        assert!(r.u32().is_err(), "past the end");
        assert!(read(&path, b"OTHER").is_err());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[7] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        assert!(read(&path, b"MAGIC").unwrap_err().contains("checksum"));
        let mut r = Reader::new(&[1, 0, 0, 0, 0, 0, 0, 0]);
        assert!(r.count(4).is_err(), "a count the file cannot hold");
    }
}
