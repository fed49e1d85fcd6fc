//! Files: writing outputs atomically (a reader sees the old file or the
//! new one, never a torn one), and plain rendering of reports.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `contents` to `path` through a temporary file in the same
/// directory and a rename, so `path` is either untouched or complete.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_atomic_chunks(path, &[contents])
}

/// The name prefix of mpc's temporary files; the writer's process id follows.
const TEMP_PREFIX: &str = ".mpc-tmp-";

/// Removes the temporary files that killed mpc processes left in `dir`
/// (named with a process id that no longer runs), once per folder and
/// process. Only Linux says cheaply whether a process runs (/proc); elsewhere
/// nothing is removed.
fn clean_stale(dir: &Path) {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static DONE: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    if !Path::new("/proc/self").exists() {
        return;
    }
    let first = DONE.get_or_init(Default::default).lock().map(|mut d| d.insert(dir.to_path_buf())).unwrap_or(false);
    if !first {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A temporary file in `path`'s folder, to be renamed onto `path`: created
/// with the permissions a new file gets (0666 less the umask), not the
/// owner-only ones of a temporary file, since it becomes the user's output.
/// Named `.mpc-tmp-PID-...`, so that the leftovers of a killed process are
/// removed by the next one (see `clean_stale`).
pub fn temp_beside(path: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Said before the temporary file's name can stand in the error.
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(std::io::Error::other(format!("{} is not a folder", dir.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(std::io::Error::new(e.kind(), format!("the folder {} does not exist", dir.display())))
        }
        Err(e) => return Err(std::io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
    }
    clean_stale(dir);
    let prefix = format!("{TEMP_PREFIX}{}-", std::process::id());
    let mut b = tempfile::Builder::new();
    b.prefix(&prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o666));
    }
    b.tempfile_in(dir)
}

/// A writer into a file that asks the kernel to start writing each
/// stretch of it to disk as soon as it is written (Linux's
/// `sync_file_range`; elsewhere a plain writer): the sync before the
/// rename in [`write_atomic_with`] then waits for the last stretch, not
/// the whole file (at 10^6 ops, 0.23-0.27 s for the 569 MB JSON).
pub struct EarlyWriteback<'a> {
    file: &'a std::fs::File,
    written: u64,
    /// Where the stretch not yet handed to the kernel starts.
    started: u64,
}

impl<'a> EarlyWriteback<'a> {
    /// Bytes per stretch.
    const STRETCH: u64 = 16 << 20;

    pub fn new(file: &'a std::fs::File) -> EarlyWriteback<'a> {
        EarlyWriteback { file, written: 0, started: 0 }
    }
}

impl Write for EarlyWriteback<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = (&mut &*self.file).write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= Self::STRETCH {
            #[cfg(target_os = "linux")]
            {
                use std::os::fd::AsRawFd;
                let (from, len) = (self.started as libc::off64_t, (self.written - self.started) as libc::off64_t);
                // SAFETY: a valid open descriptor and a range of it; the
                // call only starts writeback. Its failure is not an error
                // here: the sync that follows reports what matters.
                unsafe { libc::sync_file_range(self.file.as_raw_fd(), from, len, libc::SYNC_FILE_RANGE_WRITE) };
            }
            self.started = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        (&mut &*self.file).flush()
    }
}

/// [`write_atomic`] of the concatenation of `chunks` (not made in memory).
pub fn write_atomic_chunks(path: &Path, chunks: &[impl AsRef<[u8]>]) -> std::io::Result<()> {
    write_atomic_with(path, |tmp| chunks.iter().try_for_each(|c| tmp.write_all(c.as_ref())))
}

/// Writes `path` atomically with `write`, which fills the temporary file
/// beside it (by its handle or its path); synced, then renamed onto `path`.
/// A symbolic link is written through (its target is replaced, the link
/// stays); a device or FIFO (`-o /dev/stdout`) is written into, since a
/// rename would replace it; a directory is an error.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut tempfile::NamedTempFile) -> std::io::Result<()>,
) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            let target = std::fs::canonicalize(path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("{} is a symbolic link to nothing: {e}", path.display()))
            })?;
            return write_atomic_with(&target, write);
        }
        Ok(m) if m.is_dir() => {
            return Err(std::io::Error::other(format!("{} is a directory", path.display())));
        }
        Ok(m) if !m.is_file() => {
            // Made in the temporary folder (a device's folder is seldom writable), then copied in.
            let mut tmp = tempfile::NamedTempFile::new()?;
            write(&mut tmp)?;
            let mut from = std::fs::File::open(tmp.path())?;
            let mut to = std::fs::OpenOptions::new().write(true).open(path)?;
            std::io::copy(&mut from, &mut to)?;
            return Ok(());
        }
        _ => {}
    }
    let mut tmp = temp_beside(path)?;
    write(&mut tmp)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod temp_tests {
    use super::*;

    /// A killed process's temporary files go at the next write into their
    /// folder; a running process's stay.
    #[test]
    fn stale_temporary_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // Beyond Linux's largest process id (2^22): no such process runs.
        let stale = dir.path().join(format!("{TEMP_PREFIX}4194399-abc123"));
        let live = dir.path().join(format!("{TEMP_PREFIX}{}-def456", std::process::id()));
        let other = dir.path().join(".tmpXYZ");
        for f in [&stale, &live, &other] {
            std::fs::write(f, b"partial").unwrap();
        }
        write_atomic(&dir.path().join("out.json"), b"{}").unwrap();
        assert_eq!(!stale.exists(), Path::new("/proc/self").exists());
        assert!(live.exists() && other.exists());
        assert_eq!(std::fs::read(dir.path().join("out.json")).unwrap(), b"{}");
    }

    /// A missing folder is named, not the temporary file that could not be made in it.
    #[test]
    fn a_missing_folder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such");
        let err = write_atomic(&missing.join("out.json"), b"{}").unwrap_err().to_string();
        assert_eq!(err, format!("the folder {} does not exist", missing.display()));
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let err = write_atomic(&dir.path().join("file/out.json"), b"{}").unwrap_err().to_string();
        assert!(err.ends_with("file is not a folder"), "{err}");
    }

    /// A link is written through and stays a link; a device is written
    /// into, not replaced; a directory is refused.
    #[cfg(unix)]
    #[test]
    fn links_and_devices_are_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (real, link) = (dir.path().join("real.json"), dir.path().join("link.json"));
        std::fs::write(&real, b"old").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
        write_atomic(Path::new("/dev/null"), b"gone").unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
        let e = write_atomic(dir.path(), b"x").unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        std::os::unix::fs::symlink(dir.path().join("none"), dir.path().join("dangling")).unwrap();
        assert!(write_atomic(&dir.path().join("dangling"), b"x")
            .unwrap_err()
            .to_string()
            .contains("symbolic link to nothing"));
    }
}

/// Renders a report as plain text (no colours), as tests and logs want it.
pub fn render_plain(report: &miette::Report) -> String {
    let mut s = String::new();
    let handler = miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor()).with_width(100);
    if handler.render_report(&mut s, report.as_ref()).is_err() {
        s = format!("{report}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past several stretches, written in pieces that straddle their
    /// ends, the file holds exactly what was written.
    #[test]
    fn early_writeback_writes_what_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.bin");
        let piece: Vec<u8> = (0..(3 << 20) + 7).map(|i: u32| (i * 31 % 251) as u8).collect();
        let n = (2 * EarlyWriteback::STRETCH as usize) / piece.len() + 3;
        write_atomic_with(&p, |tmp| {
            let mut w = EarlyWriteback::new(tmp.as_file());
            for _ in 0..n {
                w.write_all(&piece)?;
            }
            w.flush()
        })
        .unwrap();
        let back = std::fs::read(&p).unwrap();
        assert_eq!(back.len(), n * piece.len());
        assert!(back.chunks(piece.len()).all(|c| c == piece));
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.json");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn atomic_write_into_missing_dir_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("no/such/dir/out.json");
        assert!(write_atomic(&p, b"x").is_err());
    }
}
