//! A policy set kept up to date one document at a time, for an agent that
//! follows a directory of 10,000 files: replacing, adding or removing one
//! document costs that document (parsing it, checking it on its own, and
//! looking its claims up in indexes of the whole set), not the set.
//!
//! The answer is the one [`crate::load_path`] / [`crate::validate_set`] give
//! for the same documents, error for error: each document is checked on its
//! own when it comes in (with its field positions, which are then dropped;
//! only the positions of its claims are kept), and every name, VNI, VIP,
//! VTEP and egress IP is indexed with the documents that claim it, so the
//! set-wide errors are those of the few keys claimed more than once. The
//! first claimant of a key is the first in path order, as in a full check.
//! Tests compare both ways on random sets and edits.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use crate::digest::PolicySet;
use crate::error::{PolicyError, PolicyErrors};
use crate::model::Tenant;
use crate::parse::{Document, parse_document};
use crate::validate::check_tenant;

/// Something only one tenant of a set may have.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum ClaimKey {
    Name(Box<str>),
    Vni(u32),
    Vip(IpAddr),
    Vtep(Ipv4Addr),
    Egress(IpAddr),
}

/// Which field of a document makes a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimField {
    Name,
    Vni,
    Vip(u32),
    Connector(u32),
    Core(u32),
    Egress4,
    Egress6,
}

impl ClaimField {
    fn path(self) -> String {
        match self {
            ClaimField::Name => "name".into(),
            ClaimField::Vni => "vni".into(),
            ClaimField::Vip(i) => format!("vips[{i}]"),
            ClaimField::Connector(i) => format!("connectors[{i}].vtep"),
            ClaimField::Core(i) => format!("cores[{i}].vtep"),
            ClaimField::Egress4 => "egress.snat_ipv4".into(),
            ClaimField::Egress6 => "egress.snat_ipv6".into(),
        }
    }
}

impl ClaimField {
    /// What the field claims in `t`.
    fn key(self, t: &Tenant) -> ClaimKey {
        match self {
            ClaimField::Name => ClaimKey::Name(t.name.as_str().into()),
            ClaimField::Vni => ClaimKey::Vni(t.vni),
            ClaimField::Vip(i) => ClaimKey::Vip(t.vips[i as usize]),
            ClaimField::Connector(i) => ClaimKey::Vtep(t.connectors[i as usize].vtep),
            ClaimField::Core(i) => ClaimKey::Vtep(t.cores[i as usize].vtep),
            ClaimField::Egress4 => ClaimKey::Egress(IpAddr::V4(t.egress.as_ref().expect("claimed").snat_ipv4)),
            ClaimField::Egress6 => ClaimKey::Egress(IpAddr::V6(
                t.egress.as_ref().and_then(|e| e.snat_ipv6).expect("claimed"),
            )),
        }
    }
}

/// One claim of a document: by which field (what it claims is read from
/// the tenant), and where that field is (line and column as
/// `Positions::locate` gives them).
#[derive(Debug, Clone)]
struct Site {
    field: ClaimField,
    line: u32,
    column: u32,
}

/// A document as the set keeps it: the tenant (None if it did not parse),
/// its own errors (parse errors, or those of checking it alone), its claims.
#[derive(Debug, Clone)]
pub struct Prepared {
    path: PathBuf,
    tenant: Option<Tenant>,
    errors: Vec<PolicyError>,
    sites: Vec<Site>,
}

impl Prepared {
    /// Parses and checks one document on its own (TOML, or JSON when the
    /// name ends in `.json`). Independent of any set: can run on many
    /// threads at once.
    pub fn parse(path: &Path, text: &str) -> Prepared {
        match parse_document(path, text) {
            Ok(doc) => Prepared::of_document(&doc),
            Err(e) => Prepared {
                path: path.to_path_buf(),
                tenant: None,
                errors: e.0,
                sites: Vec::new(),
            },
        }
    }

    /// A file that could not be read, with the error `load_path` gives.
    pub fn unreadable(path: &Path, error: &std::io::Error) -> Prepared {
        Prepared {
            path: path.to_path_buf(),
            tenant: None,
            errors: vec![PolicyError::file(path, format!("cannot read: {error}"))],
            sites: Vec::new(),
        }
    }

