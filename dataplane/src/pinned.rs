//! The read side of the pins under their names of before the map families
//! (`crate::maps`): each item lives in its family's module.
pub use crate::maps::conntrack::{SnatEntry, SnatTable};
pub use crate::maps::counters::{ClassStats, RedirectFailure, class_stats, errno_text, sum_tenant_stats};
pub use crate::maps::pins::Pins;
pub use crate::maps::policy::read::{
    AddrEntry, AllowEntry, AllowList, Machine, ServiceEntry, TenantRecord, addr_of, class_name, connectors, cores,
    lane, machine, maglev_buckets, mask_classes, max_tenant_id, proto_name,
};
