//! Reading `policy_dir` again and again, fast: the same set and the same
//! errors as [`carwash_policy::load_path`], but a file whose metadata did
//! not change (and that no inotify event named) is not read and parsed
//! again, and parsed documents are kept without their field positions (which
//! are most of their memory). Positions only serve error messages, and
//! whether a set is valid does not depend on them: when the quick check
//! finds anything wrong, the directory is read again with `load_path`, whose
//! errors are reported.
use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use carwash_policy::{Document, PolicyErrors, PolicySet, Positions, Tenant};

/// What identifies a file's contents without reading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileKey {
    fn of(m: &std::fs::Metadata) -> FileKey {
        FileKey {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// Parsed policy files by file name.
#[derive(Debug, Default)]
pub struct DirCache {
    files: HashMap<OsString, (FileKey, Tenant)>,
    /// Within `load_changed`: cached files not named as changed are taken
    /// as they are, without a `stat`.
    trust: bool,
}

/// The files `load_path` takes from a directory: regular files (or
/// symlinks, even dangling ones) ending in `.toml` or `.json`, not dot-files,
/// in name order. `None` when the directory cannot be listed.
fn policy_files(dir: &Path) -> Option<Vec<OsString>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).ok()? {
        let e = e.ok()?;
        let name = e.file_name();
        if !super::is_policy_file(Path::new(&name)) {
            continue;
        }
        // As `Path::is_dir`: follows symlinks; a dangling one is kept.
        let is_dir = match e.file_type() {
            Ok(ft) if ft.is_symlink() => dir.join(&name).is_dir(),
            Ok(ft) => ft.is_dir(),
            Err(_) => false,
        };
        if !is_dir {
            names.push(name);
        }
    }
    // In one directory, path order is file name order.
    names.sort();
    Some(names)
}

impl DirCache {
    /// Forgets what was parsed from `paths`, or from every file with `None`.
    pub fn invalidate(&mut self, paths: Option<&[PathBuf]>) {
        match paths {
            None => self.files.clear(),
            Some(ps) => {
                for p in ps {
                    if let Some(n) = p.file_name() {
                        self.files.remove(n);
                    }
                }
            }
        }
    }

    /// Loads `dir` as [`carwash_policy::load_path`] does, trusting that
    /// only the files `changed` names changed since the last load (with
    /// `None`, every file is read again). The agent passes what inotify
    /// reported; anything it cannot pin to policy files (an overflow, a
    /// dot-file, the directory itself) becomes `None`.
    pub fn load_changed(&mut self, dir: &Path, changed: Option<&[PathBuf]>) -> Result<PolicySet, PolicyErrors> {
        self.invalidate(changed);
        self.trust = changed.is_some();
        let r = self.load(dir);
        self.trust = false;
        r
    }

    /// Loads `dir` as [`carwash_policy::load_path`] does, reusing what was
    /// parsed from files whose metadata did not change.
    pub fn load(&mut self, dir: &Path) -> Result<PolicySet, PolicyErrors> {
        let Some(names) = policy_files(dir) else {
            self.files.clear();
            return carwash_policy::load_path(dir);
        };
        let mut old = std::mem::take(&mut self.files);
        let mut docs = Vec::with_capacity(names.len());
        let mut keys = Vec::with_capacity(names.len());
        let mut clean = true;
        for name in names {
            let path = dir.join(&name);
            if self.trust
                && let Some((key, tenant)) = old.remove(&name)
            {
                docs.push(Document {
                    file: path,
                    tenant,
                    positions: Positions::default(),
                });
                keys.push((name, key));
                continue;
            }
            let Ok(meta) = std::fs::metadata(&path) else {
                clean = false;
                continue;
            };
            let key = FileKey::of(&meta);
            let tenant = match old.remove(&name) {
                Some((k, t)) if k == key => t,
                _ => {
                    let Ok(text) = std::fs::read_to_string(&path) else {
                        clean = false;
                        continue;
                    };
                    match carwash_policy::parse_document(&path, &text) {
                        Ok(doc) => doc.tenant,
                        Err(_) => {
                            clean = false;
                            continue;
                        }
                    }
                }
            };
            docs.push(Document {
                file: path,
                tenant,
                positions: Positions::default(),
            });
            keys.push((name, key));
        }
        let quick = if clean {
            carwash_policy::validate_set(&docs).ok()
        } else {
            None
        };
        for (doc, (name, key)) in docs.into_iter().zip(keys) {
            self.files.insert(name, (key, doc.tenant));
        }
        match quick {
            Some(set) => Ok(set),
            // Something is wrong: the errors as load_path reports them.
            None => carwash_policy::load_path(dir),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "carwash-dircache-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn policy(name: &str, vni: u32) -> String {
        format!(
            "name = \"{name}\"\nvni = {vni}\nlane = \"single\"\nvips = [\"203.0.113.{vni}\"]\nvpc_cidrs = [\"10.0.0.0/16\"]\nconnectors = [{{ vtep = \"10.200.{vni}.1\", mac = \"02:00:00:00:{vni:02x}:01\" }}]\ncores = [{{ vtep = \"10.200.{vni}.2\", mac = \"02:00:00:00:{vni:02x}:02\" }}]\n"
        )
    }

    #[test]
    fn same_answers_as_load_path() {
        let d = dir();
        let mut c = DirCache::default();
        assert_eq!(c.load(&d), carwash_policy::load_path(&d));
        std::fs::write(d.join("a.toml"), policy("a", 1)).unwrap();
        std::fs::write(d.join("b.toml"), policy("b", 2)).unwrap();
        std::fs::write(d.join(".c.toml"), "garbage").unwrap();
        let first = c.load(&d).unwrap();
        assert_eq!(first, carwash_policy::load_path(&d).unwrap());
        assert_eq!(first.tenants.len(), 2);
        // Unchanged: from the cache, same set.
        assert_eq!(c.load(&d).unwrap(), first);
        // A change of size is seen without any invalidation.
        std::fs::write(d.join("b.toml"), policy("b", 23)).unwrap();
        assert_eq!(c.load(&d).unwrap().get("b").unwrap().vni, 23);
        // Errors are load_path's, with lines.
        std::fs::write(d.join("b.toml"), policy("b", 1)).unwrap();
        let e = c.load(&d).unwrap_err();
        assert_eq!(e, carwash_policy::load_path(&d).unwrap_err());
        assert!(e.0.iter().all(|x| x.line > 0), "{e}");
        std::fs::write(d.join("b.toml"), "name = ").unwrap();
        assert_eq!(c.load(&d).unwrap_err(), carwash_policy::load_path(&d).unwrap_err());
        // Trusting the change list: a file named is read again, others not.
        std::fs::write(d.join("b.toml"), policy("b", 24)).unwrap();
        let b = d.join("b.toml");
        assert_eq!(
            c.load_changed(&d, Some(std::slice::from_ref(&b)))
                .unwrap()
                .get("b")
                .unwrap()
                .vni,
            24
        );
        assert_eq!(c.load_changed(&d, Some(&[])).unwrap().get("b").unwrap().vni, 24);
        // Removed files are gone from the set.
        std::fs::remove_file(d.join("b.toml")).unwrap();
        assert_eq!(c.load(&d).unwrap().tenants.len(), 1);
        std::fs::remove_dir_all(&d).unwrap();
        assert_eq!(c.load(&d), carwash_policy::load_path(&d));
    }
}
