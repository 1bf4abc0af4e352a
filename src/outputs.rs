//! Output files: which paths a command may write, and how. This module owns
//! three rules that every command's outputs follow (replay, import, gen,
//! bench):
//!
//! 1. No output is an input or another output. Paths are compared by
//!    (device, inode) after resolving links, so a symlink or a hard link to
//!    the tape is caught as surely as the same name; an output that does not
//!    exist yet is compared by its resolved directory and name. Its
//!    directory must exist, so a bad path fails before the run, not after.
//! 2. A regular output file is locked (`flock`, advisory, exclusive) while
//!    it is written and only then truncated, so a second writer is refused
//!    instead of interleaving its bytes with the first one's. A non-regular
//!    output (a device such as `/dev/null`, a FIFO, `-` for stdout) is
//!    written in place: never truncated, renamed over or removed.
//! 3. A failed run removes only the regular files it created itself, and
//!    only while the path still names that very file: never a file that was
//!    there before, never a link's target, never a device.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::FromRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The path that means stdout (for outputs) or stdin (for a CSV tape).
pub const STDIO: &str = "-";

pub fn is_stdio(path: &Path) -> bool {
    path.as_os_str() == STDIO
}

/// Whether an output path is the process's stdout (`-`, `/dev/stdout`, `/dev/fd/1`).
pub fn is_stdout(path: &Path) -> bool {
    std_fd(path) == Some(1)
}

/// Whether an output path is written in place: stdout or another of the
/// process's descriptors, or anything under /dev or /proc. Such a path has
/// no directory for side files to go beside it.
pub fn is_special(path: &Path) -> bool {
    std_fd(path).is_some() || in_place(path)
}

/// What a path names, for telling whether two paths are one file.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Key {
    /// An existing file, links resolved.
    File { dev: u64, ino: u64 },
    /// A file yet to be created: its resolved directory and its name.
    Path(PathBuf),
}

fn key(path: &Path) -> Result<Key, String> {
    key_at(path, 0)
}

fn key_at(path: &Path, hops: u32) -> Result<Key, String> {
    match std::fs::metadata(path) {
        Ok(meta) => {
            if meta.is_dir() {
                return Err(format!("{}: is a directory", path.display()));
            }
            Ok(Key::File { dev: meta.dev(), ino: meta.ino() })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A link to a file yet to be created is that file.
            if let Ok(target) = std::fs::read_link(path) {
                if hops >= 40 {
                    return Err(format!("{}: too many levels of links", path.display()));
                }
                let target = path.parent().map_or(target.clone(), |dir| dir.join(&target));
                return key_at(&target, hops + 1);
            }
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let dir = std::fs::canonicalize(parent)
                .map_err(|e| format!("{}: directory {} does not exist: {e}", path.display(), parent.display()))?;
            if !dir.is_dir() {
                return Err(format!("{}: {} is not a directory", path.display(), parent.display()));
            }
            let name = path.file_name().ok_or_else(|| format!("{}: names no file", path.display()))?;
            Ok(Key::Path(dir.join(name)))
        }
        Err(e) => Err(format!("{}: cannot read: {e}", path.display())),
    }
}

/// A command's inputs and outputs, each with the flag or role that named it,
/// checked together before anything is written.
#[derive(Default)]
pub struct Plan {
    inputs: Vec<(String, PathBuf)>,
    outputs: Vec<(String, PathBuf)>,
    /// Directories no output may be written into (a state directory).
    dirs: Vec<(String, PathBuf)>,
}

impl Plan {
    pub fn input(&mut self, role: &str, path: &Path) -> &mut Plan {
        if !is_stdio(path) {
            self.inputs.push((role.to_string(), path.to_path_buf()));
        }
        self
    }

    pub fn output(&mut self, role: &str, path: &Path) -> &mut Plan {
        if !is_stdio(path) {
            self.outputs.push((role.to_string(), path.to_path_buf()));
        }
        self
    }

    pub fn reserved_dir(&mut self, role: &str, dir: &Path) -> &mut Plan {
        self.dirs.push((role.to_string(), dir.to_path_buf()));
        self
    }

