//! Applying a validated policy set to the maps: only what changed is
//! rewritten.
//!
//! The engine keeps, per tenant id, what it knows the maps hold: the name,
//! the policy last installed (or only its digest, after a restart), and the
//! keys the tenant owns in `ADDRS`, `SERVICES` and `VNIS` (scanned from the
//! maps on adoption, so stale keys are found even when the policy that
//! wrote them is unknown). An apply then runs in four steps:
//!
//! 1. `META.digest` is zeroed: "an apply is under way" (an agent that
//!    adopts pins with a zero digest and a non-zero generation knows that
//!    some tenants may be half-way and re-installs every tenant);
//! 2. new and changed tenants are installed through
//!    [`Dataplane::install_tenants`] in one batch, which keeps each of them
//!    fail-closed and switches each as a whole; unchanged tenants are not
//!    touched; machine health (a connector marked down, the active core)
//!    is carried over for machines the new policy keeps;
//! 3. keys that changed tenants no longer have, and all keys of removed
//!    tenants, are deleted, each only if it still points to that tenant
//!    (so a VIP that moved from one tenant to another in this set is never
//!    unclaimed in between); removed tenants' records go last;
//! 4. `META` gets generation + 1, the set's digest and the time, and the
//!    state file (per-tenant digests, for the next agent) is rewritten.
//!
//! The allow slots of removed tenants are emptied later ([`Engine::housekeep`]),
//! once no packet can still be using them.
//!
//! A failure in step 2 or 3 rolls back to the previous set when the engine
//! knows all of it, else leaves `META.digest` zero so that the next apply
//! re-installs everything.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use carwash_policy::{PolicySet, Tenant};
use dataplane_common::{
    LAYOUT_VERSION,
    types::{MAX_ADDRS, MAX_ALLOW_PREFIXES, MAX_SERVICES, MAX_TENANTS, Meta},
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::Dataplane;
use crate::clock::wall_secs;
use crate::maps::policy::entries::{TenantEntries, carried_health};
use crate::maps::policy::tenants::allow_masks;

/// What the engine knows about one installed tenant.
#[derive(Debug, Clone)]
pub struct Installed {
    pub name: String,
    /// [`tenant_digest`] of what is installed; known when `json` is, or
    /// from the state file after a restart.
    pub digest: Option<String>,
    /// The canonical JSON of the policy last installed by this agent (for
    /// the set digest, and to tell changes): the policy itself, in a
    /// fraction of the memory of a parsed [`Tenant`].
    pub json: Option<String>,
    /// Every key the tenant may own in the maps (a superset after a failed
    /// apply; removals check ownership).
    pub entries: TenantEntries,
}

impl Installed {
    /// The policy last installed by this agent, if it knows it.
    pub fn policy(&self) -> Option<Tenant> {
        serde_json::from_str(self.json.as_deref()?).ok()
    }
}

pub use crate::api::ApplyReport;

/// A validated policy set to apply, as the engine reads it: by name, and
/// all of it. A [`PolicySet`] is one (through [`SetIndex`]), and so is the
/// agent's [`carwash_policy::IncrementalSet`] of `policy_dir`.
pub trait Target {
    fn count(&self) -> usize;
    fn tenant(&self, name: &str) -> Option<&Tenant>;
    fn each(&self) -> Box<dyn Iterator<Item = &Tenant> + '_>;
}

/// A [`PolicySet`] indexed by name.
pub struct SetIndex<'a> {
    set: &'a PolicySet,
    by_name: std::collections::HashMap<&'a str, &'a Tenant>,
}

impl<'a> SetIndex<'a> {
    pub fn new(set: &'a PolicySet) -> SetIndex<'a> {
        SetIndex {
            set,
            by_name: set.tenants.iter().map(|t| (t.name.as_str(), t)).collect(),
        }
    }
}

impl Target for SetIndex<'_> {
    fn count(&self) -> usize {
        self.set.tenants.len()
    }
    fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.by_name.get(name).copied()
    }
    fn each(&self) -> Box<dyn Iterator<Item = &Tenant> + '_> {
        Box::new(self.set.tenants.iter())
    }
}

