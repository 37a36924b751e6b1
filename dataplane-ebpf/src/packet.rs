//! The one bounds-checked accessor for every pointer into the packet, and
//! the header layouts it reads. Headers are byte arrays (alignment 1), so a
//! header at any offset is read without an unaligned access.
use aya_ebpf::programs::XdpContext;

/// Returns a pointer to a `T` at `off` bytes into the packet, or `None` when
/// the packet ends before the `T` does. The only place that turns an offset
/// into a packet pointer.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// Mutable twin of [`ptr_at`].
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    ptr_at::<T>(ctx, off).map(|p| p as *mut T)
}

/// Writes `v` at `off`; `false` when the packet is too short.
#[inline(always)]
pub fn write<T: Copy>(ctx: &XdpContext, off: usize, v: T) -> bool {
    match ptr_at_mut::<T>(ctx, off) {
        // SAFETY: inside the packet, alignment 1 (byte-array types).
        Some(p) => {
            unsafe { *p = v };
            true
        }
        None => false,
    }
}

/// Frame length in bytes.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// A reference to the header `T` at `off`: only the fields used are loaded
/// (a copy of the whole header would load every byte). Valid until the frame
/// is resized.
#[inline(always)]
pub fn header<T>(ctx: &XdpContext, off: usize) -> Option<&T> {
    // SAFETY: ptr_at checked that the T lies inside the packet; T has
    // alignment 1; nothing writes the frame while the reference is used.
    ptr_at::<T>(ctx, off).map(|p| unsafe { &*p })
}

/// Loads `N` 32-bit words at `p` as they lie in memory (network byte order
/// preserved). Addresses sit at 2-byte offsets in the frame; LLVM would
/// split an unaligned load into byte loads, while the kernel (no strict
/// alignment on the JITs carwash targets) takes the word load as it is.
/// The caller has bounds-checked `p .. p + 4N` against the packet end.
#[inline(always)]
pub fn load_words<const N: usize>(p: *const u8) -> [u32; N] {
    let mut out = [0u32; N];
    let mut i = 0;
    while i < N {
        let v: u64;
        // SAFETY: reads 4 bytes the caller bounds-checked; no side effects.
        unsafe {
            core::arch::asm!(
                "{v} = *(u32 *)({p} + 0)",
                v = lateout(reg) v,
                p = in(reg) p.add(4 * i),
                options(readonly, nostack, preserves_flags)
            )
        };
        out[i] = v as u32;
        i += 1;
    }
    out
}

/// A 16-bit word at `p` as it sits in memory (network order read as a
/// little-endian `u16`: compare with swapped constants, or swap it), by
/// one load (see [`load_words`]). The caller has bounds-checked `p .. p + 2`.
#[inline(always)]
pub fn load_half(p: *const u8) -> u16 {
    let v: u64;
    // SAFETY: reads 2 bytes the caller bounds-checked; no side effects.
    unsafe {
        core::arch::asm!(
            "{v} = *(u16 *)({p} + 0)",
            v = lateout(reg) v,
            p = in(reg) p,
            options(readonly, nostack, preserves_flags)
        )
    };
    v as u16
}

/// Reads a copy of the `T` at `off`.
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    // SAFETY: ptr_at checked that the T lies inside the packet; T has
    // alignment 1.
    ptr_at::<T>(ctx, off).map(|p| unsafe { *p })
}

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const TCP_FLAG_SYN: u8 = 0x02;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: [u8; 2],
}
pub const ETH_LEN: usize = 14;

/// An 802.1Q/802.1ad tag as it follows the MAC addresses: TCI, then the
/// next ethertype.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VlanHdr {
    pub tci: [u8; 2],
    pub ethertype: [u8; 2],
}
pub const VLAN_LEN: usize = 4;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    pub vtc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}
pub const IPV6_LEN: usize = 40;

/// The first two bytes of every IPv6 extension header we skip.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6ExtHdr {
    pub next_hdr: u8,
    pub len: u8,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6FragHdr {
    pub next_hdr: u8,
    pub reserved: u8,
    pub frag_off: [u8; 2],
    pub id: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpHdr {
    pub src: [u8; 2],
    pub dst: [u8; 2],
    pub seq: [u8; 4],
    pub ack: [u8; 4],
    pub off_flags: [u8; 2],
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpHdr {
    pub src: [u8; 2],
    pub dst: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

/// ICMP and ICMPv6 share this layout; for echo, `rest` holds id and sequence.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IcmpHdr {
    pub ty: u8,
    pub code: u8,
    pub check: [u8; 2],
    pub rest: [u8; 4],
}

#[inline(always)]
pub fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}
