//! The writes of tenants and host settings under their names of before the
//! map families (`crate::maps`): each item lives in its family's module.
pub use crate::maps::host::{DEFAULT_SNAT_PORTS, HostParams};
pub use crate::maps::policy::tenants::{Health, addr_key, allow_masks, services, tenant_info};
