//! The writes of the policy maps on behalf of [`Dataplane`]: transactions,
//! the switch between generations, the replay and the grace period. The
//! state they keep is [`super::Generations`]; this is a child of its module
//! so that the loader can hold that state without depending on the writes.
use crate::Dataplane;

use super::*;

impl Dataplane {
    fn pmap(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("no map {name} in the eBPF object"))
    }

    fn pmap_ref(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| anyhow!("no map {name} in the eBPF object"))
    }

    /// The generation reads see: the one being written inside a
    /// transaction, else the one in force.
    pub fn read_generation(&self) -> u32 {
        if self.gens.txn {
            1 - self.gens.active
        } else {
            self.gens.active
        }
    }

    fn write_generations(&self) -> &'static [u32] {
        match (self.gens.txn, self.gens.active) {
            (false, _) => &[0, 1],
            (true, 0) => &[1],
            (true, _) => &[0],
        }
    }

    fn apply_op(&mut self, op: &Op, gens: &[u32]) -> Result<()> {
        for &g in gens {
            match op {
                Op::Addr(k, v) => {
                    let mut m: HashMap<_, AddrKey, AddrValue> = HashMap::try_from(self.pmap(maps::ADDRS)?)?;
                    let k = addr_key_gen(*k, g);
                    match v {
                        Some(v) => m.insert(k, v, 0)?,
                        None => ignore_missing(m.remove(&k))?,
                    }
                }
                Op::Service(k, v) => {
                    let mut m: HashMap<_, ServiceKey, ServiceValue> = HashMap::try_from(self.pmap(maps::SERVICES)?)?;
                    let k = service_key_gen(*k, g);
                    match v {
                        Some(v) => m.insert(k, v, 0)?,
                        None => ignore_missing(m.remove(&k))?,
                    }
                }
                Op::Vni(vni, v) => {
                    let mut m: HashMap<_, u32, u32> = HashMap::try_from(self.pmap(maps::VNIS)?)?;
                    let k = vni_key(*vni, g);
                    match v {
                        Some(v) => m.insert(k, v, 0)?,
                        None => ignore_missing(m.remove(&k))?,
                    }
                }
                Op::Tenant(id, v) => {
                    let mut m: HashMap<_, u32, TenantInfo> = HashMap::try_from(self.pmap(maps::TENANTS)?)?;
                    let k = tenant_key(*id, g);
                    match v {
                        Some(v) => m.insert(k, **v, 0)?,
                        None => ignore_missing(m.remove(&k))?,
                    }
                }
                Op::FilterWord(w, v) => {
                    let mut m: Array<_, u64> = Array::try_from(self.pmap(maps::ADDR_FILTER)?)?;
                    m.set(g * ADDR_FILTER_WORDS + w, v, 0)?;
                }
            }
        }
        Ok(())
    }

    fn write(&mut self, op: Op) -> Result<()> {
        if !self.gens.txn {
            // Both copies at once: first make sure the old one has every
            // earlier write, or the replay would undo this one.
            self.settle()?;
        }
        let gens = self.write_generations();
        self.apply_op(&op, gens)?;
        if self.gens.txn {
            self.gens.replay.push(op);
        } else {
            // Packets see this write at once.
            self.bump_epoch()?;
        }
        Ok(())
    }

    /// Writes the `GENERATION` word: `active` in bit 0, and one more write
    /// counted above it, so that the uplink's denial cache drops every
    /// verdict reached before (`dataplane_common::deny`). Called after a
    /// write packets can see, never before it: a verdict stored under the
    /// new word was then reached with the write in place.
    fn set_generation_word(&mut self, active: u32) -> Result<()> {
        let mut m: Array<_, u32> = Array::try_from(self.pmap(maps::GENERATION)?)?;
        let count = m.get(&0, 0)? >> 1;
        m.set(0, (count.wrapping_add(1) << 1) | (active & 1), 0)
            .context("writing GENERATION")?;
        Ok(())
    }

    /// Counts a write packets see at once (outside a transaction).
    pub(crate) fn bump_epoch(&mut self) -> Result<()> {
        let active = self.gens.active;
        self.set_generation_word(active)
    }

    pub(crate) fn put_addr(&mut self, k: AddrKey, v: AddrValue) -> Result<()> {
        self.write(Op::Addr(k, Some(v)))
    }

    pub(crate) fn del_addr(&mut self, k: AddrKey) -> Result<()> {
        self.write(Op::Addr(k, None))
    }

    pub(crate) fn put_service(&mut self, k: ServiceKey, v: ServiceValue) -> Result<()> {
        self.write(Op::Service(k, Some(v)))
    }

    pub(crate) fn del_service(&mut self, k: ServiceKey) -> Result<()> {
        self.write(Op::Service(k, None))
    }

    pub(crate) fn put_vni(&mut self, vni: u32, id: u32) -> Result<()> {
        self.write(Op::Vni(vni, Some(id)))
    }

    pub(crate) fn del_vni(&mut self, vni: u32) -> Result<()> {
        self.write(Op::Vni(vni, None))
    }

    pub(crate) fn put_tenant(&mut self, id: u32, info: TenantInfo) -> Result<()> {
        self.write(Op::Tenant(id, Some(Box::new(info))))
    }

    pub(crate) fn del_tenant(&mut self, id: u32) -> Result<()> {
        self.write(Op::Tenant(id, None))
    }

    pub(crate) fn set_filter_word(&mut self, word: u32, v: u64) -> Result<()> {
        self.write(Op::FilterWord(word, v))
    }

    /// A word of the address filter, as reads see it.
    pub(crate) fn filter_word(&self, word: u32) -> Result<u64> {
        let m: Array<_, u64> = Array::try_from(self.pmap_ref(maps::ADDR_FILTER)?)?;
        Ok(m.get(&(self.read_generation() * ADDR_FILTER_WORDS + word), 0)?)
    }

    /// The owner of an address, as reads see it.
    pub(crate) fn get_addr(&self, k: AddrKey) -> Result<Option<AddrValue>> {
        let m: HashMap<_, AddrKey, AddrValue> = HashMap::try_from(self.pmap_ref(maps::ADDRS)?)?;
        match m.get(&addr_key_gen(k, self.read_generation()), 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The service behind a key, as reads see it.
    pub(crate) fn get_service(&self, k: ServiceKey) -> Result<Option<ServiceValue>> {
        let m: HashMap<_, ServiceKey, ServiceValue> = HashMap::try_from(self.pmap_ref(maps::SERVICES)?)?;
        match m.get(&service_key_gen(k, self.read_generation()), 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The tenant a VNI names, as reads see it.
    pub(crate) fn get_vni(&self, vni: u32) -> Result<Option<u32>> {
        let m: HashMap<_, u32, u32> = HashMap::try_from(self.pmap_ref(maps::VNIS)?)?;
        match m.get(&vni_key(vni, self.read_generation()), 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The keys of `ADDRS` in the generation reads see.
    pub(crate) fn addr_keys(&self) -> Result<Vec<AddrKey>> {
        let m: HashMap<_, AddrKey, AddrValue> = HashMap::try_from(self.pmap_ref(maps::ADDRS)?)?;
        let g = self.read_generation();
        let mut out = Vec::new();
        for k in m.keys() {
            let (kg, k) = split_addr(k?);
            if kg == g {
                out.push(k);
            }
        }
        Ok(out)
    }

    /// A `TenantInfo::version` no tenant record has had: one more than the
    /// highest in the maps (read once), so versions only grow, across
    /// restarts too.
    pub(crate) fn next_policy_version(&mut self) -> Result<u32> {
        if self.gens.policy_version == 0 {
            let m: HashMap<_, u32, TenantInfo> = HashMap::try_from(self.pmap_ref(maps::TENANTS)?)?;
            let mut max = 0;
            for kv in m.iter() {
                max = max.max(kv?.1.version);
            }
            self.gens.policy_version = max;
        }
        self.gens.policy_version = self.gens.policy_version.wrapping_add(1).max(1);
        Ok(self.gens.policy_version)
    }

    /// The generation in force.
    pub fn active_generation(&self) -> u32 {
        self.gens.active
    }

    /// Reads which generation is in force (after loading over pins).
    pub(crate) fn read_active_generation(&mut self) -> Result<()> {
        let m: Array<_, u32> = Array::try_from(self.pmap_ref(maps::GENERATION)?)?;
        self.gens.active = m.get(&0, 0)? & 1;
        Ok(())
    }

    /// Starts a policy transaction: writes go to the generation not in
    /// force until [`Dataplane::commit_policy`] switches to it.
    pub fn begin_policy(&mut self) -> Result<()> {
        self.settle()?;
        self.gens.txn = true;
        Ok(())
    }

    /// Switches to the generation the transaction wrote: one map write (none
    /// if it wrote nothing).
    pub fn commit_policy(&mut self) -> Result<()> {
        if !self.gens.txn {
            return Ok(());
        }
        if self.gens.replay.is_empty() {
            self.gens.txn = false;
            return Ok(());
        }
        let next = 1 - self.gens.active;
        self.set_generation_word(next)
            .context("switching the policy generation")?;
        self.gens.active = next;
        self.gens.txn = false;
        self.gens.switched_at = Some(Instant::now());
        // The grace period the replay must wait for starts now, elsewhere.
        self.gens.grace = self.start_grace_period().ok();
        Ok(())
    }

    /// Ends a transaction without switching: the generation it wrote is
    /// made a copy of the one in force again.
    pub fn abort_policy(&mut self) -> Result<()> {
        self.gens.txn = false;
        self.gens.replay.clear();
        self.resync_generations()
    }

    /// Replays into the generation not in force what it lacks, once no
    /// packet can be using it any more.
    pub fn settle(&mut self) -> Result<()> {
        if self.gens.replay.is_empty() {
            return Ok(());
        }
        match self.gens.grace.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow!("waiting for the programs (RCU): the thread panicked"))?
                .context("waiting for the programs (RCU)")?,
            None => self.wait_for_readers()?,
        }
        let old = [1 - self.gens.active];
        let ops = std::mem::take(&mut self.gens.replay);
        for op in &ops {
            self.apply_op(op, &old)?;
        }
        // A large apply's log is not kept around as capacity.
        self.gens.replay.shrink_to(64);
        Ok(())
    }

    /// [`Dataplane::settle`], if it would not wait: the grace period
    /// started at the switch is over (or, without one under way, the switch
    /// is old enough).
    pub fn settle_if_due(&mut self) -> Result<bool> {
        if self.gens.replay.is_empty() {
            return Ok(false);
        }
        let ready = match &self.gens.grace {
            Some(t) => t.is_finished(),
            None => self.gens.switched_at.is_none_or(|t| t.elapsed() >= SETTLE_AFTER),
        };
        if !ready {
            return Ok(false);
        }
        self.settle()?;
        Ok(true)
    }

    /// Starts waiting for an RCU grace period on a thread (the same update
    /// as [`Dataplane::wait_for_readers`], on duplicated descriptors).
    fn start_grace_period(&mut self) -> Result<std::thread::JoinHandle<std::io::Result<()>>> {
        if self.gens.sync_trie.is_none() {
            self.gens.sync_trie = Some(LpmTrie::create(1, 1)?);
        }
        let inner = match &self.gens.sync_trie {
            Some(t) => t.map().fd().as_fd().try_clone_to_owned()?,
            None => anyhow::bail!("no trie to wait with"),
        };
        let outer = match self.pmap(maps::ALLOW_V4)? {
            aya::maps::Map::ArrayOfMaps(d) => d.fd().as_fd().try_clone_to_owned()?,
            _ => anyhow::bail!("map {} is not an array of maps", maps::ALLOW_V4),
        };
        Ok(std::thread::spawn(move || {
            batch::set_inner_maps(outer.as_fd(), &[0], &[inner.as_raw_fd() as u32])
        }))
    }

    /// Waits until every program run that started before now has ended (an
    /// RCU grace period): the kernel waits for one on every update of an
    /// array of maps, here slot 0 of `ALLOW_V4`, which no tenant uses.
    fn wait_for_readers(&mut self) -> Result<()> {
        if self.gens.sync_trie.is_none() {
            self.gens.sync_trie = Some(LpmTrie::create(1, 1)?);
        }
        let fd = self
            .gens
            .sync_trie
            .as_ref()
            .map(|t| t.map().fd().as_fd().as_raw_fd() as u32);
        let fd = fd.ok_or_else(|| anyhow!("no trie to wait with"))?;
        let outer = match self.pmap(maps::ALLOW_V4)? {
            aya::maps::Map::ArrayOfMaps(d) => d,
            _ => anyhow::bail!("map {} is not an array of maps", maps::ALLOW_V4),
        };
        batch::set_inner_maps(outer.fd().as_fd(), &[0], &[fd]).context("waiting for the programs (RCU)")?;
        Ok(())
    }

    /// Makes the generation not in force an exact copy of the one in force
    /// (after adopting pins an agent left mid-way, or an aborted
    /// transaction).
    pub fn resync_generations(&mut self) -> Result<()> {
        let (a, o) = (self.gens.active, 1 - self.gens.active);
        macro_rules! sync {
            ($name:expr, $k:ty, $v:ty, $split:expr, $join:expr) => {{
                let mut m: HashMap<_, $k, $v> = HashMap::try_from(self.pmap($name)?)?;
                let mut want = std::collections::HashMap::new();
                let mut have = Vec::new();
                for kv in m.iter() {
                    let (k, v) = kv?;
                    let (g, bare) = $split(k);
                    if g == a {
                        want.insert(bare, v);
                    } else if g == o {
                        have.push((bare, v));
                    }
                }
                for (bare, _) in &have {
                    if !want.contains_key(bare) {
                        ignore_missing(m.remove(&$join(*bare, o)))?;
                    }
                }
                for (bare, v) in want {
                    m.insert($join(bare, o), v, 0)?;
                }
            }};
        }
        sync!(maps::ADDRS, AddrKey, AddrValue, split_addr, addr_key_gen);
        sync!(maps::SERVICES, ServiceKey, ServiceValue, split_service, service_key_gen);
        sync!(maps::VNIS, u32, u32, split_vni, vni_key);
        sync!(maps::TENANTS, u32, TenantInfo, split_tenant, tenant_key);
        let mut f: Array<_, u64> = Array::try_from(self.pmap(maps::ADDR_FILTER)?)?;
        for w in 0..ADDR_FILTER_WORDS {
            let v = f.get(&(a * ADDR_FILTER_WORDS + w), 0)?;
            if f.get(&(o * ADDR_FILTER_WORDS + w), 0)? != v {
                f.set(o * ADDR_FILTER_WORDS + w, v, 0)?;
            }
        }
        self.gens.replay.clear();
        Ok(())
    }
}
