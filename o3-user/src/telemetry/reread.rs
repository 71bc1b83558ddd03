//! Pre-opened files re-read with pread (the sampler's hot path reads procfs and sysfs this way).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A procfs or sysfs file opened once and re-read from offset 0 with pread into a reused
/// buffer: no open/close per sample, no allocation once the buffer has grown.
pub struct RereadFile {
    file: File,
    /// Zero-filled once and grown only when a read fills it; `len` bytes are valid.
    buf: Vec<u8>,
    len: usize,
}

impl RereadFile {
    pub fn open(path: &Path) -> io::Result<RereadFile> {
        Ok(RereadFile {
            file: File::open(path)?,
            buf: vec![0; 4096],
            len: 0,
        })
    }

    /// Reads the whole file again. Fails with ESRCH once the process it belongs to is gone.
    pub fn read(&mut self) -> io::Result<&str> {
        self.len = 0;
        loop {
            if self.buf.len() - self.len < 1024 {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            match self
                .file
                .read_at(&mut self.buf[self.len..], self.len as u64)
            {
                Ok(0) => break,
                Ok(n) => self.len += n,
                Err(e) => return Err(e),
            }
        }
        std::str::from_utf8(&self.buf[..self.len])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

impl RereadFile {
    /// The file parsed as one trimmed unsigned decimal (sysfs style), `None` when it is
    /// unreadable, empty, negative or not a number (e.g. `N/A`).
    pub fn read_u64(&mut self) -> Option<u64> {
        self.read().ok()?.trim().parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_file_rereads_and_reports_vanished() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "1 2 3").unwrap();
        let mut f = RereadFile::open(&p).unwrap();
        assert_eq!(f.read().unwrap(), "1 2 3");
        std::fs::write(&p, "4 5 6 7").unwrap();
        assert_eq!(f.read().unwrap(), "4 5 6 7");
        assert!(RereadFile::open(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn numbers_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n");
        let check = |text: &str, want: Option<u64>| {
            std::fs::write(&p, text).unwrap();
            assert_eq!(RereadFile::open(&p).unwrap().read_u64(), want, "{text:?}");
        };
        check("42\n", Some(42));
        check("", None);
        check("N/A\n", None);
        check("-5\n", None);
        check("garbage", None);
    }

    #[test]
    fn unlinked_file_still_reads_through_its_fd() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gone");
        std::fs::write(&p, "7").unwrap();
        let mut f = RereadFile::open(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        // An unlinked regular file stays readable through the open fd; sysfs files of a
        // removed device return ENODEV instead, which read() passes on as an error.
        assert_eq!(f.read_u64(), Some(7));
    }
}
