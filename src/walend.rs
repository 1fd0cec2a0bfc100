//! Accounting for a WAL generation when a writer of ours ends it.
//!
//! A WAL generation (one pair of salts) ends when a writer restarts the WAL (a new header at
//! offset 0), truncates it below its header (checkpoint TRUNCATE, `journal_size_limit` at close)
//! or deletes it (last close). Its commits then live only in the database file. If a process
//! without spoolvfs committed after our last record, the spool lacks those commits, and nothing
//! downstream could tell: the consumer's next record starts a new generation at frame 0, exactly
//! like after a restart of ours, and its idle source check compares with the new generation only.
//!
//! So the writer that ends a generation checks it first. It holds the WAL write lock (restart,
//! truncation) or the exclusive database lock (deletion), so no writer of ours can commit, and
//! the last sealed record is the last commit of ours. Then:
//! - the generation on disk is the last sealed record's: no valid commit may follow that record's
//!   commit frame (uncommitted frames of a rolled-back transaction may);
//! - it is another generation: the last sealed record's generation ended earlier and must have
//!   been checked then (`Control::wal_verified`), and the one on disk must hold no commit at all;
//! - the file has no header (emptied or deleted without spoolvfs): the last sealed record's
//!   generation must have been checked when it ended.
//!
//! Anything else is a loss, which the caller reports and a resync repairs. Either way the
//! generation is marked checked, so that one ending is reported once.
//!
//! "The last sealed record" is, more precisely, the last state the backup accounts for
//! (`accounted`): a resync that replayed no record publishes, as the applied state, the WAL
//! generation and committed frames it copied. Those can go past the last sealed record: a
//! process killed between its commit and its seal, or a commit made without spoolvfs, both
//! already repaired by that resync. Checking against the sealed record alone would report the
//! same commit a second time when its generation ends, and cost a second resync.
//!
//! Invariants: runs before the ending operation is forwarded and never changes it; reads the WAL
//! through its own descriptor (the unix VFS keeps no POSIX locks on the WAL file itself, so
//! closing it cannot drop one); costs one header check per generation, not per commit.

use std::fs::File;
use std::io;
use std::path::Path;

use crate::spool::control::{Control, SealedState};
use crate::spool::format::SourceMode;
use crate::wal::{self, WalHeader};

/// How a generation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Restart,
    Truncate,
    Delete,
}

impl Ending {
    fn past_tense(self) -> &'static str {
        match self {
            Ending::Restart => "restarted",
            Ending::Truncate => "truncated",
            Ending::Delete => "deleted",
        }
    }
}

/// Checks, before the WAL at `wal` is restarted, truncated or deleted by a writer of ours, that
/// every commit of the generation ending is in the spool. `on_disk` is the header at offset 0 as
/// the ending finds it (`None`: the file is empty or has no valid header). Returns the loss to
/// report, if any.
pub fn check(
    control: &Control,
    wal: &Path,
    on_disk: Option<WalHeader>,
    how: Ending,
) -> Option<String> {
    let sealed = accounted(control);
    if sealed.mode_kind >> 8 != SourceMode::Wal as u64 {
        // No record of ours lives in a WAL (none yet, rollback mode, or an older control file):
        // whatever the WAL holds was written after the last record, and the consumer's chain
        // and source checks see it.
        return None;
    }
    let verdict = unaccounted(control, wal, &sealed, on_disk, how).unwrap_or_else(|e| {
        Some(format!(
            "the WAL could not be checked before it was {}: {e}",
            how.past_tense()
        ))
    });
    control.set_wal_verified(sealed.token);
    verdict
}

/// The last source state the spool and the backup account for: the last sealed record's, or
/// the WAL state a resync copied after it (`applied` with the same sequence number, in WAL mode;
/// a replayed or applied record publishes the same chain data as its seal did, so this only
/// differs after a resync). Read while no writer of ours can seal (see the module doc), so the
/// applied state can only catch up with the sealed one, never pass it.
fn accounted(control: &Control) -> SealedState {
    let sealed = control.sealed();
    let applied = control.applied();
    let resynced_past_it = applied.seq == sealed.seq
        && applied.mode_kind >> 8 == SourceMode::Wal as u64
        && (applied.token != sealed.token || applied.wal_frames > sealed.wal_frames);
    if resynced_past_it {
        SealedState {
            token: applied.token,
            mode_kind: applied.mode_kind,
            wal_frames: applied.wal_frames,
            ..sealed
        }
    } else {
        sealed
    }
}