    /// Every problem at once, each naming both paths.
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        // Inputs that cannot be read are reported by the code that opens them.
        let inputs: Vec<(&str, &Path, Key)> = self
            .inputs
            .iter()
            .filter_map(|(role, path)| Some((role.as_str(), path.as_path(), key(path).ok()?)))
            .collect();
        let dirs: Vec<(&str, &Path, PathBuf)> = self
            .dirs
            .iter()
            .filter_map(|(role, path)| Some((role.as_str(), path.as_path(), std::fs::canonicalize(path).ok()?)))
            .collect();
        let mut seen: Vec<(&str, &Path, Key)> = Vec::new();
        for (role, path) in &self.outputs {
            let key = match key(path) {
                Ok(key) => key,
                Err(e) => {
                    problems.push(format!("{role} {e}"));
                    continue;
                }
            };
            for (input_role, input, input_key) in &inputs {
                if *input_key == key {
                    problems.push(format!(
                        "{role} {}: is the same file as the {input_role} {}: an output must never overwrite an input",
                        path.display(),
                        input.display()
                    ));
                }
            }
            for (other_role, other, other_key) in &seen {
                if *other_key == key {
                    problems.push(format!(
                        "{role} {}: is the same file as {other_role} {}: every output needs a path of its own",
                        path.display(),
                        other.display()
                    ));
                }
            }
            if let Some(resolved) = resolved_parent(path, &key) {
                for (dir_role, dir, canonical) in &dirs {
                    if resolved.starts_with(canonical) {
                        problems.push(format!(
                            "{role} {}: lies inside the {dir_role} {}, which tapewatch alone writes",
                            path.display(),
                            dir.display()
                        ));
                    }
                }
            }
            seen.push((role, path, key));
        }
        problems
    }
}

fn resolved_parent(path: &Path, key: &Key) -> Option<PathBuf> {
    match key {
        Key::Path(p) => p.parent().map(Path::to_path_buf),
        Key::File { .. } => std::fs::canonicalize(path).ok()?.parent().map(Path::to_path_buf),
    }
}

/// Regular files this process created, by path and identity: the only ones
/// `remove_created` will delete.
static CREATED: Mutex<Vec<(PathBuf, u64, u64)>> = Mutex::new(Vec::new());

/// Opens an output to be written from its start: `-` is stdout; a regular
/// file is created or locked and then truncated; anything else (a device, a
/// FIFO) is opened for writing in place.
pub fn create(path: &Path) -> io::Result<File> {
    let (file, regular) = open(path, true)?;
    if regular {
        file.set_len(0)?;
    }
    Ok(file)
}

/// Opens an existing output to be continued (a resumed run), locked; the
/// caller cuts it back to the committed length.
pub fn reopen(path: &Path) -> io::Result<File> {
    if std_fd(path).is_some() || in_place(path) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "a resumed run continues only regular files"));
    }
    Ok(open(path, false)?.0)
}

fn open(path: &Path, may_create: bool) -> io::Result<(File, bool)> {
    if let Some(fd) = std_fd(path) {
        // A duplicate shares the descriptor's offset: output appended where
        // the shell's redirection stands, not written over from byte 0.
        // SAFETY: fcntl only reads the number; a closed one fails with EBADF.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `dup` is a new descriptor that nothing else owns.
        return Ok((unsafe { File::from_raw_fd(dup) }, false));
    }
    if in_place(path) {
        return Ok((OpenOptions::new().write(true).open(path)?, false));
    }
    let (file, created) = match OpenOptions::new().write(true).create_new(may_create).open(path) {
        Ok(file) => (file, may_create),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => (OpenOptions::new().write(true).open(path)?, false),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok((file, false));
    }
    lock(&file)?;
    if created {
        CREATED.lock().unwrap_or_else(|p| p.into_inner()).push((path.to_path_buf(), meta.dev(), meta.ino()));
    }
    Ok((file, true))
}

/// The descriptor a path stands for when it is one of the process's own
/// (`-`, `/dev/stdout`, `/dev/fd/N`, `/proc/self/fd/N`).
fn std_fd(path: &Path) -> Option<i32> {
    if is_stdio(path) {
        return Some(1);
    }
    let text = path.to_str()?;
    match text {
        "/dev/stdout" => Some(1),
        "/dev/stderr" => Some(2),
        _ => text.strip_prefix("/dev/fd/").or_else(|| text.strip_prefix("/proc/self/fd/"))?.parse().ok(),
    }
}