    /// A parsed document, checked on its own.
    pub fn of_document(doc: &Document) -> Prepared {
        let mut errors = Vec::new();
        check_tenant(doc, &mut errors);
        let t = &doc.tenant;
        let mut sites = Vec::new();
        let mut add = |field: ClaimField| {
            let (line, column) = doc.positions.locate(&field.path());
            sites.push(Site {
                field,
                line: line as u32,
                column: column as u32,
            });
        };
        add(ClaimField::Name);
        add(ClaimField::Vni);
        for i in 0..t.vips.len() {
            add(ClaimField::Vip(i as u32));
        }
        for i in 0..t.connectors.len() {
            add(ClaimField::Connector(i as u32));
        }
        for i in 0..t.cores.len() {
            add(ClaimField::Core(i as u32));
        }
        if let Some(e) = &t.egress {
            add(ClaimField::Egress4);
            if e.snat_ipv6.is_some() {
                add(ClaimField::Egress6);
            }
        }
        Prepared {
            path: doc.file.clone(),
            tenant: Some(doc.tenant.clone()),
            errors,
            sites,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What each site claims.
    fn keys(&self) -> Vec<ClaimKey> {
        match &self.tenant {
            Some(t) => self.sites.iter().map(|s| s.field.key(t)).collect(),
            None => Vec::new(),
        }
    }

    pub fn tenant(&self) -> Option<&Tenant> {
        self.tenant.as_ref()
    }
}

/// Which claim of which document: `file` is an index into `docs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ClaimRef {
    file: u32,
    site: u32,
}

/// The documents claiming a key; almost always one.
#[derive(Debug, Clone)]
enum Claimants {
    One(ClaimRef),
    Many(Vec<ClaimRef>),
}

impl Claimants {
    fn as_slice(&self) -> &[ClaimRef] {
        match self {
            Claimants::One(c) => std::slice::from_ref(c),
            Claimants::Many(v) => v,
        }
    }
}

/// A policy set that follows edits of single documents; see the module
/// documentation.
#[derive(Debug, Default)]
pub struct IncrementalSet {
    /// Document slots; `None` for a freed slot (see `free`).
    docs: Vec<Option<Prepared>>,
    free: Vec<u32>,
    by_path: BTreeMap<PathBuf, u32>,
    claims: HashMap<ClaimKey, Claimants>,
    /// Keys whose claimants make at least one error.
    conflicts: BTreeSet<ClaimKey>,
    /// Documents with errors of their own.
    broken: BTreeSet<u32>,
    /// Tenant names added, changed or removed since [`IncrementalSet::take_touched`].
    touched: BTreeSet<String>,
}

impl IncrementalSet {
    pub fn new() -> IncrementalSet {
        IncrementalSet::default()
    }

    /// How many documents the set holds (valid or not).
    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// The paths of the documents, in path order.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.by_path.keys().map(PathBuf::as_path)
    }

    pub fn contains(&self, path: &Path) -> bool {
        self.by_path.contains_key(path)
    }

    fn doc(&self, file: u32) -> &Prepared {
        self.docs[file as usize]
            .as_ref()
            .expect("a claim names a live document")
    }

    fn site(&self, c: ClaimRef) -> &Site {
        &self.doc(c.file).sites[c.site as usize]
    }

    /// Path order, then field order: who claimed first in a full check.
    fn order(&self, c: ClaimRef) -> (&Path, u32) {
        (&self.doc(c.file).path, c.site)
    }

