//! The two generations of the policy maps, from userspace.
//!
//! `ADDR_FILTER`, `ADDRS`, `SERVICES`, `VNIS` and `TENANTS` hold two copies
//! of the policy, told apart by a generation in the key
//! (`types::GENERATIONS`); the `GENERATION` map names the one in force, and
//! each packet reads it once. A policy transaction ([`Dataplane::begin_policy`]
//! .. [`Dataplane::commit_policy`]) writes only the other copy, then switches
//! to it in one map write: a packet sees the whole old set or the whole new
//! one, across tenants. The writes are kept and replayed into the old copy
//! later ([`Dataplane::settle`]), once no packet can still be using it (an
//! RCU grace period after the switch), so that both copies are equal again
//! before the next transaction starts.
//!
//! Outside a transaction (tests, health changes) a write goes to both
//! copies at once, as before there were two.
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use aya::maps::{Array, HashMap, IterableMap, LpmTrie, MapData};
use dataplane_common::hash::ADDR_FILTER_WORDS;
use dataplane_common::maps;
use dataplane_common::types::{
    AddrKey, AddrValue, Allow4, AllowMask, SERVICE_GEN_BIT, ServiceKey, ServiceValue, TenantInfo, addr_key_gen,
    service_key_gen, tenant_key, vni_key,
};
use std::os::fd::{AsFd, AsRawFd};

use crate::batch;

/// One write to the policy maps, without its generation.
#[derive(Debug, Clone)]
enum Op {
    Addr(AddrKey, Option<AddrValue>),
    Service(ServiceKey, Option<ServiceValue>),
    Vni(u32, Option<u32>),
    Tenant(u32, Option<Box<TenantInfo>>),
    FilterWord(u32, u64),
}

/// Where the policy maps stand.
#[derive(Default)]
pub struct Generations {
    /// The generation in force.
    pub active: u32,
    /// Inside a transaction: writes go to the other generation only.
    txn: bool,
    /// Writes the generation not in force still lacks.
    replay: Vec<Op>,
    switched_at: Option<Instant>,
    /// The last `TenantInfo::version` handed out (0: not read from the maps
    /// yet).
    policy_version: u32,
    /// The wait for an RCU grace period started at the last switch, on a
    /// thread of its own: by the next transaction it is usually over, so
    /// the replay costs no waiting.
    grace: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    /// The empty trie slot 0 of `ALLOW_V4` is pointed at to wait for an RCU
    /// grace period: always the same one, so the maps look the same after.
    sync_trie: Option<LpmTrie<MapData, Allow4, AllowMask>>,
}

/// How long after a switch the old generation is surely unused, so that
/// housekeeping replays into it without waiting (the replay still waits for
/// an RCU grace period: this only keeps housekeeping from trying early).
const SETTLE_AFTER: Duration = Duration::from_millis(500);

/// The generation of an `AddrKey`, and the key without it.
pub fn split_addr(k: AddrKey) -> (u32, AddrKey) {
    (k._pad[0] as u32, addr_key_gen(k, 0))
}

pub fn split_service(k: ServiceKey) -> (u32, ServiceKey) {
    ((k.family & SERVICE_GEN_BIT != 0) as u32, service_key_gen(k, 0))
}

/// The generation of a `VNIS` key, and the VNI.
pub fn split_vni(k: u32) -> (u32, u32) {
    (k >> 24, k & 0x00ff_ffff)
}

/// The generation of a `TENANTS` key, and the tenant id.
pub fn split_tenant(k: u32) -> (u32, u32) {
    (k >> 16, k & 0xffff)
}

fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<()> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

mod transaction;