/// Whether a path is, or links to, something under /dev or /proc: written
/// in place even when it ends at a regular file (`/dev/stdout` redirected
/// to a log), never truncated, locked or removed.
fn in_place(path: &Path) -> bool {
    let mut at = path.to_path_buf();
    for _ in 0..40 {
        if at.starts_with("/dev") || at.starts_with("/proc") {
            return true;
        }
        match std::fs::read_link(&at) {
            Ok(target) => at = at.parent().map_or(target.clone(), |dir| dir.join(&target)),
            Err(_) => return false,
        }
    }
    false
}

/// An exclusive advisory lock, held as long as the file stays open.
fn lock(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor this `File` owns; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "another process is writing this file (it is locked); wait for it or choose another path",
        ));
    }
    Err(e)
}

/// Removes `path` if this process created it and it still names that
/// regular file (not a link, not a file put there since).
pub fn remove_created(path: &Path) {
    let mut created = CREATED.lock().unwrap_or_else(|p| p.into_inner());
    let Some(at) = created.iter().position(|(p, _, _)| p == path) else { return };
    let (_, dev, ino) = created.swap_remove(at);
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_file()
        && meta.dev() == dev
        && meta.ino() == ino
    {
        let _ = std::fs::remove_file(path);
    }
}

/// Forgets that this process created `path` (a run kept it, or renamed it
/// away), so that nothing later removes it.
pub fn keep(path: &Path) {
    CREATED.lock().unwrap_or_else(|p| p.into_inner()).retain(|(p, _, _)| p != path);
}

/// Checks, before any output is cut, that each output a resumed run
/// continues exists and holds at least what the checkpoint committed.
pub fn check_resumable(outputs: &[(&str, &Path, u64)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (role, path, committed) in outputs {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() && meta.len() >= *committed => {}
            Ok(meta) if meta.is_file() => problems.push(format!(
                "{role} {}: has {} bytes, fewer than the {committed} the checkpoint committed: was it moved or \
                 rewritten? Resume with the same output paths, or use a fresh --state directory",
                path.display(),
                meta.len()
            )),
            Ok(_) => problems.push(format!("{role} {}: a resumed run needs a regular file here", path.display())),
            Err(e) => problems.push(format!(
                "{role} {}: cannot resume: {e}; resume with the same output paths, or use a fresh --state directory",
                path.display()
            )),
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_linked_to_an_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tape = dir.path().join("t.csv");
        std::fs::write(&tape, "x").unwrap();
        let link = dir.path().join("l.jsonl");
        std::os::unix::fs::symlink(&tape, &link).unwrap();
        let hard = dir.path().join("h.jsonl");
        std::fs::hard_link(&tape, &hard).unwrap();
        let fresh = dir.path().join("new.jsonl");
        let mut plan = Plan::default();
        plan.input("tape", &tape).output("--alerts", &link).output("--late", &hard).output("--rejects", &fresh);
        let problems = plan.check();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("same file as the tape"), "{problems:?}");
        // Two outputs that are both links to the tape are also one file.
        assert!(problems[2].contains("--late") && problems[2].contains("--alerts"), "{problems:?}");
    }

    #[test]
    fn two_new_outputs_with_one_path_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.jsonl");
        let b = dir.path().join(".").join("a.jsonl");
        let mut plan = Plan::default();
        plan.output("--alerts", &a).output("--late", &b).output("--json", &dir.path().join("no/such/x"));
        let problems = plan.check();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[1].contains("does not exist"), "{problems:?}");
    }

    #[test]
    fn a_second_writer_is_refused_and_the_first_one_keeps_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let mut first = create(&path).unwrap();
        io::Write::write_all(&mut first, b"first").unwrap();
        let e = create(&path).unwrap_err();
        assert!(e.to_string().contains("locked"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        drop(first);
        drop(create(&path).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }

    #[test]
    fn only_files_this_process_created_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let before = dir.path().join("before.jsonl");
        std::fs::write(&before, "old").unwrap();
        drop(create(&before).unwrap());
        remove_created(&before);
        assert!(before.exists());
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        drop(create(&link).unwrap());
        remove_created(&link);
        assert!(link.exists() && target.exists());
        let made = dir.path().join("made.jsonl");
        drop(create(&made).unwrap());
        remove_created(&made);
        assert!(!made.exists());
        // A device is written in place and never removed.
        drop(create(Path::new("/dev/null")).unwrap());
        remove_created(Path::new("/dev/null"));
        assert!(Path::new("/dev/null").exists());
    }
}