    /// Adds the document, or replaces the one at the same path.
    pub fn insert(&mut self, doc: Prepared) {
        self.remove(&doc.path.clone());
        if let Some(t) = &doc.tenant {
            self.touched.insert(t.name.clone());
        }
        let file = match self.free.pop() {
            Some(f) => f,
            None => {
                self.docs.push(None);
                (self.docs.len() - 1) as u32
            }
        };
        let keys = doc.keys();
        if !doc.errors.is_empty() {
            self.broken.insert(file);
        }
        self.by_path.insert(doc.path.clone(), file);
        self.docs[file as usize] = Some(doc);
        for (site, key) in keys.iter().enumerate() {
            let c = ClaimRef {
                file,
                site: site as u32,
            };
            match self.claims.remove(key) {
                None => {
                    self.claims.insert(key.clone(), Claimants::One(c));
                }
                Some(old) => {
                    let mut v = old.as_slice().to_vec();
                    let at = v.partition_point(|x| self.order(*x) < self.order(c));
                    v.insert(at, c);
                    self.claims.insert(key.clone(), Claimants::Many(v));
                }
            }
        }
        self.recheck(&keys);
    }

    /// Removes the document at `path`; false if there is none.
    pub fn remove(&mut self, path: &Path) -> bool {
        let Some(file) = self.by_path.remove(path) else {
            return false;
        };
        let doc = self.docs[file as usize].take().expect("indexed documents are live");
        self.broken.remove(&file);
        self.free.push(file);
        if let Some(t) = &doc.tenant {
            self.touched.insert(t.name.clone());
        }
        let keys = doc.keys();
        for key in &keys {
            let Some(old) = self.claims.remove(key) else { continue };
            let mut v: Vec<ClaimRef> = old.as_slice().iter().copied().filter(|c| c.file != file).collect();
            match v.len() {
                0 => {}
                1 => {
                    self.claims.insert(key.clone(), Claimants::One(v[0]));
                }
                _ => {
                    v.shrink_to_fit();
                    self.claims.insert(key.clone(), Claimants::Many(v));
                }
            }
        }
        self.recheck(&keys);
        true
    }

    /// Updates the conflict set for keys whose claimants changed (and the
    /// egress keys a VIP change can make or unmake a conflict of).
    fn recheck(&mut self, keys: &[ClaimKey]) {
        for key in keys {
            let extra = match key {
                ClaimKey::Vip(ip) => Some(ClaimKey::Egress(*ip)),
                _ => None,
            };
            for k in std::iter::once(key).chain(extra.as_ref()) {
                if self.key_has_errors(k) {
                    self.conflicts.insert(k.clone());
                } else {
                    self.conflicts.remove(k);
                }
            }
        }
    }

    fn claimants(&self, key: &ClaimKey) -> &[ClaimRef] {
        self.claims.get(key).map_or(&[], Claimants::as_slice)
    }

    fn key_has_errors(&self, key: &ClaimKey) -> bool {
        let cs = self.claimants(key);
        match key {
            ClaimKey::Name(_) | ClaimKey::Vni(_) | ClaimKey::Vip(_) => cs.len() > 1,
            // Within one document check_tenant reports it.
            ClaimKey::Vtep(_) => cs.iter().any(|c| c.file != cs[0].file),
            ClaimKey::Egress(ip) => cs.len() > 1 || (!cs.is_empty() && !self.claimants(&ClaimKey::Vip(*ip)).is_empty()),
        }
    }

    /// `file:line:column, field` of a claim, as `validate` writes it.
    fn place(&self, c: ClaimRef) -> String {
        let (doc, site) = (self.doc(c.file), self.site(c));
        match site.line {
            0 => format!("{}, {}", doc.path.display(), site.field.path()),
            line => format!("{}:{line}:{}, {}", doc.path.display(), site.column, site.field.path()),
        }
    }

    fn describe(&self, c: ClaimRef) -> String {
        let name = self.doc(c.file).tenant.as_ref().map_or("", |t| t.name.as_str());
        format!("tenant {name:?} ({})", self.place(c))
    }

    fn error_at(&self, c: ClaimRef, message: String) -> PolicyError {
        let (doc, site) = (self.doc(c.file), self.site(c));
        PolicyError {
            file: doc.path.clone(),
            line: site.line as usize,
            column: site.column as usize,
            field: site.field.path(),
            message,
        }
    }

