//! Reading `policy_dir` again and again, fast: the same set and the same
//! errors as [`carwash_policy::load_path`], but kept in a
//! [`carwash_policy::IncrementalSet`], so that a change costs the files that
//! changed. A file is read again only when an inotify event names it or, on
//! a full re-read, when its metadata changed; it is parsed again only when
//! its contents did (a hash of the text). Many files (the first read of a
//! large directory) are read and parsed on every core.
use std::collections::HashMap;
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use carwash_policy::{IncrementalSet, PolicyError, PolicyErrors, Prepared};

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

/// What was read from a file: its metadata then, and a hash of its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    key: Option<FileKey>,
    hash: Option<u64>,
}

fn text_hash(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// The policy files of a directory, parsed and validated as one set.
#[derive(Debug, Default)]
pub struct DirCache {
    set: IncrementalSet,
    seen: HashMap<OsString, Seen>,
    dir: PathBuf,
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
    names.sort();
    Some(names)
}

/// A file to read and parse: its name, and its metadata if it has any.
type Job = (OsString, Option<FileKey>);

/// Reads and parses files, on every core when there are many.
fn read_all(dir: &Path, jobs: Vec<Job>) -> Vec<(OsString, Seen, Option<Prepared>)> {
    let one = |(name, key): Job| {
        let path = dir.join(&name);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let hash = Some(text_hash(&text));
                let doc = Prepared::parse(&path, &text);
                (name, Seen { key, hash }, Some(doc))
            }
            Err(e) => (name, Seen { key, hash: None }, Some(Prepared::unreadable(&path, &e))),
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if threads < 2 || jobs.len() < 64 {
        return jobs.into_iter().map(one).collect();
    }
    let per = jobs.len().div_ceil(threads);
    let mut parts: Vec<Vec<Job>> = Vec::new();
    let mut jobs = jobs.into_iter().peekable();
    while jobs.peek().is_some() {
        parts.push(jobs.by_ref().take(per).collect());
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| s.spawn(move || part.into_iter().map(one).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}

impl DirCache {
    /// The set as last loaded (valid or not).
    pub fn set(&self) -> &IncrementalSet {
        &self.set
    }

    pub fn set_mut(&mut self) -> &mut IncrementalSet {
        &mut self.set
    }

    /// Loads `dir`, trusting that only the files `changed` names changed
    /// since the last load (with `None`, every file's metadata is checked).
    /// The agent passes what inotify reported; anything it cannot pin to
    /// policy files (an overflow, a dot-file, the directory itself) becomes
    /// `None`. The answer is [`carwash_policy::load_path`]'s: `Ok` with the
    /// set in [`DirCache::set`], or every error.
    pub fn load_changed(&mut self, dir: &Path, changed: Option<&[PathBuf]>) -> Result<(), PolicyErrors> {
        if self.dir != dir {
            *self = DirCache {
                dir: dir.to_path_buf(),
                ..Default::default()
            };
        }
        match changed {
            Some(paths) => self.reread(dir, paths),
            None => self.rescan(dir)?,
        }
        self.set.check()
    }

    /// Loads `dir`, reading only files whose metadata changed.
    pub fn load(&mut self, dir: &Path) -> Result<(), PolicyErrors> {
        self.load_changed(dir, None)
    }

    fn forget(&mut self, name: &OsString) {
        self.seen.remove(name);
        self.set.remove(&self.dir.join(name));
    }

    fn take(&mut self, results: Vec<(OsString, Seen, Option<Prepared>)>) {
        for (name, seen, doc) in results {
            let old = self.seen.insert(name, seen);
            match doc {
                // The same text as before: the parsed document stands.
                Some(_) if old.is_some_and(|o| o.hash.is_some() && o.hash == seen.hash) => {}
                Some(doc) => self.set.insert(doc),
                None => {}
            }
        }
    }

    /// The files inotify named (in `dir`; others are ignored).
    fn reread(&mut self, dir: &Path, paths: &[PathBuf]) {
        let mut names: Vec<OsString> = paths
            .iter()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(OsString::from))
            .filter(|n| super::is_policy_file(Path::new(n)))
            .collect();
        names.sort();
        names.dedup();
        let mut jobs = Vec::new();
        for name in names {
            let path = dir.join(&name);
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => self.forget(&name),
                Ok(m) => {
                    let key = Some(FileKey::of(&m));
                    let same = self.seen.get(&name).is_some_and(|s| s.key == key);
                    if !same || !self.set.contains(&path) {
                        jobs.push((name, key));
                    }
                }
                // A dangling symlink is read (and reported); a file that is
                // gone is forgotten.
                Err(_) if std::fs::symlink_metadata(&path).is_ok() => jobs.push((name, None)),
                Err(_) => self.forget(&name),
            }
        }
        let results = read_all(dir, jobs);
        self.take(results);
    }

    /// Every file of `dir`, re-reading those whose metadata changed.
    fn rescan(&mut self, dir: &Path) -> Result<(), PolicyErrors> {
        let Some(names) = policy_files(dir) else {
            self.seen.clear();
            self.set = IncrementalSet::new();
            return Err(match carwash_policy::load_path(dir) {
                Err(e) => e,
                Ok(_) => PolicyError::file(dir, "cannot list directory: it changed while being read").into(),
            });
        };
        let listed: std::collections::HashSet<&OsString> = names.iter().collect();
        let gone: Vec<OsString> = self.seen.keys().filter(|n| !listed.contains(n)).cloned().collect();
        for name in &gone {
            self.forget(name);
        }
        // Documents the set has without a record of the file (none, unless
        // the set was edited from outside): read again.
        let stray: Vec<PathBuf> = self
            .set
            .paths()
            .filter(|p| p.file_name().is_none_or(|n| !self.seen.contains_key(n)))
            .map(Path::to_path_buf)
            .collect();
        for p in stray {
            self.set.remove(&p);
        }
        let mut jobs = Vec::new();
        for name in names {
            let key = std::fs::metadata(dir.join(&name)).ok().map(|m| FileKey::of(&m));
            let same = key.is_some() && self.seen.get(&name).is_some_and(|s| s.key == key);
            if !same {
                jobs.push((name, key));
            }
        }
        let results = read_all(dir, jobs);
        self.take(results);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(c: &mut DirCache, d: &Path) -> Result<carwash_policy::PolicySet, PolicyErrors> {
        c.load(d)?;
        c.set().to_set()
    }

    fn load_changed(c: &mut DirCache, d: &Path, ch: &[PathBuf]) -> Result<carwash_policy::PolicySet, PolicyErrors> {
        c.load_changed(d, Some(ch))?;
        c.set().to_set()
    }

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
        assert_eq!(load(&mut c, &d), carwash_policy::load_path(&d));
        std::fs::write(d.join("a.toml"), policy("a", 1)).unwrap();
        std::fs::write(d.join("b.toml"), policy("b", 2)).unwrap();
        std::fs::write(d.join(".c.toml"), "garbage").unwrap();
        let first = load(&mut c, &d).unwrap();
        assert_eq!(first, carwash_policy::load_path(&d).unwrap());
        assert_eq!(first.tenants.len(), 2);
        // Unchanged: from the cache, same set.
        assert_eq!(load(&mut c, &d).unwrap(), first);
        // A change of size is seen without any invalidation.
        std::fs::write(d.join("b.toml"), policy("b", 23)).unwrap();
        assert_eq!(load(&mut c, &d).unwrap().get("b").unwrap().vni, 23);
        // Errors are load_path's, with lines.
        std::fs::write(d.join("b.toml"), policy("b", 1)).unwrap();
        let e = load(&mut c, &d).unwrap_err();
        assert_eq!(e, carwash_policy::load_path(&d).unwrap_err());
        assert!(e.0.iter().all(|x| x.line > 0), "{e}");
        std::fs::write(d.join("b.toml"), "name = ").unwrap();
        assert_eq!(
            load(&mut c, &d).unwrap_err(),
            carwash_policy::load_path(&d).unwrap_err()
        );
        // Trusting the change list: a file named is read again, others not.
        std::fs::write(d.join("b.toml"), policy("b", 24)).unwrap();
        let b = d.join("b.toml");
        assert_eq!(
            load_changed(&mut c, &d, std::slice::from_ref(&b))
                .unwrap()
                .get("b")
                .unwrap()
                .vni,
            24
        );
        assert_eq!(load_changed(&mut c, &d, &[]).unwrap().get("b").unwrap().vni, 24);
        // A change to an unchanged file's VIP, named alone, is still checked
        // against the other files: refused at its line, naming the other.
        std::fs::write(&b, policy("b", 24).replace("203.0.113.24", "203.0.113.1")).unwrap();
        let e = c.load_changed(&d, Some(std::slice::from_ref(&b))).unwrap_err();
        assert_eq!(e, carwash_policy::load_path(&d).unwrap_err());
        assert_eq!((e.0[0].line, e.0[0].field.as_str()), (4, "vips[0]"));
        assert!(e.0[0].message.contains("a.toml:4:9"), "{e}");
        // Removing the file frees its claims: a file named in the list that
        // is gone is forgotten.
        std::fs::remove_file(&b).unwrap();
        assert_eq!(
            load_changed(&mut c, &d, std::slice::from_ref(&b))
                .unwrap()
                .tenants
                .len(),
            1
        );
        // A rename (both names in the list) moves the tenant.
        std::fs::write(&b, policy("b", 2)).unwrap();
        load_changed(&mut c, &d, std::slice::from_ref(&b)).unwrap();
        let z = d.join("z.toml");
        std::fs::rename(&b, &z).unwrap();
        let e = c.load_changed(&d, Some(&[b.clone(), z.clone()])).unwrap_err();
        assert_eq!(e, carwash_policy::load_path(&d).unwrap_err(), "name b in z.toml");
        std::fs::write(&z, policy("z", 2)).unwrap();
        let set = load_changed(&mut c, &d, std::slice::from_ref(&z)).unwrap();
        assert_eq!(set, carwash_policy::load_path(&d).unwrap());
        assert_eq!(set.get("z").unwrap().vni, 2);
        // Removed files are gone from the set on a full read too.
        std::fs::remove_file(&z).unwrap();
        assert_eq!(load(&mut c, &d).unwrap().tenants.len(), 1);
        std::fs::remove_dir_all(&d).unwrap();
        assert_eq!(load(&mut c, &d), carwash_policy::load_path(&d));
    }

    #[test]
    fn many_files_are_read_in_parallel_with_the_same_answer() {
        let d = dir().join("many");
        std::fs::create_dir_all(&d).unwrap();
        for i in 1..=200 {
            std::fs::write(d.join(format!("t{i}.toml")), policy(&format!("t{i}"), i)).unwrap();
        }
        // One broken file, one conflict: every error, as load_path says.
        std::fs::write(d.join("t7.toml"), "name = \"t7\"\nvni = [").unwrap();
        std::fs::write(d.join("t9.toml"), policy("t9", 9).replace("vni = 9", "vni = 8")).unwrap();
        let mut c = DirCache::default();
        assert_eq!(c.load(&d).unwrap_err(), carwash_policy::load_path(&d).unwrap_err());
        std::fs::write(d.join("t7.toml"), policy("t7", 7)).unwrap();
        std::fs::write(d.join("t9.toml"), policy("t9", 9)).unwrap();
        let set = load(&mut c, &d).unwrap();
        assert_eq!(set, carwash_policy::load_path(&d).unwrap());
        assert_eq!(set.tenants.len(), 200);
        std::fs::remove_dir_all(d.parent().unwrap()).unwrap();
    }
}
