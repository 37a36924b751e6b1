//! Global per-CPU counters of what the programs saw and did. One enum is the
//! index into the `COUNTERS` map and the word the CLI prints.

use crate::indexed::indexed_enum;

indexed_enum! {
    /// What each program counts for every frame it sees (the fabric
    /// program describes the outer headers).
    pub enum Counter {
        /// Frames seen.
        Packets = "packets",
        /// Bytes seen (whole frames).
        Bytes = "bytes",
        /// Frames with one or two 802.1Q/802.1ad tags.
        Vlan = "vlan_tagged",
        Ipv4 = "ipv4",
        Ipv6 = "ipv6",
        Tcp = "tcp",
        Udp = "udp",
        Icmp = "icmp",
        Icmpv6 = "icmpv6",
        /// IP packets of another transport protocol.
        OtherL4 = "other_l4",
        /// IPv4/IPv6 fragments after the first: they carry no transport header.
        Fragment = "fragment",
        /// Frames that are not IP (ARP, LLDP, ...).
        NonIp = "non_ip",
        /// The frame ended inside a header it announced.
        MalformedTruncated = "malformed_truncated",
        /// IPv4 header with IHL < 5, a total length shorter than the header,
        /// or an IP version that does not match the ethertype.
        MalformedIpHeader = "malformed_ip_header",
        /// IPv6 with more extension headers than the parser follows.
        MalformedIpv6ExtHeaders = "malformed_ipv6_ext_headers",
        /// TCP header with a data offset below 5 words.
        MalformedTcpHeader = "malformed_tcp_header",
        /// More VLAN tags than the parser follows (two).
        MalformedVlanDepth = "malformed_vlan_depth",
        /// Verdicts.
        ActionPass = "action_pass",
        ActionDrop = "action_drop",
        ActionTx = "action_tx",
        ActionRedirect = "action_redirect",
        /// Packets encapsulated towards a tenant machine.
        Steered = "steered",
        /// Packets from a tenant machine, decapsulated and sent on.
        Decapsulated = "decapsulated",
        SnatNewFlow = "snat_new_flow",
        /// Flows a full tracking table gave up for a new one.
        CtEvicted = "conntrack_evicted",
        SnatOut = "snat_out",
        SnatReply = "snat_reply",
        SnatIcmpError = "snat_icmp_error",
    }
}

/// Slots of the global counter block: the [`Counter`]s, then one per
/// [`crate::DropReason`].
pub const GLOBAL_SLOTS: usize = Counter::COUNT as usize + crate::DropReason::COUNT as usize;

/// The global counters of one CPU: a single map value, so a packet costs
/// one map lookup however many counters it moves.
pub type CounterBlock = [u64; GLOBAL_SLOTS];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_names_unique() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index() as usize, i);
            assert_eq!(Counter::from_index(i as u32), Some(*c));
        }
        assert_eq!(Counter::from_index(Counter::COUNT), None);
        let mut names: std::vec::Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len());
    }
}