fn unaccounted(
    control: &Control,
    wal: &Path,
    sealed: &SealedState,
    on_disk: Option<WalHeader>,
    how: Ending,
) -> io::Result<Option<String>> {
    let how = how.past_tense();
    match on_disk {
        Some(h) if h.salts() == sealed.token => {
            let file = File::open(wal)?;
            Ok(
                match wal::committed_in_generation(&file, &h, sealed.wal_frames)? {
                    Some(n) if n > sealed.wal_frames => Some(format!(
                        "WAL frames {}..{n} were committed without spoolvfs before the WAL was {how}",
                        sealed.wal_frames
                    )),
                    Some(_) => None,
                    None => Some(format!(
                        "the WAL lost the commit frame of the last transaction (frame {}) before \
                         it was {how}",
                        sealed.wal_frames.saturating_sub(1)
                    )),
                },
            )
        }
        _ if control.wal_verified() != sealed.token
            && !copied_and_unchanged(control, wal, sealed) =>
        {
            Ok(Some(format!(
                "the WAL generation of the last transaction ended without spoolvfs (a checkpoint \
             that restarted or truncated it?) before the WAL was {how}"
            )))
        }
        Some(h) => {
            let file = File::open(wal)?;
            Ok(match wal::committed_in_generation(&file, &h, 0)? {
                Some(n) if n > 0 => Some(format!(
                    "WAL frames 0..{n} of a generation started without spoolvfs were committed \
                     before the WAL was {how}"
                )),
                _ => None,
            })
        }
        None => Ok(None),
    }
}

