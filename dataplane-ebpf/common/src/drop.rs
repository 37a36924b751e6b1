//! Why a packet was dropped: one enum that indexes the counters, is
//! returned by the programs' `try_*` bodies and is printed by the CLI.
use crate::indexed::indexed_enum;

indexed_enum! {
    /// The reasons carwash drops a packet.
    pub enum DropReason {
        /// Addressed to a VIP, but no service on that protocol and port.
        NoService = "no_service",
        /// The source is in no allow entry of the tenant for the port's class.
        NotAllowed = "not_allowed",
        /// The tenant's policy is not (yet, or no longer) fully in place.
        NotReady = "tenant_not_ready",
        /// The tenant has no machine for the class (none configured, or all down).
        NoBackend = "no_backend",
        /// Too big for the fabric once encapsulated, IPv4 without DF: XDP
        /// cannot fragment, and the sender did not ask for PMTU discovery.
        TooBig = "too_big",
        /// Too big once encapsulated: answered with ICMP fragmentation
        /// needed / packet too big, carrying the usable MTU.
        TooBigIcmpSent = "too_big_icmp_sent",
        /// A later fragment addressed to a VIP: it has no ports to steer by.
        Fragment = "fragment",
        /// No route or neighbour towards the backend's VTEP; or, for traffic
        /// from the fabric, no route to its destination out of the uplink.
        NoRoute = "no_route",
        /// Host configuration (VTEP, fabric) not loaded yet.
        NoConfig = "no_config",
        /// Growing the frame for the tunnel headers failed.
        EncapFailed = "encap_failed",
        /// To an egress IP, but no connection-tracking entry matches.
        NoConntrack = "no_conntrack",
        /// Malformed packet addressed to a VIP or egress IP, or a malformed
        /// VXLAN packet or inner frame from the fabric.
        Malformed = "malformed",
        /// VXLAN with a VNI that names no tenant.
        UnknownVni = "unknown_vni",
        /// VXLAN whose outer source is not a VTEP of the tenant the VNI names.
        VtepNotOfTenant = "vtep_not_of_tenant",
        /// A tunnelled frame that is not IP.
        InnerNotIp = "inner_not_ip",
        /// Inner source neither a VIP of the tenant nor (with egress) inside
        /// its VPC.
        InnerSourceNotAllowed = "inner_source_not_allowed",
        NoEgress = "no_egress",
        EgressNotAllowed = "egress_not_allowed",
        PortsExhausted = "snat_ports_exhausted",
        /// A new flow found the tracking table full and no flow to evict:
        /// every candidate the agent listed was used again since, or there
        /// were none (the agent lists them every 10 seconds, and at once
        /// after such a drop).
        ConntrackFull = "conntrack_full",
        NoHandoff = "no_handoff",
        SnatProtocol = "snat_unsupported_protocol",
    }
}

/// Counter slots per tenant and class: steered packets and bytes, then one
/// per drop reason.
pub const STEERED_PACKETS: usize = 0;
pub const STEERED_BYTES: usize = 1;
pub const DROPPED_BYTES: usize = 2;
pub const FIRST_DROP_SLOT: usize = 3;
pub const TENANT_STAT_SLOTS: usize = FIRST_DROP_SLOT + DropReason::COUNT as usize;

impl DropReason {
    /// The slot of this reason in a tenant's counter block.
    #[inline(always)]
    pub const fn slot(self) -> usize {
        FIRST_DROP_SLOT + self as usize
    }
}