    /// The errors the claimants of `key` get, with the phase of the full
    /// check that finds them (for the order of errors at one spot).
    fn key_errors(&self, key: &ClaimKey, out: &mut Vec<(u8, ClaimRef, PolicyError)>) {
        let cs = self.claimants(key);
        let Some(&first) = cs.first() else { return };
        let later = cs.iter().copied().skip(1);
        match key {
            ClaimKey::Name(name) => {
                for c in later {
                    let m = format!("tenant name {name:?} is already used by {}", self.describe(first));
                    out.push((1, c, self.error_at(c, m)));
                }
            }
            ClaimKey::Vni(vni) => {
                for c in later {
                    let m = format!("VNI {vni} is already used by {}", self.describe(first));
                    out.push((1, c, self.error_at(c, m)));
                }
            }
            ClaimKey::Vip(vip) => {
                for c in later {
                    let m = if c.file == first.file {
                        format!("VIP {vip} is listed twice (also {})", self.place(first))
                    } else {
                        format!("VIP {vip} is already claimed by {}", self.describe(first))
                    };
                    out.push((2, c, self.error_at(c, m)));
                }
            }
            ClaimKey::Vtep(vtep) => {
                for c in later.filter(|c| c.file != first.file) {
                    let m = format!("VTEP {vtep} is already a machine of {}", self.describe(first));
                    out.push((3, c, self.error_at(c, m)));
                }
            }
            ClaimKey::Egress(ip) => {
                if let Some(&vip) = self.claimants(&ClaimKey::Vip(*ip)).first() {
                    for &c in cs {
                        let whose = if c.file == vip.file {
                            format!("this tenant's VIPs ({})", self.place(vip))
                        } else {
                            format!("the VIPs of {}", self.describe(vip))
                        };
                        let m =
                            format!("egress IP {ip} is one of {whose}; the egress IP must be an address of its own");
                        out.push((4, c, self.error_at(c, m)));
                    }
                } else {
                    for c in later {
                        let m = format!("egress IP {ip} is already the egress IP of {}", self.describe(first));
                        out.push((4, c, self.error_at(c, m)));
                    }
                }
            }
        }
    }

    /// Whether the set is valid: cost independent of its size.
    pub fn is_valid(&self) -> bool {
        self.broken.is_empty() && self.conflicts.is_empty()
    }

    /// Every error of the set, exactly as a full check of the same
    /// documents reports them; costs the documents with errors.
    pub fn errors(&self) -> Vec<PolicyError> {
        // (path, phase, site or error index, error): the order in which
        // the full check finds them, which decides between errors at one spot.
        let mut found: Vec<(&Path, u8, usize, PolicyError)> = Vec::new();
        for &file in &self.broken {
            let doc = self.doc(file);
            for (i, e) in doc.errors.iter().enumerate() {
                found.push((&doc.path, 0, i, e.clone()));
            }
        }
        let mut claims = Vec::new();
        for key in &self.conflicts {
            self.key_errors(key, &mut claims);
        }
        for (phase, c, e) in claims {
            found.push((&self.doc(c.file).path, phase, c.site as usize, e));
        }
        found.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
        let errors: Vec<PolicyError> = found.into_iter().map(|(_, _, _, e)| e).collect();
        PolicyErrors::sorted(errors).0
    }

    /// `Ok` when the set is valid, else every error.
    pub fn check(&self) -> Result<(), PolicyErrors> {
        if self.is_valid() {
            Ok(())
        } else {
            Err(PolicyErrors(self.errors()))
        }
    }

    /// The tenant named `name`, if exactly one document claims that name.
    pub fn get(&self, name: &str) -> Option<&Tenant> {
        match self.claims.get(&ClaimKey::Name(name.into()))? {
            Claimants::One(c) => self.doc(c.file).tenant.as_ref(),
            Claimants::Many(_) => None,
        }
    }

    /// Every tenant that parsed, in path order.
    pub fn tenants(&self) -> impl Iterator<Item = &Tenant> {
        self.by_path.values().filter_map(|&f| self.doc(f).tenant.as_ref())
    }

    /// The set as a [`PolicySet`], if it is valid (copies every tenant).
    pub fn to_set(&self) -> Result<PolicySet, PolicyErrors> {
        self.check()?;
        Ok(PolicySet::new(self.tenants().cloned().collect()))
    }

