//! The policy maps: `ADDR_FILTER`, `ADDRS`, `SERVICES`, `VNIS` and
//! `TENANTS` (two generations each, `GENERATION` naming the one in force),
//! `TENANT_NAMES` and the allowlist tries of `ALLOW_V4`/`ALLOW_V6`.
//!
//! - [`tenants`]: policy into map entries (install, claim, remove a tenant,
//!   its health fields), the one place that turns a `Tenant` into bytes;
//! - [`generations`]: the two copies, transactions, the switch and the
//!   replay (its child `transaction` holds the writes);
//! - [`entries`]: what the agent needs beyond whole tenants (names, scans
//!   of what the maps hold, removals of only what a tenant still owns);
//! - [`read`]: the read side through the pins, for the CLI and metrics.
pub mod entries;
pub mod generations;
pub mod read;
pub mod tenants;
