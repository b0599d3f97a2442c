//! Output files that appear only when complete: each is written under a
//! temporary name in its target's folder and renamed into place (never over
//! an existing file) when the export succeeded. Dropped without
//! [`OutFile::commit`] (an error, a full disk), the temporary file is
//! removed; [`CreatedDirs`] removes the folders an export made.

use super::{io_at, ExportError};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Refuse an output path that exists (exit 2): exports never overwrite.
pub fn refuse_existing(target: &Path) -> Result<(), ExportError> {
    if target.symlink_metadata().is_ok() {
        return Err(ExportError::Usage(format!(
            "{} exists; an export never overwrites: choose another --out or move it away",
            target.display()
        )));
    }
    Ok(())
}

/// A file being written under a temporary name.
pub struct OutFile {
    w: BufWriter<tempfile::NamedTempFile>,
    target: PathBuf,
    /// Replace an existing file on commit (a dataset's shared files).
    replace: bool,
}

impl OutFile {
    /// Start writing `target` (which must not exist).
    pub fn create(target: &Path) -> Result<OutFile, ExportError> {
        refuse_existing(target)?;
        Self::open(target, false)
    }

    /// Start writing a new version of `target`, which replaces it on commit
    /// (for files an export extends, such as a dataset's participants.tsv).
    pub fn replacing(target: &Path) -> Result<OutFile, ExportError> {
        Self::open(target, true)
    }

    fn open(target: &Path, replace: bool) -> Result<OutFile, ExportError> {
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "export".into());
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".partial")
            .tempfile_in(dir)
            .map_err(io_at(target))?;
        Ok(OutFile {
            w: BufWriter::with_capacity(1 << 20, tmp),
            target: target.to_path_buf(),
            replace,
        })
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Flush, sync and rename into place (refusing to replace a file that
    /// appeared meanwhile).
    pub fn commit(self) -> Result<(), ExportError> {
        let target = self.target;
        let tmp = self
            .w
            .into_inner()
            .map_err(|e| io_at(&target)(e.into_error()))?;
        tmp.as_file().sync_all().map_err(io_at(&target))?;
        if self.replace {
            tmp.persist(&target).map_err(|e| io_at(&target)(e.error))?;
            return Ok(());
        }
        tmp.persist_noclobber(&target).map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                ExportError::Usage(format!(
                    "{} appeared while exporting; an export never overwrites it",
                    target.display()
                ))
            } else {
                io_at(&target)(e.error)
            }
        })?;
        Ok(())
    }
}

impl Write for OutFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.w.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.w.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

/// Folders an export created, removed again (when empty) unless the export
/// succeeded.
#[derive(Default)]
pub struct CreatedDirs {
    dirs: Vec<PathBuf>,
    keep: bool,
}

impl CreatedDirs {
    /// `create_dir_all`, remembering each folder it made.
    pub fn create(&mut self, dir: &Path) -> Result<(), ExportError> {
        let mut missing = Vec::new();
        let mut d = dir;
        while d.symlink_metadata().is_err() {
            missing.push(d.to_path_buf());
            match d.parent() {
                Some(p) if !p.as_os_str().is_empty() => d = p,
                _ => break,
            }
        }
        for m in missing.into_iter().rev() {
            std::fs::create_dir(&m).map_err(io_at(&m))?;
            self.dirs.push(m);
        }
        Ok(())
    }

    /// The export succeeded: keep the folders.
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for CreatedDirs {
    fn drop(&mut self) {
        if !self.keep {
            for d in self.dirs.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appears_only_on_commit_and_never_overwrites() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.xdf");
        let mut f = OutFile::create(&p).unwrap();
        f.write_all(b"hello").unwrap();
        assert!(!p.exists());
        f.commit().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"hello");
        let e = OutFile::create(&p).err().unwrap();
        assert_eq!(e.exit_code(), 2);
        // Dropped without commit: nothing left.
        let q = d.path().join("b.xdf");
        let mut f = OutFile::create(&q).unwrap();
        f.write_all(b"partial").unwrap();
        drop(f);
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only a.xdf");
    }

    #[test]
    fn created_dirs_are_removed_unless_kept() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("x/y/z");
        let mut c = CreatedDirs::default();
        c.create(&deep).unwrap();
        assert!(deep.is_dir());
        drop(c);
        assert!(!d.path().join("x").exists());
        let mut c = CreatedDirs::default();
        c.create(&deep).unwrap();
        c.keep();
        assert!(deep.is_dir());
    }
}