/// The state the backup accounts for is a resync's copy of a source whose WAL held no commit,
/// and the database file is unchanged since before that copy (`Control::copy_stamp`): then no
/// WAL generation came and went since, because checkpointing one writes the file; one still
/// there shows its header, which the other branches check. Without this, the first writer of
/// ours after such a resync (a reopen after a change made while closed, say) could not tell its
/// empty WAL from one a checkpoint without spoolvfs emptied, and reported a loss: a second resync.
fn copied_and_unchanged(control: &Control, wal: &Path, sealed: &SealedState) -> bool {
    let (Some((seq, stamp)), Some(db)) = (control.copy_stamp(), crate::config::db_of_wal(wal))
    else {
        return false;
    };
    seq == sealed.seq && sealed.wal_frames == 0 && crate::filestamp::is_unchanged(db, stamp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::format::RecordKind;
    use crate::wal::tests::build_wal;

    fn setup(name: &str) -> (Control, std::path::PathBuf) {
        let d = crate::util::fresh_test_dir("walend", name);
        (Control::open(&d.join("spool")).unwrap(), d.join("db-wal"))
    }

    /// Publishes a sealed WAL record of generation `salts` ending at `frames`.
    fn seal(c: &Control, salts: (u32, u32), frames: u64) {
        c.publish_sealed(SealedState {
            seq: c.next_seq(),
            token: (salts.0 as u64) << 32 | salts.1 as u64,
            mode_kind: (SourceMode::Wal as u64) << 8 | RecordKind::Commit as u64,
            wal_frames: frames,
            ..Default::default()
        });
    }

    fn header(wal: &[u8]) -> Option<WalHeader> {
        WalHeader::parse(&wal[..32])
    }

    #[test]
    fn a_generation_ending_at_our_last_commit_is_accounted_for() {
        let (c, path) = setup("clean");
        // Frames (pgno, commit size, fill): two transactions, committing at frames 1 and 2.
        let w = build_wal(1024, &[(1, 0, 1), (2, 2, 2), (3, 3, 3)], (7, 8));
        std::fs::write(&path, &w).unwrap();
        seal(&c, (7, 8), 3);
        assert_eq!(check(&c, &path, header(&w), Ending::Restart), None);
        assert_eq!(c.wal_verified(), (7 << 32) | 8);
        // Later endings of the same generation (the header is now another one's) are fine.
        let other = build_wal(1024, &[], (9, 1));
        assert_eq!(check(&c, &path, header(&other), Ending::Truncate), None);
        assert_eq!(check(&c, &path, None, Ending::Delete), None);
    }

    #[test]
    fn commits_after_our_last_record_are_reported() {
        let (c, path) = setup("foreign");
        let w = build_wal(1024, &[(1, 1, 1), (2, 0, 2), (3, 3, 3)], (7, 8));
        std::fs::write(&path, &w).unwrap();
        // Our last record committed at frame 1; frames 2 and 3 (a commit) are someone else's.
        seal(&c, (7, 8), 1);
        let lost = check(&c, &path, header(&w), Ending::Restart).expect("a loss");
        assert!(
            lost.contains("frames 1..3") && lost.contains("restarted"),
            "{lost}"
        );
        // Reported once: once the restart replaced the header, the generation counts as checked.
        let restarted = build_wal(1024, &[], (8, 9));
        assert_eq!(check(&c, &path, header(&restarted), Ending::Truncate), None);
    }

    #[test]
    fn commits_a_resync_copied_past_our_last_record_are_reported_only_by_it() {
        let (c, path) = setup("resynced");
        let w = build_wal(1024, &[(1, 1, 1), (2, 0, 2), (3, 3, 3)], (7, 8));
        std::fs::write(&path, &w).unwrap();
        seal(&c, (7, 8), 1);
        let sealed = c.sealed();
        // A resync after our last record copied the WAL through its commit at frame 2 (frames
        // 1..3: a process killed before its seal), and published that as the applied state.
        let copied = |seq| SealedState {
            seq,
            wal_frames: 3,
            ..sealed
        };
        c.publish_applied(copied(sealed.seq - 1));
        // Not yet the state after our last record: that record's own chain data rules.
        assert!(check(&c, &path, header(&w), Ending::Restart).is_some());
        c.publish_applied(copied(sealed.seq));
        assert_eq!(check(&c, &path, header(&w), Ending::Restart), None);
        // A commit after what the resync copied is still a loss.
        let w = build_wal(1024, &[(1, 1, 1), (2, 0, 2), (3, 3, 3), (4, 4, 4)], (7, 8));
        std::fs::write(&path, &w).unwrap();
        let lost = check(&c, &path, header(&w), Ending::Truncate).expect("a loss");
        assert!(lost.contains("frames 3..4"), "{lost}");
    }

    /// A resync copied the source with no WAL (after our last generation ended, checked); the
    /// next writer's restart finds no header. With the source as the copy found it, that is no
    /// loss; once the database file changed (a foreign generation checkpointed into it), it is.
    #[test]
    fn an_empty_ending_after_a_copy_is_a_loss_only_if_the_source_changed() {
        let (c, path) = setup("copied");
        let db = path.with_file_name("db");
        std::fs::write(&db, vec![1u8; 4096]).unwrap();
        seal(&c, (7, 8), 4);
        c.set_wal_verified((7 << 32) | 8);
        let sealed = c.sealed();
        c.publish_applied(SealedState {
            token: 0,
            wal_frames: 0,
            ..sealed
        });
        std::fs::write(&path, b"").unwrap();
        let lost = check(&c, &path, None, Ending::Restart).expect("no copy stamp: a loss");
        assert!(lost.contains("ended without spoolvfs"), "{lost}");

        c.set_wal_verified((7 << 32) | 8);
        let stamp = match crate::filestamp::settled(&db, std::time::Duration::from_secs(1)) {
            Ok(crate::filestamp::Settled::Stamp(s)) => s,
            other => panic!("no settled stamp: {other:?}"),
        };
        c.set_copy_stamp(sealed.seq, Some(stamp));
        assert_eq!(check(&c, &path, None, Ending::Restart), None);

        c.set_wal_verified((7 << 32) | 8);
        std::fs::write(&db, vec![2u8; 4096]).unwrap();
        assert!(
            check(&c, &path, None, Ending::Restart).is_some(),
            "the source changed"
        );
        // A stamp of another applied state vouches for nothing either.
        c.set_wal_verified((7 << 32) | 8);
        std::fs::write(&db, vec![1u8; 4096]).unwrap();
        let now = crate::filestamp::stamp(&db).unwrap().unwrap();
        c.set_copy_stamp(sealed.seq + 1, Some(now));
        assert!(
            check(&c, &path, None, Ending::Restart).is_some(),
            "another state's stamp"
        );
    }

    #[test]
    fn uncommitted_frames_after_our_last_record_are_not_a_loss() {
        let (c, path) = setup("rolledback");
        let w = build_wal(1024, &[(1, 1, 1), (2, 0, 2), (3, 0, 3)], (7, 8));
        std::fs::write(&path, &w).unwrap();
        seal(&c, (7, 8), 1);
        assert_eq!(check(&c, &path, header(&w), Ending::Restart), None);
    }

    #[test]
    fn a_generation_that_ended_unchecked_is_reported() {
        let (c, path) = setup("unchecked");
        seal(&c, (7, 8), 4);
        // Emptied by someone else (checkpoint TRUNCATE without spoolvfs): nothing to read.
        std::fs::write(&path, b"").unwrap();
        let lost = check(&c, &path, None, Ending::Restart).expect("a loss");
        assert!(lost.contains("ended without spoolvfs"), "{lost}");
        // Restarted by someone else, who committed in the new generation.
        let (c, path) = setup("unchecked2");
        seal(&c, (7, 8), 4);
        let w = build_wal(1024, &[(1, 1, 1)], (8, 3));
        std::fs::write(&path, &w).unwrap();
        assert!(check(&c, &path, header(&w), Ending::Restart).is_some());
        // After our own checked ending, a generation on disk without commits is fine, one with
        // a commit is not.
        let (c, path) = setup("afterchecked");
        seal(&c, (7, 8), 4);
        c.set_wal_verified((7 << 32) | 8);
        let uncommitted = build_wal(1024, &[(1, 0, 1)], (8, 3));
        std::fs::write(&path, &uncommitted).unwrap();
        assert_eq!(
            check(&c, &path, header(&uncommitted), Ending::Restart),
            None
        );
        std::fs::write(&path, &w).unwrap();
        let lost = check(&c, &path, header(&w), Ending::Delete).expect("a loss");
        assert!(lost.contains("started without spoolvfs"), "{lost}");
    }

    #[test]
    fn nothing_is_checked_without_a_wal_record() {
        let (c, path) = setup("none");
        assert_eq!(check(&c, &path, None, Ending::Restart), None);
        c.publish_sealed(SealedState {
            seq: 1,
            token: 5,
            mode_kind: (SourceMode::Rollback as u64) << 8 | RecordKind::Commit as u64,
            ..Default::default()
        });
        assert_eq!(check(&c, &path, None, Ending::Delete), None);
    }
}