    /// The names of tenants added, changed or removed since the last call
    /// (a tenant renamed counts under both names).
    pub fn take_touched(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.touched)
    }

    /// The names touched so far, without forgetting them.
    pub fn touched(&self) -> &BTreeSet<String> {
        &self.touched
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::check_documents;

    /// A tiny deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A document whose claims are its own (from its stem) but now and then
    /// drawn from small shared pools, so that collisions of every kind (and
    /// sometimes a syntax error or a bad field) happen.
    fn random_doc(r: &mut Rng, stem: &str) -> (String, String) {
        // Own values start at 10, clear of the pools' 0..3.
        let own: u64 = 10 + stem[1..].parse::<u64>().unwrap();
        let pick = |r: &mut Rng, base: u64| if r.below(14) == 0 { r.below(3) } else { base };
        let name = if r.below(14) == 0 {
            format!("t{}", r.below(3))
        } else {
            stem.to_string()
        };
        let vni = 1 + pick(r, own);
        let v = |r: &mut Rng, k: u64| format!("\"203.0.113.{}\"", pick(r, 10 * own + k));
        let mut vips = vec![v(r, 0)];
        if r.below(3) == 0 {
            vips.push(v(r, 1));
        }
        if r.below(30) == 0 {
            vips.push("\"2001:db8::1\"".into());
        }
        let lane = if r.below(2) == 0 { "single" } else { "double" };
        let n = if lane == "single" { 1 } else { 2 };
        let mut k = 0;
        let mut machines = |r: &mut Rng| {
            (0..n)
                .map(|_| {
                    k += 1;
                    let vt = pick(r, 10 * own + k);
                    let mac = if r.below(20) == 0 { 2 } else { 2 * k };
                    format!("{{ vtep = \"10.200.0.{vt}\", mac = \"02:00:00:00:00:{mac:02x}\" }}")
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (conn, cores) = (machines(r), machines(r));
        let mut text = format!(
            "name = \"{name}\"\nvni = {vni}\nlane = \"{lane}\"\nvips = [{}]\nvpc_cidrs = [\"10.0.0.0/16\"]\nconnectors = [{}]\ncores = [{}]\n",
            vips.join(", "),
            conn,
            cores
        );
        match r.below(5) {
            0 => text.push_str(&format!("[egress]\nsnat_ipv4 = {}\n", v(r, 5))),
            1 => text.push_str(&format!(
                "[egress]\nsnat_ipv4 = \"198.51.100.{}\"\nsnat_ipv6 = \"2001:db8::{}\"\n",
                pick(r, own),
                pick(r, own)
            )),
            _ => {}
        }
        if r.below(60) == 0 {
            text.push_str("bogus = [\n");
        }
        if r.below(60) == 0 {
            text = text.replace("vni = ", "vni = 99999999");
        }
        let json = r.below(4) == 0;
        if json {
            // The same document as JSON, through the parser.
            if let Ok(t) = Tenant::from_toml(&text) {
                return (format!("{stem}.json"), serde_json::to_string_pretty(&t).unwrap());
            }
        }
        (format!("{stem}.toml"), text)
    }

    fn full(docs: &BTreeMap<String, String>) -> Result<PolicySet, PolicyErrors> {
        let list: Vec<(PathBuf, String)> = docs
            .iter()
            .map(|(n, t)| (Path::new("pol").join(n), t.clone()))
            .collect();
        check_documents(&list)
    }

    #[test]
    fn same_answers_as_a_full_check_through_random_edits() {
        let (mut valid, mut kinds) = (0, BTreeSet::new());
        for seed in 1..=40u64 {
            let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut docs: BTreeMap<String, String> = BTreeMap::new();
            let mut inc = IncrementalSet::new();
            for step in 0..60 {
                let stem = format!("t{}", r.below(10));
                let existing: Vec<String> = docs.keys().filter(|k| k.starts_with(&stem)).cloned().collect();
                if !existing.is_empty() && r.below(4) == 0 {
                    for f in existing {
                        docs.remove(&f);
                        assert!(inc.remove(&Path::new("pol").join(&f)));
                    }
                } else {
                    let (file, text) = random_doc(&mut r, &stem);
                    // Mostly one file per stem, sometimes both .toml and .json.
                    if r.below(5) != 0 {
                        for f in existing.iter().filter(|f| **f != file) {
                            docs.remove(f);
                            assert!(inc.remove(&Path::new("pol").join(f)));
                        }
                    }
                    let path = Path::new("pol").join(&file);
                    inc.insert(Prepared::parse(&path, &text));
                    docs.insert(file, text);
                }
                let want = full(&docs);
                let got = inc.to_set();
                assert_eq!(got, want, "seed {seed} step {step}: {docs:#?}");
                assert_eq!(inc.is_valid(), want.is_ok());
                match &want {
                    Ok(_) => valid += 1,
                    Err(e) => kinds.extend(
                        e.0.iter()
                            .map(|e| e.message.split(' ').take(3).collect::<Vec<_>>().join(" ")),
                    ),
                }
            }
        }
        // The edits reach both answers and every kind of set-wide error.
        assert!(valid > 300, "{valid} valid sets");
        for kind in ["tenant name", "VNI", "VIP", "VTEP", "egress IP"] {
            assert!(
                kinds.iter().any(|k| k.contains("already") || k.starts_with(kind)),
                "{kind}: {kinds:?}"
            );
        }
    }

    #[test]
    fn a_conflict_with_an_unchanged_file_is_found_and_freed() {
        let doc = |name: &str, vni: u32, vip: &str| {
            format!(
                "name = \"{name}\"\nvni = {vni}\nlane = \"single\"\nvips = [\"{vip}\"]\nvpc_cidrs = [\"10.0.0.0/16\"]\nconnectors = [{{ vtep = \"10.200.{vni}.1\", mac = \"02:00:00:00:00:01\" }}]\ncores = [{{ vtep = \"10.200.{vni}.2\", mac = \"02:00:00:00:00:02\" }}]\n"
            )
        };
        let mut inc = IncrementalSet::new();
        let (a, b) = (Path::new("d/a.toml"), Path::new("d/b.toml"));
        inc.insert(Prepared::parse(a, &doc("a", 1, "203.0.113.1")));
        inc.insert(Prepared::parse(b, &doc("b", 2, "203.0.113.2")));
        assert!(inc.is_valid());
        assert_eq!(inc.take_touched().len(), 2);
        // b now claims a's VIP: refused at b's line 4, naming a.
        inc.insert(Prepared::parse(b, &doc("b", 2, "203.0.113.1")));
        let e = inc.check().unwrap_err().0;
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!((e[0].file.as_path(), e[0].line, e[0].field.as_str()), (b, 4, "vips[0]"));
        assert!(
            e[0].message
                .contains("already claimed by tenant \"a\" (d/a.toml:4:9, vips[0])"),
            "{}",
            e[0]
        );
        // A file sorting before a takes a's VIP: now a is the one refused.
        let z = Path::new("d/0.toml");
        inc.insert(Prepared::parse(z, &doc("0", 3, "203.0.113.1")));
        let e = inc.check().unwrap_err().0;
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].file.as_path(), a);
        // Removing the newcomer and b's change frees the claims.
        assert!(inc.remove(z));
        inc.insert(Prepared::parse(b, &doc("b", 2, "203.0.113.2")));
        assert!(inc.is_valid(), "{:?}", inc.errors());
        // Renaming: the file moves, the claims follow.
        assert!(inc.remove(b));
        let c = Path::new("d/c.toml");
        inc.insert(Prepared::parse(c, &doc("c", 2, "203.0.113.2")));
        assert!(inc.is_valid());
        assert_eq!(
            inc.take_touched().into_iter().collect::<Vec<_>>(),
            ["0", "b", "c"].map(String::from).to_vec()
        );
        assert_eq!(inc.get("c").map(|t| t.vni), Some(2));
        assert!(inc.get("b").is_none());
    }
}