impl Target for carwash_policy::IncrementalSet {
    fn count(&self) -> usize {
        self.len()
    }
    fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.get(name)
    }
    fn each(&self) -> Box<dyn Iterator<Item = &Tenant> + '_> {
        Box::new(self.tenants())
    }
}

/// The per-tenant digests of the set in force, written beside the API
/// socket after every apply so that the next agent can tell which tenants
/// are unchanged without rewriting them. Trusted only when its generation
/// and digest equal `META`'s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    pub generation: u64,
    pub digest: String,
    /// tenant name → [`tenant_digest`].
    pub tenants: BTreeMap<String, String>,
}

/// SHA-256 of one tenant's canonical JSON (the set digest of a set of one).
pub fn tenant_digest(t: &Tenant) -> String {
    super::digest::tenant_digest_of_json(&super::digest::tenant_json(t))
}

pub use super::digest::hex;

fn unhex32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = s
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    out
}

/// A limit of the maps a policy set would exceed: which tenant (none: the
/// set as a whole), the policy field that counts towards it, and the figure
/// against the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityError {
    pub tenant: Option<String>,
    pub field: &'static str,
    pub message: String,
}

impl std::fmt::Display for CapacityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tenant {
            Some(t) => write!(f, "tenant {t}: {}: {}", self.field, self.message),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

impl CapacityError {
    /// The error as a policy error of `file` (the tenant's document, or for
    /// the set as a whole the directory or request it came in), at the
    /// field's place when `positions` of that document are given.
    pub fn at(&self, file: &Path, text: Option<&str>) -> carwash_policy::PolicyError {
        let (line, column) = text
            .and_then(|t| carwash_policy::parse_document(file, t).ok())
            .and_then(|d| d.positions.get(self.field))
            .unwrap_or((0, 0));
        carwash_policy::PolicyError {
            file: file.to_path_buf(),
            line,
            column,
            field: self.field.to_string(),
            message: match &self.tenant {
                Some(_) => self.message.clone(),
                None => format!("the policy set: {}", self.message),
            },
        }
    }
}

/// Checks the limits of the maps that validation of the policy model does
/// not know about, before anything is written.
pub fn check_capacity(set: &PolicySet) -> Result<(), Vec<CapacityError>> {
    check_capacity_of(set.tenants.len(), set.tenants.iter())
}

/// [`check_capacity`] of `count` tenants.
pub fn check_capacity_of<'a>(
    count: usize,
    tenants: impl Iterator<Item = &'a Tenant>,
) -> Result<(), Vec<CapacityError>> {
    let mut errors = Vec::new();
    if count as u32 >= MAX_TENANTS {
        errors.push(CapacityError {
            tenant: None,
            field: "name",
            message: format!("{count} tenants: the maps hold at most {}", MAX_TENANTS - 1),
        });
    }
    let (mut addrs, mut services) = (0usize, 0usize);
    for t in tenants {
        // Validated sets claim each VIP, egress IP and port once.
        let egress = t.egress.as_ref().map_or(0, |e| 1 + usize::from(e.snat_ipv6.is_some()));
        addrs += t.vips.len() + egress;
        services += t.vips.len() * (t.https_ports.len() + t.jms_ports.len());
        for (v6, family) in [(false, "IPv4"), (true, "IPv6")] {
            // allow_masks merges equal prefixes: count exactly only when
            // the entries alone could be too many. The tries hold the
            // vpc_cidrs and the egress allowlist too.
            let entries = t.allow.iter().filter(|a| a.cidr.is_ipv6() == v6).count()
                + t.vpc_cidrs.iter().filter(|n| n.is_ipv6() == v6).count()
                + t.egress
                    .iter()
                    .flat_map(|e| e.allow.iter())
                    .filter(|n| n.is_ipv6() == v6)
                    .count();
            let n = if entries > MAX_ALLOW_PREFIXES as usize {
                allow_masks(t, v6).len()
            } else {
                entries
            };
            if n > MAX_ALLOW_PREFIXES as usize {
                errors.push(CapacityError {
                    tenant: Some(t.name.clone()),
                    field: "allow",
                    message: format!(
                        "allow, vpc_cidrs and egress allow: {n} {family} prefixes, at most {MAX_ALLOW_PREFIXES}"
                    ),
                });
            }
        }
    }
    if addrs > MAX_ADDRS as usize {
        errors.push(CapacityError {
            tenant: None,
            field: "vips",
            message: format!("{addrs} VIPs and egress addresses in all: the maps hold at most {MAX_ADDRS}"),
        });
    }
    if services > MAX_SERVICES as usize {
        errors.push(CapacityError {
            tenant: None,
            field: "https_ports",
            message: format!(
                "{services} services (VIP × port, https_ports and jms_ports) in all: the maps hold at most {MAX_SERVICES}"
            ),
        });
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// Whether two policies of a tenant give its tries the same egress
/// prefixes.
fn same_egress_allow(a: &Tenant, b: &Tenant) -> bool {
    a.egress.as_ref().map(|e| &e.allow) == b.egress.as_ref().map(|e| &e.allow)
}

/// The apply engine: what is installed, by tenant id.
#[derive(Debug, Default)]
pub struct Engine {
    pub installed: BTreeMap<u32, Installed>,
    /// Name → id of every named tenant in `installed`.
    by_name: BTreeMap<String, u32>,
    /// Set when the engine may not know the maps' tenants exactly from
    /// the last apply (a failure, a set applied without a hint): the next
    /// apply compares every tenant whatever hint it gets.
    compare_all: bool,
    pub generation: u64,
    /// Digest of the set in force; empty when it is not known as a whole
    /// (nothing applied yet, or a half-done apply was adopted).
    pub digest: String,
    pub applied_at: u64,
    /// Ids removed by an earlier apply whose allow slots are still to be
    /// emptied (not at once: a packet may still be using them).
    pending_clear: BTreeSet<u32>,
    state_file: Option<PathBuf>,
    /// The ids the apply under way touches and their policies before it
    /// (when all are known): with the untouched tenants, what a failed
    /// apply restores.
    rollback: Option<(BTreeSet<u32>, Vec<Tenant>)>,
}

impl Engine {
    /// Rebuilds what is installed from the maps (after a restart, or on a
    /// fresh start with empty maps): names from `TENANT_NAMES`, keys from a
    /// scan of `ADDRS`/`SERVICES`/`VNIS`, per-tenant digests from the state
    /// file when it matches `META`.
    pub fn adopt(dp: &Dataplane, state_file: Option<&Path>) -> Result<Engine> {
        let meta = dp.meta()?;
        let names = dp.tenant_names()?;
        let mut scanned = dp.scan_entries()?;
        let records = dp.tenant_ids()?;
        let state: Option<StateFile> = state_file.and_then(|p| {
            let text = std::fs::read_to_string(p).ok()?;
            serde_json::from_str(&text).ok()
        });
        let meta_digest = if meta.digest == [0u8; 32] {
            String::new()
        } else {
            hex(&meta.digest)
        };
        let trusted =
            state.filter(|s| !meta_digest.is_empty() && s.digest == meta_digest && s.generation == meta.generation);
        if trusted.is_none() && !names.is_empty() {
            info!(
                tenants = names.len(),
                "no per-tenant digests match the pinned generation: every tenant will be re-installed once"
            );
        }
        let mut installed = BTreeMap::new();
        let ids: BTreeSet<u32> = names
            .keys()
            .copied()
            .chain(records.iter().copied())
            .chain(scanned.keys().copied())
            .collect();
        for id in ids {
            let name = names.get(&id).cloned().unwrap_or_default();
            let digest = trusted.as_ref().and_then(|s| s.tenants.get(&name).cloned());
            installed.insert(
                id,
                Installed {
                    name,
                    digest,
                    json: None,
                    entries: scanned.remove(&id).unwrap_or_default(),
                },
            );
        }
        let by_name = installed
            .iter()
            .filter(|(_, i)| !i.name.is_empty())
            .map(|(id, i)| (i.name.clone(), *id))
            .collect();
        Ok(Engine {
            installed,
            by_name,
            compare_all: true,
            generation: meta.generation,
            digest: meta_digest,
            applied_at: meta.applied_at,
            pending_clear: BTreeSet::new(),
            state_file: state_file.map(Path::to_path_buf),
            rollback: None,
        })
    }

    /// The id of each tenant in force, by name.
    pub fn ids(&self) -> BTreeMap<String, u32> {
        self.by_name.clone()
    }

    /// Whether `t` differs from what tenant `id` has installed. A tenant
    /// known by digest only (after a restart) and found unchanged becomes
    /// known by policy.
    fn changed(&mut self, id: u32, t: &Tenant) -> bool {
        let Some(i) = self.installed.get_mut(&id) else {
            return true;
        };
        if i.name != t.name {
            return true;
        }
        match (&i.json, &i.digest) {
            (Some(j), _) => *j != super::digest::tenant_json(t),
            (None, Some(d)) => {
                let json = super::digest::tenant_json(t);
                if *d != super::digest::tenant_digest_of_json(&json) {
                    return true;
                }
                i.json = Some(json);
                false
            }
            (None, None) => true,
        }
    }

    /// The digest of the set in force, all of whose tenants are installed
    /// (`target` is that set): from their canonical JSON, serialized once
    /// per change, in name order.
    fn digest_of(&mut self, target: &dyn Target) -> String {
        let missing: Vec<(u32, String)> = self
            .by_name
            .values()
            .filter(|id| self.installed[id].json.is_none())
            .map(|id| {
                let i = &self.installed[id];
                let json = target
                    .tenant(&i.name)
                    .map(super::digest::tenant_json)
                    .unwrap_or_default();
                (*id, json)
            })
            .collect();
        for (id, json) in missing {
            if let Some(i) = self.installed.get_mut(&id) {
                i.json = Some(json);
            }
        }
        super::digest::set_digest(
            self.by_name
                .values()
                .map(|id| self.installed[id].json.as_deref().unwrap_or_default()),
        )
    }

    /// Applies `set` (validated already): see the module documentation.
    pub fn apply(&mut self, dp: &mut Dataplane, set: &PolicySet) -> Result<ApplyReport> {
        let r = self.apply_with(dp, &SetIndex::new(set), None);
        // Whoever handed over a whole set may follow up with hints relative
        // to another one: the next apply compares everything.
        self.compare_all = true;
        r
    }

    /// Applies `target` (validated already). With `hint`, the names of the
    /// only tenants that may differ from the set the last successful apply
    /// put in force (added, changed or removed since), only those are
    /// compared: the cost of an apply is then that of the change. The hint
    /// is ignored when the engine cannot vouch for the maps (after a start
    /// or a failure): then every tenant is compared.
    pub fn apply_with(
        &mut self,
        dp: &mut Dataplane,
        target: &dyn Target,
        hint: Option<&BTreeSet<String>>,
    ) -> Result<ApplyReport> {
        if let Err(errors) = check_capacity_of(target.count(), target.each()) {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            bail!("{}", lines.join("\n"));
        }
        let hint = hint.filter(|_| !self.compare_all && !self.digest.is_empty());
        self.rollback = None;
        // The whole set goes into the generation not in force, and one map
        // write switches to it: every packet sees the old set or the new.
        dp.begin_policy()?;
        let first = self.apply_inner(dp, target, hint);
        self.compare_all = first.is_err();
        if first.is_ok() {
            // The new set is in force; the old copy catches up once no
            // packet can be reading it (one RCU grace period, waited for on
            // a thread): the agent settles it when idle, or the next apply
            // does first.
            dp.commit_policy()?;
        } else {
            // Whatever got written (and rolled back) never was in force: the
            // generation in force is the previous set, and the other is made
            // its copy again.
            dp.abort_policy()?;
        }
        match first {
            Ok(r) => Ok(r),
            Err(e) => {
                warn!(error = %format!("{e:#}"), "apply failed part-way");
                let old = self.rollback.take().and_then(|(touched, saved)| {
                    let untouched: Option<Vec<Tenant>> = self
                        .installed
                        .iter()
                        .filter(|(id, _)| !touched.contains(id))
                        .map(|(_, i)| i.policy())
                        .collect();
                    untouched.map(|mut u| {
                        u.extend(saved);
                        PolicySet::new(u)
                    })
                });
                match old {
                    Some(old) => match self.apply_inner(dp, &SetIndex::new(&old), None) {
                        Ok(r) => {
                            warn!(generation = r.generation, "rolled back to the previous policy set");
                            Err(e.context("applying the policy set failed; the previous set was restored"))
                        }
                        Err(e2) => Err(e.context(format!(
                            "applying the policy set failed, and so did restoring the previous one ({e2:#}); every tenant will be re-installed by the next apply"
                        ))),
                    },
                    None => Err(e.context(
                        "applying the policy set failed part-way; every tenant will be re-installed by the next apply",
                    )),
                }
            }
        }
    }

    fn apply_inner(
        &mut self,
        dp: &mut Dataplane,
        target: &dyn Target,
        hint: Option<&BTreeSet<String>>,
    ) -> Result<ApplyReport> {
        let t0 = Instant::now();
        // The tenants to compare: those the hint names, or all of them.
        let (candidates, removed_ids): (Vec<&Tenant>, Vec<u32>) = match hint {
            Some(names) => (
                names.iter().filter_map(|n| target.tenant(n)).collect(),
                names
                    .iter()
                    .filter(|n| target.tenant(n).is_none())
                    .filter_map(|n| self.by_name.get(n).copied())
                    .collect(),
            ),
            None => (
                target.each().collect(),
                self.installed
                    .iter()
                    .filter(|(_, i)| i.name.is_empty() || target.tenant(&i.name).is_none())
                    .map(|(id, _)| *id)
                    .collect(),
            ),
        };

        // Ids: stable per name; new tenants take free ids, not one freed
        // in this apply or still waiting for its slots to be cleared.
        let mut next_id = self.installed.keys().chain(&self.pending_clear).copied().max();
        let mut taken: Option<BTreeSet<u32>> = None;
        let mut plan: Vec<(u32, &Tenant, bool)> = Vec::new(); // (id, policy, new)
        for t in candidates {
            match self.by_name.get(&t.name) {
                Some(&id) => {
                    if self.changed(id, t) {
                        plan.push((id, t, false));
                    }
                }
                None => {
                    // Above the highest id in use while there is room
                    // (no set to build), else the lowest free one.
                    let id = match next_id.unwrap_or(0) + 1 {
                        id if id < MAX_TENANTS => id,
                        _ => {
                            let taken = taken.get_or_insert_with(|| {
                                let mut s: BTreeSet<u32> = self.installed.keys().copied().collect();
                                s.extend(self.pending_clear.iter().copied());
                                s.extend(plan.iter().map(|(id, _, _)| *id));
                                s
                            });
                            let id = free_id(taken).context("no free tenant id")?;
                            taken.insert(id);
                            id
                        }
                    };
                    next_id = Some(next_id.map_or(id, |n| n.max(id)));
                    plan.push((id, t, true));
                }
            }
        }
        let unchanged = target.count() - plan.len();
        let mut report = ApplyReport {
            generation: self.generation,
            tenants: target.count(),
            unchanged,
            ..Default::default()
        };
        if plan.is_empty() && removed_ids.is_empty() {
            // The set in force, unchanged: its digest is known, unless META
            // did not have it (e.g. adopted pins of a half-done apply).
            if !self.digest.is_empty() {
                report.digest = self.digest.clone();
                report.micros = t0.elapsed().as_micros() as u64;
                return Ok(report);
            }
            let digest = self.digest_of(target);
            report.digest = digest.clone();
            {
                // Same tenants, but META did not say so (e.g. first apply
                // after adopting pins whose digest was unknown).
                self.finish(dp, &digest)?;
                report.generation = self.generation;
            }
            report.micros = t0.elapsed().as_micros() as u64;
            return Ok(report);
        }

        // What a failure restores: the tenants this apply leaves alone
        // (untouched in `installed`) and the old policies of those it
        // changes or removes, saved here.
        let touched: BTreeSet<u32> = plan
            .iter()
            .map(|(id, _, _)| *id)
            .chain(removed_ids.iter().copied())
            .collect();
        let saved: Option<Vec<Tenant>> = touched
            .iter()
            .filter_map(|id| self.installed.get(id))
            .map(|i| i.policy())
            .collect();
        self.rollback = saved.map(|saved| (touched, saved));

        // 1. An apply is under way.
        dp.set_meta(&Meta {
            layout_version: LAYOUT_VERSION,
            generation: self.generation,
            applied_at: self.applied_at,
            digest: [0; 32],
            ..Default::default()
        })?;
        self.digest.clear();

        // 2. New and changed tenants, in one batch (one RCU grace period
        // for all their allowlist swaps), each switched as a whole. A
        // tenant whose allowlists stay as they are keeps its tries: no swap,
        // no wait.
        let mut batch = Vec::with_capacity(plan.len());
        let mut same_allow = BTreeSet::new();
        for &(id, t, new) in &plan {
            let wanted_entries = TenantEntries::of(t);
            if new {
                self.by_name.insert(t.name.clone(), id);
            }
            let entry = self.installed.entry(id).or_insert_with(|| Installed {
                name: t.name.clone(),
                digest: None,
                json: None,
                entries: TenantEntries::default(),
            });
            // The tries hold the allowlist, the vpc_cidrs and the egress
            // allowlist: all three must be the same to keep them.
            if entry
                .policy()
                .is_some_and(|p| p.allow == t.allow && p.vpc_cidrs == t.vpc_cidrs && same_egress_allow(&p, t))
            {
                same_allow.insert(id);
            }
            // Until the install is done, the tenant may own old and new keys.
            entry.name = t.name.clone();
            entry.digest = None;
            entry.json = None;
            entry.entries.union(&wanted_entries);
            if new {
                dp.clear_tenant_stats(id)?;
                dp.remove_tenant_health(id)?;
            }
            dp.set_tenant_name(id, &t.name)?;
            let current = if new { None } else { dp.tenant_info(id)? };
            batch.push((id, t, carried_health(current.as_ref(), t)));
        }
        dp.install_tenants_reusing(&batch, &|id| same_allow.contains(&id))
            .with_context(|| {
                let names: Vec<&str> = batch.iter().take(5).map(|(_, t, _)| t.name.as_str()).collect();
                let more = batch.len().saturating_sub(names.len());
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                format!("installing tenants {}{more}", names.join(", "))
            })?;
        for &(id, t, new) in &plan {
            let entry = self.installed.get_mut(&id).expect("inserted above");
            let json = super::digest::tenant_json(t);
            entry.digest = Some(super::digest::tenant_digest_of_json(&json));
            entry.json = Some(json);
            if new {
                report.added.push(t.name.clone());
            } else {
                report.changed.push(t.name.clone());
            }
            debug!(tenant = %t.name, id, new, "installed");
        }

        // 3. Stale keys of changed tenants, then removed tenants.
        for &(id, t, _) in &plan {
            let wanted_entries = TenantEntries::of(t);
            let entry = self.installed.get_mut(&id).expect("installed above");
            let stale = entry.entries.minus(&wanted_entries);
            if !stale.is_empty() {
                dp.remove_owned_entries(id, &stale)
                    .with_context(|| format!("removing stale entries of tenant {}", t.name))?;
                debug!(tenant = %t.name, addrs = stale.addrs.len(), services = stale.services.len(), vnis = stale.vnis.len(), "stale entries removed");
            }
            entry.entries = wanted_entries;
        }
        for id in removed_ids {
            let entry = self.installed.get(&id).expect("listed above").clone();
            dp.remove_owned_entries(id, &entry.entries)
                .with_context(|| format!("removing tenant {} (id {id})", entry.name))?;
            dp.remove_tenant_record(id)?;
            dp.remove_tenant_health(id)?;
            self.installed.remove(&id);
            if self.by_name.get(&entry.name) == Some(&id) {
                self.by_name.remove(&entry.name);
            }
            self.pending_clear.insert(id);
            if !entry.name.is_empty() {
                report.removed.push(entry.name.clone());
            }
            debug!(tenant = %entry.name, id, "removed");
        }

        // 4. The new generation (the digest is computed now, once the maps
        // have the new policies).
        let digest = self.digest_of(target);
        self.finish(dp, &digest)?;
        report.digest = digest;
        report.generation = self.generation;
        report.micros = t0.elapsed().as_micros() as u64;
        Ok(report)
    }

    /// Empties the allow slots of tenants removed by earlier applies (not
    /// in the apply itself: a packet may still be using them then, and
    /// each emptying costs an RCU grace period the apply need not wait
    /// for). Returns how many tenants' slots were emptied.
    pub fn housekeep(&mut self, dp: &mut Dataplane) -> Result<usize> {
        let ids: Vec<u32> = self
            .pending_clear
            .iter()
            .copied()
            .filter(|id| !self.installed.contains_key(id))
            .collect();
        dp.clear_allow_slots(&ids)?;
        self.pending_clear.clear();
        Ok(ids.len())
    }

    fn finish(&mut self, dp: &mut Dataplane, digest: &str) -> Result<()> {
        self.generation += 1;
        self.applied_at = wall_secs();
        self.digest = digest.to_string();
        dp.set_meta(&Meta {
            layout_version: LAYOUT_VERSION,
            generation: self.generation,
            applied_at: self.applied_at,
            digest: unhex32(digest),
            ..Default::default()
        })?;
        if let Some(path) = &self.state_file {
            // A StateFile, serialized straight from the engine (tenants in
            // name order, as the BTreeMap of StateFile orders them).
            let tenants = self
                .by_name
                .iter()
                .filter_map(|(name, id)| Some((name, self.installed.get(id)?.digest.as_ref()?)));
            let state = StateFileOut {
                generation: self.generation,
                digest,
                tenants: MapOf(std::cell::RefCell::new(Some(tenants))),
            };
            let bytes = serde_json::to_vec(&state)?;
            if let Err(e) = write_atomic(path, &bytes) {
                // Only costs the next agent a full re-install.
                warn!(path = %path.display(), error = %format!("{e:#}"), "cannot write the state file");
            }
        }
        Ok(())
    }
}

/// A [`StateFile`] as it is written: borrowed from the engine.
#[derive(Serialize)]
#[serde(bound(serialize = "MapOf<I>: Serialize"))]
struct StateFileOut<'a, I> {
    generation: u64,
    digest: &'a str,
    tenants: MapOf<I>,
}

/// Serializes an iterator of pairs as a JSON object, once.
struct MapOf<I>(std::cell::RefCell<Option<I>>);

impl<'a, I: Iterator<Item = (&'a String, &'a String)>> Serialize for MapOf<I> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.0.borrow_mut().take() {
            Some(it) => s.collect_map(it),
            None => s.collect_map(std::iter::empty::<(&str, &str)>()),
        }
    }
}

