//! Per-database settings, from the URI parameters of the main database open.
//!
//! | parameter      | default        | meaning                                                    |
//! |----------------|----------------|------------------------------------------------------------|
//! | `backup`       | `<db>-backup`  | path of the backup copy                                    |
//! | `spool`        | `<db>-spool`   | spool directory                                            |
//! | `spool_sync`   | `normal`       | `full`: fsync spool records at commit (survive power loss) |
//! | `spool_drain_ms` | `10000`      | how long the last close waits for the backup to catch up   |
//!
//! Relative paths resolve against the current directory, as SQLite resolves the database path.
//! Invariant: a `Config` never names the source database (or its journal/WAL) as backup or spool.

use std::path::{Component, Path, PathBuf};

/// Settings of one tracked database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub db: PathBuf,
    pub backup: PathBuf,
    pub spool: PathBuf,
    pub durable: bool,
    pub drain_ms: u64,
}

/// URI parameter names we own; any other `spool_*` parameter is a typo we report.
pub const KNOWN_PARAMS: &[&str] = &["backup", "spool", "spool_sync", "spool_drain_ms"];

fn absolute(p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(p)
    };
    // Lexical clean-up of "." and ".." so comparisons are meaningful.
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Resolves symlinks of the longest existing prefix of `p` (the rest may not exist yet).
fn resolve(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) if parent != p => resolve(parent).join(name),
        _ => p.to_path_buf(),
    }
}

/// The database whose WAL is `wal` (its path without the `-wal` suffix), if it is named like one.
pub fn db_of_wal(wal: &Path) -> Option<&Path> {
    use std::os::unix::ffi::OsStrExt;
    let db = wal.as_os_str().as_bytes().strip_suffix(b"-wal")?;
    Some(Path::new(std::ffi::OsStr::from_bytes(db)))
}

/// The form of a database path that `Config::db` holds: absolute, with symbolic links resolved.
pub fn db_key(p: &Path) -> PathBuf {
    resolve(&absolute(p))
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => resolve(a) == resolve(b),
    }
}

impl Config {
    /// A file of the source database: its path with `suffix` appended (`-wal`, `-journal`).
    pub fn db_file(&self, suffix: &str) -> PathBuf {
        let mut os = self.db.as_os_str().to_owned();
        os.push(suffix);
        os.into()
    }

    /// Builds the configuration of database `db` (the full path SQLite opened) from its URI
    /// parameters (`param` returns the value of one) and the list of parameter names present.
    pub fn from_uri(
        db: &Path,
        param: impl Fn(&str) -> Option<String>,
        names: &[String],
    ) -> Result<Config, String> {
        for n in names {
            if (n.starts_with("spool") || n.starts_with("backup"))
                && !KNOWN_PARAMS.contains(&n.as_str())
            {
                return Err(format!(
                    "unknown URI parameter '{n}' (spoolvfs knows: {})",
                    KNOWN_PARAMS.join(", ")
                ));
            }
        }
        let db = db_key(db);
        let with_suffix = |s: &str| {
            let mut os = db.clone().into_os_string();
            os.push(s);
            PathBuf::from(os)
        };
        let path_param = |name: &str, default: PathBuf| -> Result<PathBuf, String> {
            match param(name) {
                None => Ok(default),
                Some(v) if v.is_empty() => Err(format!("URI parameter '{name}' is empty")),
                Some(v) => Ok(resolve(&absolute(Path::new(&v)))),
            }
        };
        let backup = path_param("backup", with_suffix("-backup"))?;
        let spool = path_param("spool", with_suffix("-spool"))?;
        let durable = match param("spool_sync").as_deref() {
            None | Some("normal") | Some("off") => false,
            Some("full") => true,
            Some(v) => {
                return Err(format!(
                    "URI parameter spool_sync='{v}': expected normal or full"
                ));
            }
        };
        let drain_ms = match param("spool_drain_ms") {
            None => 10_000,
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| format!("URI parameter spool_drain_ms='{v}' is not a number"))?,
        };
        let cfg = Config {
            db,
            backup,
            spool,
            durable,
            drain_ms,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        let db_files = ["", "-journal", "-wal", "-shm"].map(|s| {
            let mut os = self.db.clone().into_os_string();
            os.push(s);
            PathBuf::from(os)
        });
        for f in &db_files {
            if same_file(&self.backup, f) {
                return Err(format!(
                    "backup path {} is the source database itself (or one of its files)",
                    self.backup.display()
                ));
            }
            if same_file(&self.spool, f) {
                return Err(format!(
                    "spool path {} is a file of the source database",
                    self.spool.display()
                ));
            }
        }
        if same_file(&self.spool, &self.backup) {
            return Err("spool directory and backup path are the same".to_string());
        }
        if self.spool.is_file() {
            return Err(format!(
                "spool path {} is a file, not a directory",
                self.spool.display()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(db: &Path, params: &[(&str, &str)]) -> Result<Config, String> {
        let names: Vec<String> = params.iter().map(|(k, _)| k.to_string()).collect();
        Config::from_uri(
            db,
            |k| {
                params
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            },
            &names,
        )
    }

    fn tmp(name: &str) -> PathBuf {
        let d = crate::util::fresh_test_dir("cfg", name);
        std::fs::write(d.join("app.db"), b"x").unwrap();
        d
    }

    #[test]
    fn defaults_sit_beside_the_database() {
        let d = tmp("defaults");
        let c = cfg(&d.join("app.db"), &[]).unwrap();
        assert!(c.backup.ends_with("app.db-backup"));
        assert!(c.spool.ends_with("app.db-spool"));
        assert!(!c.durable);
    }

    #[test]
    fn rejects_backup_equal_to_source_even_through_a_link() {
        let d = tmp("same");
        let db = d.join("app.db");
        assert!(
            cfg(&db, &[("backup", db.to_str().unwrap())])
                .unwrap_err()
                .contains("source")
        );
        let link = d.join("link.db");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&db, &link).unwrap();
        assert!(cfg(&db, &[("backup", link.to_str().unwrap())]).is_err());
        let hard = d.join("hard.db");
        let _ = std::fs::remove_file(&hard);
        std::fs::hard_link(&db, &hard).unwrap();
        assert!(cfg(&db, &[("backup", hard.to_str().unwrap())]).is_err());
        let wal = format!("{}-wal", db.display());
        assert!(cfg(&db, &[("backup", &wal)]).is_err());
    }

    #[test]
    fn rejects_bad_parameters() {
        let d = tmp("bad");
        let db = d.join("app.db");
        assert!(
            cfg(&db, &[("spool_sink", "full")])
                .unwrap_err()
                .contains("spool_sink")
        );
        assert!(cfg(&db, &[("spool_sync", "maybe")]).is_err());
        assert!(cfg(&db, &[("backup", "")]).is_err());
        assert!(cfg(&db, &[("spool", db.to_str().unwrap())]).is_err());
        assert!(cfg(&db, &[("spool_sync", "full")]).unwrap().durable);
    }
}
