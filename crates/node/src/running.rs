//! Which process is running a sync round on a till, and how far it is, for
//! `till status` and `/api/status`. Kept in a small side file beside the
//! database (`DIR/sync.running`), written without fsync, and never in the
//! database: a durable commit before every round would sit on the path of
//! every sale to the other tills (BENCHMARKS.md, "Sync (issue 3)").
//!
//! The file names the process (its pid and its start time, so a reused pid
//! is not mistaken for it). A round killed half-way leaves the file behind,
//! naming a process that is gone, and it reads as "not running". Losing the
//! file in a power cut loses nothing either: no process survives one.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The side file's name inside the till's folder.
pub const RUNNING_FILE: &str = "sync.running";

/// How far a running round is: items done of a total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// What the side file says, if a live process is running a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Running {
    pub pid: u32,
    pub progress: Option<Progress>,
}

/// The side file of the till whose database is `db` (a store's path); `None`
/// for a database with no folder (in memory).
pub fn file_for(db: &Path) -> Option<PathBuf> {
    let dir = db.parent()?;
    (!dir.as_os_str().is_empty() && db.is_file()).then(|| dir.join(RUNNING_FILE))
}

/// The start time of process `pid` in clock ticks since boot (field 22 of
/// `/proc/PID/stat`), or `None` if there is no such process (or no /proc).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The round this process runs: the side file says so while it lives, and
/// is removed when it is dropped.
#[derive(Debug)]
pub struct RoundMark {
    path: Option<PathBuf>,
    pid: u32,
    started: u64,
}

impl RoundMark {
    /// Marks a round as running on the till whose database is `db`. A side
    /// file that cannot be written only makes status say less: it is logged
    /// and the round goes on.
    pub fn start(db: &Path) -> RoundMark {
        let pid = std::process::id();
        let mark = RoundMark { path: file_for(db), pid, started: start_time(pid).unwrap_or(0) };
        mark.write(None);
        mark
    }

    /// Records how far the round is.
    pub fn progress(&self, done: u64, total: u64) {
        self.write(Some(Progress { done, total }));
    }

    fn write(&self, progress: Option<Progress>) {
        let Some(path) = &self.path else { return };
        let mut text = format!("{} {}", self.pid, self.started);
        if let Some(p) = progress {
            text.push_str(&format!(" {} {}", p.done, p.total));
        }
        text.push('\n');
        // Written beside and renamed over, so a reader never sees half a
        // line; no fsync, since nothing here must outlive the process.
        let tmp = path.with_extension(format!("running.{}.tmp", self.pid));
        let r = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = r {
            tracing::warn!(error = %e, path = %path.display(), "cannot record the running sync round");
        }
    }
}

impl Drop for RoundMark {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            // Only our own mark: another process may have started a round since.
            if read_file(path).is_some_and(|(pid, started, _)| pid == self.pid && started == self.started) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn read_file(path: &Path) -> Option<(u32, u64, Option<Progress>)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut it = text.split_whitespace().map(|w| w.parse::<u64>().ok());
    let pid = u32::try_from(it.next()??).ok()?;
    let started = it.next()??;
    let progress = match (it.next(), it.next()) {
        (Some(Some(done)), Some(Some(total))) => Some(Progress { done, total }),
        _ => None,
    };
    Some((pid, started, progress))
}

/// The round running on the till whose database is `db`, if the process
/// named by its side file is alive (and is the same process: same start
/// time).
pub fn current(db: &Path) -> Option<Running> {
    let (pid, started, progress) = read_file(&file_for(db)?)?;
    if pid == 0 {
        return None;
    }
    let alive = match start_time(pid) {
        Some(t) => started == 0 || t == started,
        // No /proc entry: gone (or no /proc at all, where nothing is known).
        None => false,
    };
    alive.then_some(Running { pid, progress })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_lives_with_its_round_and_a_dead_pid_reads_as_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("till.db");
        std::fs::write(&db, b"").unwrap();
        assert_eq!(current(&db), None, "no round yet");
        {
            let mark = RoundMark::start(&db);
            assert_eq!(current(&db), Some(Running { pid: std::process::id(), progress: None }));
            mark.progress(3, 7);
            assert_eq!(current(&db).and_then(|r| r.progress), Some(Progress { done: 3, total: 7 }));
        }
        assert_eq!(current(&db), None, "the mark is removed with the round");
        // A round killed half-way: its file stays, naming a process that is gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        std::fs::write(dir.path().join(RUNNING_FILE), format!("{pid} 12345 1 2\n")).unwrap();
        assert_eq!(current(&db), None, "a dead process runs no round");
        // A live process with another start time is a reused pid.
        let me = std::process::id();
        let started = start_time(me).unwrap();
        std::fs::write(dir.path().join(RUNNING_FILE), format!("{me} {}\n", started + 1)).unwrap();
        assert_eq!(current(&db), None, "a reused pid runs no round");
        std::fs::write(dir.path().join(RUNNING_FILE), "garbage").unwrap();
        assert_eq!(current(&db), None, "an unreadable file says nothing");
    }
}