/// The lowest free id above the highest one in use, else the lowest free
/// one: ids are not reused sooner than needed, so counters and state keyed
/// by a removed tenant's id are unlikely to meet a new tenant.
fn free_id(taken: &BTreeSet<u32>) -> Option<u32> {
    let max = taken.iter().next_back().copied().unwrap_or(0);
    if max + 1 < MAX_TENANTS {
        return Some(max + 1);
    }
    (1..MAX_TENANTS).find(|i| !taken.contains(i))
}

/// Writes `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ids_go_up_then_wrap() {
        assert_eq!(free_id(&BTreeSet::new()), Some(1));
        assert_eq!(free_id(&[1, 2, 5].into_iter().collect()), Some(6));
        let mut all: BTreeSet<u32> = (1..MAX_TENANTS).collect();
        assert_eq!(free_id(&all), None);
        all.remove(&7);
        assert_eq!(free_id(&all), Some(7));
    }

    #[test]
    fn the_state_file_is_written_as_it_is_read() {
        let (a, b) = (("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string()));
        let out = StateFileOut {
            generation: 7,
            digest: "d",
            tenants: MapOf(std::cell::RefCell::new(Some([(&a.0, &a.1), (&b.0, &b.1)].into_iter()))),
        };
        let back: StateFile = serde_json::from_slice(&serde_json::to_vec(&out).unwrap()).unwrap();
        let want = StateFile {
            generation: 7,
            digest: "d".into(),
            tenants: [a.clone(), b.clone()].into_iter().collect(),
        };
        assert_eq!(back, want);
    }

    #[test]
    fn digests_round_trip_through_meta_bytes() {
        let d = PolicySet::default().digest();
        assert_eq!(hex(&unhex32(&d)), d);
    }
}
