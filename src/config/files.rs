//! Reading the files a configuration names (`sites.lua`, `scripts/<name>.lua`, `tls.ca`,
//! `tls.client_cert`, `tls.client_key`): regular files only, and no larger than a limit, so a
//! path to a FIFO (which would block the read for good) or to `/dev/zero` (which never ends) is
//! a clear error instead of a hang or a memory exhaustion.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// Largest `sites.lua`: 10,000 sites take about 2 MB.
pub(crate) const MAX_CONFIG_FILE: u64 = 16 * 1024 * 1024;
/// Largest hook script.
pub(crate) const MAX_SCRIPT_FILE: u64 = 1024 * 1024;
/// Largest TLS file: a CA bundle with every public root is about 250 KB.
pub(crate) const MAX_PEM_FILE: u64 = 1024 * 1024;

/// The contents of the regular file at `path`, at most `max` bytes.
pub(crate) fn read_limited(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    // Looked at before opening: opening a FIFO blocks until someone writes to it.
    check(&std::fs::metadata(path)?, max)?;
    let file = File::open(path)?;
    // What was opened may not be what was looked at, if the path changed in between.
    let metadata = file.metadata()?;
    check(&metadata, max)?;
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_large(max));
    }
    Ok(bytes)
}

fn check(metadata: &std::fs::Metadata, max: u64) -> io::Result<()> {
    let kind = metadata.file_type();
    let what = if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    };
    if let Some(what) = what {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file ({what})"),
        ));
    }
    if metadata.len() > max {
        return Err(too_large(max));
    }
    Ok(())
}

fn too_large(max: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("larger than {} KiB", max / 1024),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small");
        std::fs::write(&small, b"hello").unwrap();
        assert_eq!(read_limited(&small, 5).unwrap(), b"hello");
        let err = read_limited(&small, 4).unwrap_err().to_string();
        assert!(err.contains("larger than 0 KiB"), "{err}");
        let cases = [
            (Path::new("/dev/zero"), "a character device"),
            (dir.path(), "a directory"),
        ];
        for (path, want) in cases {
            let err = read_limited(path, 1 << 20).unwrap_err().to_string();
            assert!(err.contains(want), "{}: {err}", path.display());
        }
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let err = read_limited(&fifo, 1 << 20).unwrap_err().to_string();
            assert!(err.contains("a FIFO"), "{err}");
        }
    }
}
